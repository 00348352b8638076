import NIOCore

/// How many streams one connection may reset in a sliding window. Upstreams guard against
/// rapid-reset floods (CVE-2023-44487) by counting a client's RST_STREAMs: SwiftNIO fails the
/// connection past 200 in 30 s, Envoy past half its streams. A client abandoning a large batch
/// makes Sheaf cancel hundreds of streams at once, and a tripped guard would fail every other
/// batch's items on the connection, so Sheaf stays at half the strictest of those limits.
struct ResetBudget {
    /// Resets allowed within any `window`.
    let limit: Int
    let window: TimeAmount
    /// The times of the last `limit` resets, oldest at `next` once the ring is full.
    private var times: [NIODeadline] = []
    private var next = 0

    init(limit: Int = 100, window: TimeAmount = .seconds(30)) {
        self.limit = limit
        self.window = window
    }

    /// Whether one more reset now stays within the limit.
    func allows(now: NIODeadline) -> Bool {
        limit > 0 && (times.count < limit || now - times[next] >= window)
    }

    /// Counts a reset sent now (also one sent past the budget: a request that cannot be
    /// finished, a deadline that passed).
    mutating func record(now: NIODeadline) {
        guard limit > 0 else { return }
        if times.count < limit {
            times.append(now)
        } else {
            times[next] = now
            next = (next + 1) % limit
        }
    }
}
