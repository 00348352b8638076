import NIOConcurrencyHelpers
import NIOCore
import Upstream

/// Runs one batch: starts items on the transport up to the concurrency cap, reports each
/// item's outcome exactly once through `onResult` (on whichever thread settled it; in completion
/// order, or in request order when `ordered`), then calls `onFinish` once, after the last
/// `onResult` has returned. `onResult` calls never overlap in request order; in completion order
/// they may, from different threads.
public final class FanOutRun: @unchecked Sendable {
    /// `nanoseconds`: from the item's start to its outcome.
    public typealias ResultHandler = @Sendable (_ index: Int, _ outcome: ItemOutcome, _ nanoseconds: UInt64) -> Void

    private let items: [BatchItem]
    private let transport: UpstreamTransport
    private let onResult: ResultHandler
    private let onFinish: @Sendable () -> Void
    private let lock = NIOLock()
    private var scheduler: FanOutScheduler
    private var calls: [UpstreamCall?]
    private var isSettled: [Bool]
    /// Written by `start` and read by `settle` for one index each, never concurrently for one index.
    private let startTimes: UnsafeMutableBufferPointer<UInt64>
    private var launching = false
    private var launchQueue: [Range<Int>] = []
    private var cancelOutcome = ItemOutcome(status: 499, reason: "the client went away")
    // Request order: outcomes that settled ahead of their turn, and who is writing.
    private let ordered: Bool
    private var held: [Int: (ItemOutcome, UInt64)] = [:]
    private var nextToWrite = 0
    private var writing = false
    private var finishReported = false

    /// With `ordered`, at most `4 × concurrency` items run ahead of the first one not yet reported.
    public init(items: [BatchItem], transport: UpstreamTransport, concurrency: Int, ordered: Bool = false,
                onResult: @escaping ResultHandler, onFinish: @escaping @Sendable () -> Void) {
        self.items = items
        self.transport = transport
        self.onResult = onResult
        self.onFinish = onFinish
        self.ordered = ordered
        self.scheduler = FanOutScheduler(total: items.count, concurrency: concurrency,
                                         window: ordered ? 4 * max(1, concurrency) : nil)
        self.calls = Array(repeating: nil, count: items.count)
        self.isSettled = Array(repeating: false, count: items.count)
        self.startTimes = .allocate(capacity: items.count)
        self.startTimes.initialize(repeating: 0)
    }

    deinit {
        startTimes.deallocate()
    }

    public func start() {
        if items.isEmpty {
            onFinish()
            return
        }
        launch(lock.withLock { scheduler.claim() })
    }

    /// Backpressure: stop starting items (the response is not being read fast enough).
    public func pause() {
        lock.withLock { scheduler.pause() }
    }

    public func resume() {
        let next = lock.withLock { scheduler.resume() }
        if !next.isEmpty { launch(next) }
    }

    /// Stops the batch: in-flight calls are cancelled on the wire, unstarted items are not sent.
    /// Every item still settles once, with `status` and `reason`.
    /// Only the first cancellation counts (a deadline and a departing client may race).
    public func cancel(status: Int, reason: String) {
        let outcome = ItemOutcome(status: status, reason: reason)
        let work = lock.withLock { () -> (Range<Int>, [UpstreamCall])? in
            guard !scheduler.isCancelled else { return nil }
            cancelOutcome = outcome
            return (scheduler.cancel(), calls.compactMap { $0 })
        }
        guard let (never, inFlight) = work else { return }
        for call in inFlight { call.cancel() }
        for index in never { settle(index, outcome) }
    }

    /// A trampoline: a transport that settles synchronously must not recurse once per item.
    private func launch(_ first: Range<Int>) {
        let proceed = lock.withLock { () -> Bool in
            if launching {
                launchQueue.append(first)
                return false
            }
            launching = true
            return true
        }
        guard proceed else { return }
        var work = [first]
        while true {
            for range in work {
                for index in range { start(index) }
            }
            work = lock.withLock {
                let queued = launchQueue
                launchQueue.removeAll()
                if queued.isEmpty { launching = false }
                return queued
            }
            if work.isEmpty { return }
        }
    }

    private func start(_ index: Int) {
        startTimes[index] = NIODeadline.now().uptimeNanoseconds
        let item = items[index]
        guard let request = item.request else {
            settle(index, ItemOutcome(status: 400, reason: item.rejection ?? "invalid item"))
            return
        }
        let call = transport.execute(request) { [self] result in
            var outcome = ItemOutcome(result)
            if case .failure(let error) = result, error.kind == .cancelled {
                outcome = lock.withLock { cancelOutcome }
            }
            settle(index, outcome)
        }
        lock.withLock {
            // The call may already have settled; keep a handle only to cancel live ones.
            if !isSettled[index] { calls[index] = call }
        }
    }

    private func settle(_ index: Int, _ outcome: ItemOutcome) {
        // Each item leaves once: a second outcome for one item (a transport bug) is dropped.
        let first = lock.withLock { () -> Bool in
            guard !isSettled[index] else { return false }
            isSettled[index] = true
            calls[index] = nil
            return true
        }
        guard first else { return }
        let started = startTimes[index]
        let now = NIODeadline.now().uptimeNanoseconds
        let nanoseconds = started == 0 || now < started ? 0 : now - started
        if ordered {
            settleInOrder(index, outcome, nanoseconds)
            return
        }
        onResult(index, outcome, nanoseconds)
        let (next, finished) = lock.withLock { () -> (Range<Int>, Bool) in
            let next = scheduler.settle()
            return (next, scheduler.isFinished)
        }
        if finished {
            onFinish()
        } else if !next.isEmpty {
            launch(next)
        }
    }

    private func settleInOrder(_ index: Int, _ outcome: ItemOutcome, _ nanoseconds: UInt64) {
        let next = lock.withLock { () -> Range<Int> in
            held[index] = (outcome, nanoseconds)
            return scheduler.settle()
        }
        if !next.isEmpty { launch(next) }
        writeInOrder()
    }

    /// One thread at a time reports the contiguous run of settled items; others only add to `held`.
    private func writeInOrder() {
        let proceed = lock.withLock { () -> Bool in
            if writing { return false }
            writing = true
            return true
        }
        guard proceed else { return }
        while true {
            let (run, first, finished) = lock.withLock { () -> ([(ItemOutcome, UInt64)], Int, Bool) in
                var run: [(ItemOutcome, UInt64)] = []
                let first = nextToWrite
                while let entry = held.removeValue(forKey: nextToWrite) {
                    run.append(entry)
                    nextToWrite += 1
                }
                if run.isEmpty {
                    writing = false
                    let finished = nextToWrite == items.count && !finishReported
                    if finished { finishReported = true }
                    return (run, first, finished)
                }
                return (run, first, false)
            }
            if run.isEmpty {
                if finished { onFinish() }
                return
            }
            for (offset, entry) in run.enumerated() { onResult(first + offset, entry.0, entry.1) }
            let next = lock.withLock { scheduler.wrote(upTo: first + run.count) }
            if !next.isEmpty { launch(next) }
        }
    }
}
