/// The fan-out's bookkeeping as a value: which item starts next, how many are in flight,
/// when the batch is done. No I/O, no clock; `FanOutRun` performs what it decides.
public struct FanOutScheduler: Sendable {
    /// Items given so far (all of them, unless the batch is streamed and its input still arriving).
    public private(set) var total: Int
    public let concurrency: Int
    public private(set) var nextIndex = 0
    public private(set) var inFlight = 0
    public private(set) var settled = 0
    public private(set) var isCancelled = false
    /// While paused (the client is not reading), nothing new starts; in-flight items still settle.
    public private(set) var isPaused = false
    /// Request-order output: how far past the first item not yet written an item may start, so
    /// that a slow item holds back at most this many finished ones. Nil: completion order.
    public let window: Int?
    /// Items written to the response so far, in request order (request-order output only).
    public private(set) var written = 0

    /// A streamed batch's items arrive while it runs (`append`); it is not finished before
    /// `endInput`, however many have settled.
    public private(set) var inputEnded: Bool

    public init(total: Int, concurrency: Int, window: Int? = nil, streamed: Bool = false) {
        self.total = total
        self.inputEnded = !streamed
        self.concurrency = max(1, concurrency)
        self.window = window.map { max($0, 1) }
    }

    public var isFinished: Bool { inputEnded && settled == total }

    /// Items given but not started yet (a streamed batch reads more input only when this is low).
    public var unstarted: Int { total - nextIndex }

    /// `count` more items arrived; returns the items to start now.
    public mutating func append(_ count: Int) -> Range<Int> {
        precondition(!inputEnded && !isCancelled, "items appended after the end of input or a cancel")
        total += count
        return claim()
    }

    /// `count` more items arrived after a cancel: they never start, and settle at once (the range).
    public mutating func appendAfterCancel(_ count: Int) -> Range<Int> {
        precondition(!inputEnded && isCancelled, "appendAfterCancel without a cancel")
        let range = total..<(total + count)
        total += count
        nextIndex = total
        inFlight += count
        return range
    }

    /// No more items will come.
    public mutating func endInput() {
        inputEnded = true
    }

    /// Claims the items to start now, up to the concurrency cap.
    public mutating func claim() -> Range<Int> {
        guard !isCancelled, !isPaused else { return nextIndex..<nextIndex }
        var count = min(concurrency - inFlight, total - nextIndex)
        if let window { count = min(count, written + window - nextIndex) }
        guard count > 0 else { return nextIndex..<nextIndex }
        let range = nextIndex..<(nextIndex + count)
        nextIndex += count
        inFlight += count
        return range
    }

    /// Takes back the last `count` items claimed, which did not start after all (the process's
    /// item budget had no token for them); they are claimed again later.
    public mutating func giveBack(_ count: Int) {
        precondition(count <= inFlight && nextIndex - count >= 0, "gave back more than was claimed")
        nextIndex -= count
        inFlight -= count
    }

    /// One item settled; returns the items that may start in its place.
    public mutating func settle() -> Range<Int> {
        precondition(inFlight > 0 && settled < total, "an item settled twice")
        inFlight -= 1
        settled += 1
        return claim()
    }

    /// The first `count` items are written; returns the items that may start now.
    public mutating func wrote(upTo count: Int) -> Range<Int> {
        written = count
        return claim()
    }

    public mutating func pause() {
        isPaused = true
    }

    /// Returns the items that may start now.
    public mutating func resume() -> Range<Int> {
        isPaused = false
        return claim()
    }

    /// Stops claiming; returns the items that were never started, which settle without a call.
    public mutating func cancel() -> Range<Int> {
        guard !isCancelled else { return total..<total }
        isCancelled = true
        let never = nextIndex..<total
        inFlight += never.count
        nextIndex = total
        return never
    }
}
