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
    /// Defence in depth against a transport that loses an item: an item with no outcome
    /// `grace` after its transport's timeout settles 502 "item lost by the transport".
    public struct Watchdog: Sendable {
        public var eventLoop: EventLoop
        public var grace: TimeAmount
        public init(eventLoop: EventLoop, grace: TimeAmount = .seconds(2)) {
            self.eventLoop = eventLoop
            self.grace = grace
        }
    }

    private let lock = NIOLock()
    private var scheduler: FanOutScheduler
    private let watchdog: Watchdog?
    private var watchdogTask: RepeatedTask?
    /// Every item below this index has settled (the watchdog's scan starts here).
    private var oldestUnsettled = 0
    private var lost = 0
    private var writabilityPaused = false
    private var readingSuspended = false
    private var calls: [UpstreamCall?]
    private var isSettled: [Bool]
    /// Written by `start` under the lock; read by `settle` for its own index and by the watchdog.
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

    /// Called with each request just before it goes to the transport (tracing adds its
    /// `traceparent` there); nil costs nothing.
    public typealias Prepare = @Sendable (_ index: Int, _ request: inout UpstreamRequest) -> Void
    private let prepare: Prepare?

    /// With `ordered`, at most `4 × concurrency` items run ahead of the first one not yet reported.
    public init(items: [BatchItem], transport: UpstreamTransport, concurrency: Int, ordered: Bool = false,
                watchdog: Watchdog? = nil, prepare: Prepare? = nil,
                onResult: @escaping ResultHandler, onFinish: @escaping @Sendable () -> Void) {
        self.prepare = prepare
        self.watchdog = watchdog
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

    /// Items the watchdog had to settle because the transport never reported them.
    public var lostItems: Int { lock.withLock { lost } }

    public func start() {
        if items.isEmpty {
            onFinish()
            return
        }
        if let watchdog {
            let limit = transport.configuration.timeout + watchdog.grace
            let every = TimeAmount.nanoseconds(max(min(limit.nanoseconds / 4, 1_000_000_000), 10_000_000))
            // Holds the run until the last item settles (the task is cancelled then).
            let task = watchdog.eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { [self] _ in
                self.settleLost(olderThan: limit)
            }
            lock.withLock { watchdogTask = task }
        }
        launch(lock.withLock { scheduler.claim() })
    }

    private func settleLost(olderThan limit: TimeAmount) {
        let now = NIODeadline.now().uptimeNanoseconds
        let horizon = UInt64(max(limit.nanoseconds, 0))
        let (overdue, lostCalls) = lock.withLock { () -> ([Int], [UpstreamCall]) in
            while oldestUnsettled < items.count && isSettled[oldestUnsettled] { oldestUnsettled += 1 }
            var overdue: [Int] = []
            var lostCalls: [UpstreamCall] = []
            var index = oldestUnsettled
            // Items start in index order, so the overdue ones come first among those started.
            while index < scheduler.nextIndex {
                defer { index += 1 }
                if isSettled[index] { continue }
                let started = startTimes[index]
                guard started != 0, now > started, now - started > horizon else { break }
                overdue.append(index)
                if let call = calls[index] { lostCalls.append(call) }
            }
            lost += overdue.count
            return (overdue, lostCalls)
        }
        // Settled before the calls are cancelled: a cancel may settle at once, as "cancelled".
        let reason = "item lost by the transport: no outcome within \(limit.configText) of its start"
        for index in overdue { settle(index, ItemOutcome(status: 502, reason: reason)) }
        for call in lostCalls { call.cancel() }
    }

    /// Backpressure: stop starting items (the response is not being read fast enough).
    public func pause() {
        lock.withLock {
            writabilityPaused = true
            scheduler.pause()
        }
    }

    public func resume() {
        let next = lock.withLock { () -> Range<Int> in
            writabilityPaused = false
            return readingSuspended ? scheduler.nextIndex..<scheduler.nextIndex : scheduler.resume()
        }
        if !next.isEmpty { launch(next) }
    }

    /// Harder backpressure (the client's unsent output passed its budget): nothing new starts,
    /// and calls in flight stop taking their response bodies off the upstream.
    public func suspendReading() {
        updateReading { true }
    }

    public func resumeReading() {
        updateReading { false }
    }

    /// Brings reading to the state `suspended` reports *now*, read under this run's lock: so
    /// reports of changes that race from different threads end in the latest state, whatever
    /// their order. The calls are told under the lock too, for the same reason.
    public func updateReading(suspended: () -> Bool) {
        let next = lock.withLock { () -> Range<Int> in
            let none = scheduler.nextIndex..<scheduler.nextIndex
            let want = suspended()
            guard want != readingSuspended else { return none }
            readingSuspended = want
            for case let call? in calls {
                if want { call.suspendReading() } else { call.resumeReading() }
            }
            if want {
                scheduler.pause()
                return none
            }
            return writabilityPaused ? none : scheduler.resume()
        }
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
        // Latest first: those are the ones still queued in the transport. Cancelling the oldest
        // (on the wire) first would free streams for queued items, which would go out only to
        // be reset a moment later.
        transport.cancel(inFlight.reversed())
        settleNeverStarted(never, outcome)
    }

    /// Items that never started settle in slices, one event-loop task each when there is a
    /// loop, so a cancelled 80k-item batch does not hold its loop (and its other clients) at once.
    private func settleNeverStarted(_ range: Range<Int>, _ outcome: ItemOutcome) {
        let slice = 512
        let now = range.prefix(slice)
        for index in now { settle(index, outcome) }
        let rest = now.upperBound..<range.upperBound
        guard !rest.isEmpty else { return }
        if let loop = watchdog?.eventLoop {
            // Scheduled ahead, not `execute`d: NIO runs tasks queued by tasks before it polls.
            loop.scheduleTask(in: .microseconds(50)) { [self] in self.settleNeverStarted(rest, outcome) }
        } else {
            settleNeverStarted(rest, outcome)
        }
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
        // A cancel may land between the claim and this start: then the item is not sent.
        let cancelled = lock.withLock { () -> ItemOutcome? in
            if scheduler.isCancelled { return cancelOutcome }
            startTimes[index] = NIODeadline.now().uptimeNanoseconds
            return nil
        }
        if let cancelled {
            settle(index, cancelled)
            return
        }
        let item = items[index]
        guard var request = item.request else {
            settle(index, ItemOutcome(status: 400, reason: item.rejection ?? "invalid item"))
            return
        }
        prepare?(index, &request)
        let call = transport.execute(request) { [self] result in
            var outcome = ItemOutcome(result)
            if case .failure(let error) = result, error.kind == .cancelled {
                outcome = lock.withLock { cancelOutcome }
            }
            settle(index, outcome)
        }
        let missedCancel = lock.withLock { () -> Bool in
            // The call may already have settled; keep a handle only to cancel live ones.
            guard !isSettled[index] else { return false }
            calls[index] = call
            // Under the lock, like `updateReading`, so a resume cannot overtake it.
            if readingSuspended { call.suspendReading() }
            return scheduler.isCancelled
        }
        // The cancel collected the calls before this one was stored: cancel it here.
        if missedCancel { call.cancel() }
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
            stopWatchdog()
            onFinish()
        } else if !next.isEmpty {
            launch(next)
        }
    }

    private func stopWatchdog() {
        let task = lock.withLock { () -> RepeatedTask? in
            defer { watchdogTask = nil }
            return watchdogTask
        }
        task?.cancel()
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
                if finished {
                    stopWatchdog()
                    onFinish()
                }
                return
            }
            for (offset, entry) in run.enumerated() { onResult(first + offset, entry.0, entry.1) }
            let next = lock.withLock { scheduler.wrote(upTo: first + run.count) }
            if !next.isEmpty { launch(next) }
        }
    }
}
