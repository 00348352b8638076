import NIOCore

/// How fast a streamed request body arrives, against `min_body_rate`: the bytes of each window
/// of `grace` (the client timeout) of reading time. Time Sheaf held reading back (backpressure)
/// is not reading time. A window, not the average since the start, so a burst first does not
/// buy a trickle after it. A body that stops altogether is the idle timer's.
struct BodyRate {
    private var started: NIODeadline?
    /// Time reading was held back, and since when it is held now.
    private var held = TimeAmount.zero
    private var heldSince: NIODeadline?
    /// Where the current window began (reading time) and what came in it.
    private var windowStart = TimeAmount.zero
    private var windowBytes = 0

    init() {}

    init(started: NIODeadline) {
        self.started = started
    }

    mutating func paused(at now: NIODeadline) {
        if heldSince == nil { heldSince = now }
    }

    mutating func resumed(at now: NIODeadline) {
        guard let since = heldSince else { return }
        held = held + (now - since)
        heldSince = nil
    }

    /// Counts `count` bytes arriving at `now`; what to tell the client when its body came slower
    /// than `minimum` bytes per second over the last window, else nil.
    mutating func received(_ count: Int, now: NIODeadline, grace: TimeAmount, minimum: Int) -> String? {
        guard minimum > 0, let started else { return nil }
        windowBytes += count
        let reading = now - started - held - (heldSince.map { now - $0 } ?? .zero)
        let window = reading - windowStart
        guard window >= grace, window > .zero else { return nil }
        let perSecond = Double(windowBytes) * 1e9 / Double(window.nanoseconds)
        windowStart = reading
        windowBytes = 0
        guard perSecond < Double(minimum) else { return nil }
        return "the request body arrived at \(Int(perSecond)) bytes/s for \(window.nanoseconds / 1_000_000_000)s, slower than min_body_rate (\(minimum) bytes/s)"
    }
}
