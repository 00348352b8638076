import NIOConcurrencyHelpers
import NIOCore
import Upstream

/// Runs one batch: starts items on the transport up to the concurrency cap, reports each
/// item's outcome exactly once through `onResult` (on whichever thread settled it; in completion
/// order, or in request order when `ordered`), then calls `onFinish` once, after the last
/// `onResult` has returned. `onResult` calls never overlap in request order; in completion order
/// they may, from different threads.
///
/// A streamed batch (`streamed: true`) starts with the items it has and takes more with `append`
/// while it runs; it finishes only after `endInput`. Items are kept only while they are running
/// or needed by another, so its memory follows `concurrency`, not the batch's size.
public final class FanOutRun: @unchecked Sendable {
    /// `item`: the item as given; `nanoseconds`: from the item's start to its outcome.
    public typealias ResultHandler = @Sendable (_ index: Int, _ item: BatchItem, _ outcome: ItemOutcome, _ nanoseconds: UInt64) -> Void

    private var items = ItemWindow()
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
    private var launching = false
    private var launchQueue: [Range<Int>] = []
    /// What a cancel settles items with. No attempts: the items it settles itself never went out
    /// (one on the wire gets the sends its transport reports).
    private var cancelOutcome = ItemOutcome.unsent(499, "the client went away")
    // Request order: outcomes that settled ahead of their turn, and who is writing.
    private let ordered: Bool
    private var held: [Int: (BatchItem, ItemOutcome, UInt64)] = [:]
    private var nextToWrite = 0
    private var writing = false
    private var finishReported = false
    // Items that wait on others (dependencies, coalescing). Empty for independent batches,
    // which then pay one branch per item for all of this.
    private let policy: FanOutPolicy
    /// The route's `deadline` as an instant, handed to each request (`UpstreamRequest.batchDeadline`).
    private let batchDeadline: NIODeadline?
    /// When the run was made: its batch's start, for `UpstreamRequest.batchStarted`.
    private let created = NIODeadline.now()
    private var related: Bool
    /// Indices whose outcome another item needs (a dependency, a coalescing leader).
    private var needed: Set<Int>
    /// Outcomes of settled `needed` items, each kept only until every item that needs it has
    /// used it (`remaining` counts those), so memory follows what is still waiting, not the batch.
    private var retained: [Int: ItemOutcome] = [:]
    private var remaining: [Int: Int] = [:]
    /// A claimed item waiting for this many of its dependencies to settle.
    private var waiting: [Int: Int] = [:]
    private var dependents: [Int: [Int]] = [:]
    /// A claimed duplicate waiting for its leader's outcome.
    private var followers: [Int: [Int]] = [:]
    /// Set by the first failure under `on_error: stop`: the reason every later start gets instead.
    private var stopReason: String?
    private var coalesced = 0
    /// The process's items-in-flight budget, and how many of its tokens this run holds.
    private let budget: ItemBudget?
    private var tokensHeld = 0
    /// A streamed batch asks for more input through this once its unstarted items fall to half
    /// of `inputWindow` (after an `append` said to wait).
    private var onInputRoom: (@Sendable () -> Void)?
    private var waitingForInputRoom = false
    /// How many given-but-unstarted items a streamed batch may hold before it stops reading.
    public let inputWindow: Int

    /// Called with each request just before it goes to the transport (tracing adds its
    /// `traceparent` there); nil costs nothing.
    public typealias Prepare = @Sendable (_ index: Int, _ item: BatchItem, _ request: inout UpstreamRequest) -> Void
    private let prepare: Prepare?

    /// With `ordered`, at most `4 × concurrency` items run ahead of the first one not yet reported.
    /// `policy`: dependencies' accepted statuses and `on_error`. Items start in index order; an
    /// item claimed before its dependencies (or coalescing leader) have settled waits, holding
    /// its slot, which cannot deadlock: they all have lower indices, so they were claimed first.
    /// `streamed`: more items come through `append`, and `endInput` ends them.
    public init(items: consuming [BatchItem], transport: UpstreamTransport, concurrency: Int, ordered: Bool = false,
                watchdog: Watchdog? = nil, prepare: Prepare? = nil, policy: FanOutPolicy = FanOutPolicy(),
                budget: ItemBudget? = nil, streamed: Bool = false, batchDeadline: NIODeadline? = nil,
                onResult: @escaping ResultHandler, onFinish: @escaping @Sendable () -> Void) {
        self.prepare = prepare
        self.batchDeadline = batchDeadline
        self.budget = budget
        self.inputWindow = max(2 * concurrency, 256)
        self.policy = policy
        var needed = Set<Int>()
        var remaining: [Int: Int] = [:]
        // By field, not `for item in items`: that copied every item whole (issue 13).
        for index in items.indices {
            for dependency in items[index].dependsOn { remaining[dependency, default: 0] += 1 }
            if let leader = items[index].sameAs { remaining[leader, default: 0] += 1 }
        }
        needed.formUnion(remaining.keys)
        self.needed = needed
        self.remaining = remaining
        self.related = !needed.isEmpty || policy.stopOnError
        self.watchdog = watchdog
        // A whole batch's items at once: growing the table item by item rehashed it again and
        // again (issue 13). A streamed batch may stay small: its table grows past 1024 by itself.
        self.items.reserve(streamed ? max(items.count, min(2 * concurrency, 1024)) : items.count)
        let total = items.count
        self.items.append(contentsOf: items)
        self.transport = transport
        self.onResult = onResult
        self.onFinish = onFinish
        self.ordered = ordered
        self.scheduler = FanOutScheduler(total: total, concurrency: concurrency,
                                         window: ordered ? 4 * max(1, concurrency) : nil, streamed: streamed)
    }

    /// Items the watchdog had to settle because the transport never reported them.
    public var lostItems: Int { lock.withLock { lost } }

    /// Duplicates that reported their leader's outcome instead of making a call.
    public var coalescedItems: Int { lock.withLock { coalesced } }

    /// Items kept now: those not settled, and settled ones another still needs.
    public var itemsHeld: Int { lock.withLock { items.liveCount } }

    public func start() {
        if lock.withLock({ takeFinish() }) {
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
        launch(lock.withLock { admit(scheduler.claim()) })
    }

    /// More items of a streamed batch (dependencies and coalescing leaders among earlier items
    /// still held). Returns whether to keep reading input; when false, `whenInputRoom`'s handler
    /// is called once the items given have mostly started.
    @discardableResult
    public func append(_ newItems: consuming [BatchItem]) -> Bool {
        guard !newItems.isEmpty else { return true }
        let count = newItems.count
        // Each item is moved out (from the back, so the list is reversed first), not copied.
        var pending = consume newItems
        pending.reverse()
        let (start, never, outcome, more) = lock.withLock { () -> (Range<Int>, Range<Int>, ItemOutcome, Bool) in
            let none = scheduler.nextIndex..<scheduler.nextIndex
            // The input was ended (its client went away): nothing more is taken.
            guard !scheduler.inputEnded else { return (none, none, cancelOutcome, true) }
            while var item = pending.popLast() {
                if scheduler.isCancelled {
                    // It settles at once with the cancel's outcome: it waits for nothing.
                    item.sameAs = nil
                    item.dependsOn = []
                }
                if let leader = item.sameAs {
                    // A leader that settled with nobody waiting has let its outcome go: the
                    // duplicate makes its own call instead.
                    if items.isSettled(leader) && retained[leader] == nil {
                        item.sameAs = nil
                    } else {
                        remaining[leader, default: 0] += 1
                        needed.insert(leader)
                    }
                }
                for dependency in item.dependsOn {
                    precondition(!items.isSettled(dependency) || retained[dependency] != nil,
                                 "a streamed item depends on one already released")
                    remaining[dependency, default: 0] += 1
                    needed.insert(dependency)
                }
                items.append(item)
            }
            related = related || !needed.isEmpty
            if scheduler.isCancelled {
                return (none, scheduler.appendAfterCancel(count), cancelOutcome, true)
            }
            // While paused, the scheduler claims nothing: the items wait for `resume`.
            let start = admit(scheduler.append(count))
            let more = scheduler.unstarted < inputWindow
            if !more { waitingForInputRoom = true }
            return (start, none, cancelOutcome, more)
        }
        for index in never { settle(index, outcome) }
        if !start.isEmpty { launch(start) }
        return more
    }

    /// The handler a streamed batch calls (from any thread) when it wants more input again.
    public func whenInputRoom(_ handler: @escaping @Sendable () -> Void) {
        lock.withLock { onInputRoom = handler }
    }

    /// A streamed batch has all its items.
    public func endInput() {
        let finished = lock.withLock { () -> Bool in
            scheduler.endInput()
            return takeFinish()
        }
        if finished {
            stopWatchdog()
            onFinish()
        }
    }

    /// Under the lock: the handler to call when a streamed batch waited for its unstarted items
    /// to fall to half of `inputWindow` (or for a cancel, after which input is only drained) and now they have.
    private func takeInputRoom() -> (@Sendable () -> Void)? {
        guard waitingForInputRoom, scheduler.isCancelled || scheduler.unstarted <= inputWindow / 2 else { return nil }
        waitingForInputRoom = false
        return onInputRoom
    }

    /// Under the lock: whether the batch is done and its finish not yet reported (then it is, by the caller).
    private func takeFinish() -> Bool {
        // In request order, not while another thread is still handing the last items over.
        guard !finishReported, scheduler.isFinished, !ordered || (nextToWrite == scheduler.total && !writing) else { return false }
        finishReported = true
        return true
    }

    private func settleLost(olderThan limit: TimeAmount) {
        let now = NIODeadline.now().uptimeNanoseconds
        let horizon = UInt64(max(limit.nanoseconds, 0))
        let (overdue, lostCalls) = lock.withLock { () -> ([Int], [UpstreamCall]) in
            oldestUnsettled = max(oldestUnsettled, items.base)
            while oldestUnsettled < items.end && items.isSettled(oldestUnsettled) { oldestUnsettled += 1 }
            var overdue: [Int] = []
            var lostCalls: [UpstreamCall] = []
            var index = oldestUnsettled
            // Items start in index order, so the overdue ones come first among those started.
            while index < scheduler.nextIndex {
                defer { index += 1 }
                if items.isSettled(index) { continue }
                let started = items[index].started
                if started == 0 { continue }  // waiting for a dependency, not started
                guard now > started, now - started > horizon else { break }
                overdue.append(index)
                if let call = items[index].call { lostCalls.append(call) }
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
            return readingSuspended ? scheduler.nextIndex..<scheduler.nextIndex : admit(scheduler.resume())
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
            items.forEachCall { call in
                if want { call.suspendReading() } else { call.resumeReading() }
            }
            if want {
                scheduler.pause()
                return none
            }
            return writabilityPaused ? none : admit(scheduler.resume())
        }
        if !next.isEmpty { launch(next) }
    }

    /// Stops the batch: in-flight calls are cancelled on the wire, unstarted items are not sent.
    /// Every item still settles once, with `status` and `reason`.
    /// Only the first cancellation counts (a deadline and a departing client may race).
    public func cancel(status: Int, reason: String) {
        let outcome = ItemOutcome.unsent(status, reason)
        let work = lock.withLock { () -> (Range<Int>, [UpstreamCall], [Int], (@Sendable () -> Void)?)? in
            guard !scheduler.isCancelled else { return nil }
            cancelOutcome = outcome
            // Claimed but waiting for others: no call to cancel, they settle here.
            let parked = Array(waiting.keys) + followers.values.flatMap { $0 }
            waiting.removeAll()
            dependents.removeAll()
            followers.removeAll()
            // Nothing will start any more: outcomes kept for others are not needed.
            for index in remaining.keys where items.isSettled(index) && index >= items.base { items.forget(index) }
            remaining.removeAll()
            retained.removeAll()
            needed.removeAll()
            let never = scheduler.cancel()
            return (never, items.calls, parked.sorted(), takeInputRoom())
        }
        guard let (never, inFlight, parked, room) = work else { return }
        room?()
        for index in parked { settle(index, outcome) }
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
            let room: (@Sendable () -> Void)?
            (work, room) = lock.withLock {
                let queued = launchQueue
                launchQueue.removeAll()
                if queued.isEmpty { launching = false }
                return (queued, takeInputRoom())
            }
            room?()
            if work.isEmpty { return }
        }
    }

    private func start(_ index: Int) {
        // A cancel may land between the claim and this start: then the item is not sent.
        enum Start {
            case cancelled(ItemOutcome?)
            case rejected(String?)
            /// Sent as it is.
            case send(UpstreamRequest)
            /// Sent as it is, the item shown to the tracing hook first.
            case traced(UpstreamRequest, BatchItem)
            /// Gated first: its relations decide whether and what it sends.
            case related(BatchItem)
        }
        let start = lock.withLock { () -> Start in
            if scheduler.isCancelled { return .cancelled(cancelOutcome) }
            items[index].started = NIODeadline.now().uptimeNanoseconds
            if related { return .related(items.item(index)) }
            // The request is moved out, not the whole item copied (issue 13): nothing reads it
            // after the start. The tracing hook gets the item as it was.
            let traced = prepare == nil ? nil : items.item(index)
            guard let request = items.takeRequest(index) else { return .rejected(items.rejection(index)) }
            if let traced { return .traced(request, traced) }
            return .send(request)
        }
        var request: UpstreamRequest
        // `consume`: binding a case's payload out of `start` copied it and freed the original.
        switch consume start {
        case .cancelled(let outcome):
            settle(index, outcome ?? ItemOutcome.unsent(499, "cancelled"))
            return
        case .rejected(let reason):
            settle(index, ItemOutcome.unsent(400, reason ?? "invalid item"))
            return
        case .send(let plain):
            request = plain
        case .traced(let plain, let item):
            request = plain
            prepare?(index, item, &request)
        case .related(let item):
            switch gate(index, item) {
            case .parked:
                return
            case .settle(let outcome):
                settle(index, outcome)
                return
            case .send(let resolved):
                request = resolved
            }
            prepare?(index, item, &request)
        }
        if let batchDeadline {
            request.batchDeadline = batchDeadline
            request.batchStarted = created
        }
        // This run takes the result itself, the item's index as the tag (no closure per item).
        let call = transport.execute(consume request, for: self, tag: index)
        let missedCancel = lock.withLock { () -> Bool in
            // The call may already have settled; keep a handle only to cancel live ones.
            guard !items.isSettled(index) else { return false }
            items[index].call = call
            // Under the lock, like `updateReading`, so a resume cannot overtake it.
            if readingSuspended { call.suspendReading() }
            return scheduler.isCancelled
        }
        // The cancel collected the calls before this one was stored: cancel it here.
        if missedCancel { call.cancel() }
    }

    /// Under the lock: the part of `claimed` the process's budget has tokens for; the rest is
    /// given back to the scheduler, and the budget wakes this run when tokens return.
    private func admit(_ claimed: Range<Int>) -> Range<Int> {
        guard let budget, !claimed.isEmpty else { return claimed }
        let granted = budget.acquire(claimed.count, held: tokensHeld, id: ObjectIdentifier(self)) { [weak self] in self?.budgetFreed() }
        tokensHeld += granted
        if granted < claimed.count { scheduler.giveBack(claimed.count - granted) }
        let admitted = claimed.lowerBound..<(claimed.lowerBound + granted)
        for index in admitted { items[index].holdsToken = true }
        return admitted
    }

    /// Tokens came back: start what the scheduler allows now.
    private func budgetFreed() {
        let next = lock.withLock { () -> Range<Int> in
            guard !writabilityPaused, !readingSuspended, !scheduler.isCancelled else { return scheduler.nextIndex..<scheduler.nextIndex }
            return admit(scheduler.claim())
        }
        if !next.isEmpty { launch(next) }
    }

    private enum Gate {
        case send(UpstreamRequest)
        case parked
        case settle(ItemOutcome)
    }

    /// Whether a claimed item may go now: `on_error: stop` has struck, it duplicates an item
    /// still running, or its dependencies are not all done (it waits), or one failed (424).
    private func gate(_ index: Int, _ item: BatchItem) -> Gate {
        enum Decision {
            case gate(Gate)
            case resolve([ItemOutcome])
        }
        let decision = lock.withLock { () -> Decision in
            // A cancel between `start`'s check and this one: what the item would wait for was
            // let go (`cancel` clears `retained`, `needed` and the waiting lists), so parked it
            // would never settle, and the 207 never end. It takes the cancel's outcome.
            if scheduler.isCancelled {
                consumeAll(of: item)
                return .gate(.settle(cancelOutcome))
            }
            if let stopReason {
                consumeAll(of: item)
                return .gate(.settle(ItemOutcome.unsent(424, stopReason)))
            }
            if let leader = item.sameAs {
                if items.isSettled(leader), let outcome = retained[leader] {
                    coalesced += 1
                    consumeAll(of: item)
                    return .gate(.settle(Self.copied(outcome)))
                }
                followers[leader, default: []].append(index)
                items[index].started = 0
                return .gate(.parked)
            }
            var outcomes: [ItemOutcome] = []
            var pending: [Int] = []
            for dependency in item.dependsOn {
                if items.isSettled(dependency), let outcome = retained[dependency] {
                    if let failure = dependencyFailed(dependency, outcome) {
                        consumeAll(of: item)
                        return .gate(.settle(failure))
                    }
                    outcomes.append(outcome)
                } else {
                    pending.append(dependency)
                }
            }
            if !pending.isEmpty {
                waiting[index] = pending.count
                for dependency in pending { dependents[dependency, default: []].append(index) }
                items[index].started = 0
                return .gate(.parked)
            }
            consumeAll(of: item)
            return .resolve(outcomes)
        }
        switch decision {
        case .gate(let gate):
            return gate
        case .resolve(let outcomes):
            if let resolve = item.resolve {
                switch resolve(outcomes) {
                case .success(let request): return .send(request)
                case .failure(let failure): return .settle(ItemOutcome.unsent(424, failure.reason))
                }
            }
            guard let request = item.request else {
                return .settle(ItemOutcome.unsent(400, item.rejection ?? "invalid item"))
            }
            return .send(request)
        }
    }

    /// Under the lock: `item` will not look at what it waited for again.
    private func consumeAll(of item: BatchItem) {
        for dependency in item.dependsOn { consume(dependency) }
        if let leader = item.sameAs { consume(leader) }
    }

    private func consume(_ index: Int) {
        guard let count = remaining[index] else { return }
        if count <= 1 {
            remaining[index] = nil
            retained[index] = nil
            needed.remove(index)
            if items.isSettled(index) { items.forget(index) }
        } else {
            remaining[index] = count - 1
        }
    }

    /// A duplicate's outcome: the leader's, but it sent nothing itself (no attempts, so it is
    /// neither a re-send nor an upstream latency sample).
    private static func copied(_ outcome: ItemOutcome) -> ItemOutcome {
        var copy = outcome
        copy.attempts = 0
        return copy
    }

    /// The 424 a dependent gets when `outcome` is not one `depends_on_success` accepts. Under the lock.
    private func dependencyFailed(_ dependency: Int, _ outcome: ItemOutcome) -> ItemOutcome? {
        guard !policy.dependencySuccess.contains(outcome.status) else { return nil }
        // The dependency's own reason, unless it is a 424 itself: a chain would nest them all.
        let cause = outcome.status == 424 ? nil : outcome.reason
        let reason = "not sent: dependency \"\(items.item(dependency).id)\" ended \(outcome.status)" + (cause.map { " (\($0))" } ?? "")
        return ItemOutcome.unsent(424, reason)
    }

    /// Settles `index` and, through a work list rather than recursion (a chain of 10,000
    /// dependencies must not take 10,000 stack frames), every waiting item its outcome decides.
    private func settle(_ index: Int, _ outcome: ItemOutcome) {
        // The item itself first, without a work list: most settle nothing else, and the list
        // was an allocation and a copy of the outcome per item.
        var work = settleOne(index, outcome)
        while let (next, nextOutcome) = work.popLast() {
            work += settleOne(next, nextOutcome)
        }
    }

    /// Under the lock, once `index` settled: what its waiting items do now. Returns those that
    /// settle at once (duplicates, 424s); those now free to go are started.
    private func release(_ index: Int, _ outcome: ItemOutcome) -> (settle: [(Int, ItemOutcome)], start: [Int]) {
        var settleNow: [(Int, ItemOutcome)] = []
        var start: [Int] = []
        if policy.stopOnError, stopReason == nil, !outcome.succeeded {
            stopReason = "not attempted: item \"\(items.item(index).id)\" failed (\(outcome.status))"
        }
        guard needed.contains(index) else { return (settleNow, start) }
        if remaining[index] != nil { retained[index] = outcome }
        // Before the waiting items are released: the last of them lets this item go.
        let failure = dependencyFailed(index, outcome)
        for follower in followers.removeValue(forKey: index) ?? [] {
            coalesced += 1
            consumeAll(of: items.item(follower))
            settleNow.append((follower, Self.copied(outcome)))
        }
        for dependent in dependents.removeValue(forKey: index) ?? [] {
            guard let count = waiting[dependent] else { continue }  // already settled by another dependency
            if let failure {
                waiting[dependent] = nil
                consumeAll(of: items.item(dependent))
                settleNow.append((dependent, failure))
            } else if count == 1 {
                waiting[dependent] = nil
                start.append(dependent)
            } else {
                waiting[dependent] = count - 1
            }
        }
        return (settleNow, start)
    }

    private func settleOne(_ index: Int, _ outcome: ItemOutcome) -> [(Int, ItemOutcome)] {
        // Each item leaves once: a second outcome for one item (a transport bug) is dropped.
        let settled = lock.withLock { () -> (item: BatchItem, started: UInt64, cascade: [(Int, ItemOutcome)], ready: [Int], token: Bool)? in
            guard !items.isSettled(index) else { return nil }
            items[index].settled = true
            items[index].call = nil
            let slot = items[index]
            if slot.holdsToken {
                items[index].holdsToken = false
                tokensHeld -= 1
            }
            var cascade: [(Int, ItemOutcome)] = []
            var ready: [Int] = []
            let item: BatchItem
            if related {
                // Taken first: releasing its waiting items may let it go.
                item = items.item(index)
                (cascade, ready) = release(index, outcome)
                if remaining[index] == nil { items.forget(index) }
            } else {
                // Nothing else needs it (`remaining` is empty): moved out, not copied.
                item = items.take(index)
            }
            if !ordered { dropSettled() }
            return (item, slot.started, cascade, ready, slot.holdsToken)
        }
        // Taken apart by `consume`: binding the tuple's parts copied the item and freed the original.
        guard let (item, started, cascade, ready, token) = consume settled else { return [] }
        // Outside this run's lock: giving a token back may start another batch's items.
        if token { budget?.release(1) }
        defer { for dependent in ready { launch(dependent..<(dependent + 1)) } }
        let now = NIODeadline.now().uptimeNanoseconds
        let nanoseconds = started == 0 || now < started ? 0 : now - started
        if ordered {
            settleInOrder(index, item, outcome, nanoseconds)
            return cascade
        }
        onResult(index, item, outcome, nanoseconds)
        let (next, finished) = lock.withLock { () -> (Range<Int>, Bool) in
            let next = admit(scheduler.settle())
            return (next, takeFinish())
        }
        if finished {
            stopWatchdog()
            onFinish()
        } else if !next.isEmpty {
            launch(next)
        }
        return cascade
    }

    /// Under the lock: lets go of settled items at the front that nothing needs any more (in
    /// request order, only once written).
    private func dropSettled() {
        items.dropSettled { index, slot in
            slot.settled && remaining[index] == nil && (!ordered || index < nextToWrite)
        }
    }

    private func stopWatchdog() {
        budget?.forget(ObjectIdentifier(self))
        let task = lock.withLock { () -> RepeatedTask? in
            defer { watchdogTask = nil }
            return watchdogTask
        }
        task?.cancel()
    }

    private func settleInOrder(_ index: Int, _ item: BatchItem, _ outcome: ItemOutcome, _ nanoseconds: UInt64) {
        let next = lock.withLock { () -> Range<Int> in
            held[index] = (item, outcome, nanoseconds)
            return admit(scheduler.settle())
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
            let (run, first, finished) = lock.withLock { () -> ([(BatchItem, ItemOutcome, UInt64)], Int, Bool) in
                var run: [(BatchItem, ItemOutcome, UInt64)] = []
                let first = nextToWrite
                while let entry = held.removeValue(forKey: nextToWrite) {
                    run.append(entry)
                    nextToWrite += 1
                }
                if run.isEmpty {
                    writing = false
                    return (run, first, takeFinish())
                }
                dropSettled()
                return (run, first, false)
            }
            if run.isEmpty {
                if finished {
                    stopWatchdog()
                    onFinish()
                }
                return
            }
            for (offset, entry) in run.enumerated() { onResult(first + offset, entry.0, entry.1, entry.2) }
            let next = lock.withLock { admit(scheduler.wrote(upTo: first + run.count)) }
            if !next.isEmpty { launch(next) }
        }
    }
}

extension FanOutRun: UpstreamResultSink {
    /// An item's result from the transport (`tag` is its index).
    public func deliver(_ result: UpstreamResult, tag index: Int) {
        if case .failure(let error) = result, error.kind == .cancelled {
            // The cancel's status and reason, with the sends this item made before it.
            var outcome = lock.withLock { cancelOutcome }
            outcome.attempts = error.attempts
            settle(index, outcome)
        } else {
            settle(index, ItemOutcome(result))
        }
    }
}
