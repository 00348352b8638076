import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Retries within a budget and a circuit breaker in front of an engine (`retry:` and
/// `circuit_breaker:` of an upstream). The decisions are the value types' (`RetryPolicy`,
/// `RetryBudget`, `CircuitBreaker`); this class only keeps them behind one lock, schedules
/// backoffs on an event loop, and follows each item across its attempts.
public final class ResilientTransport: UpstreamTransport, @unchecked Sendable {
    public let configuration: UpstreamConfiguration
    let inner: UpstreamTransport
    private let group: EventLoopGroup
    private let events: UpstreamEvents
    private let logger: Logger
    private let policy: RetryPolicy
    private let lock = NIOLock()
    private var budget: RetryBudget
    private var breaker: CircuitBreaker?

    public init(wrapping inner: UpstreamTransport, group: EventLoopGroup, logger: Logger, events: UpstreamEvents = .none) {
        let configuration = inner.configuration
        self.configuration = configuration
        self.inner = inner
        self.group = group
        self.events = events
        self.logger = logger
        policy = RetryPolicy(configuration: configuration.retry)
        budget = RetryBudget(ratio: configuration.retry.budget, minRetries: configuration.retry.minRetries)
        breaker = configuration.circuitBreaker.map(CircuitBreaker.init(configuration:))
    }

    /// The circuit's state now (closed when there is no breaker).
    /// As of now (see `CircuitBreaker.state(at:)`), for the metrics.
    public var circuitState: CircuitBreaker.State {
        let now = NIODeadline.now()
        return lock.withLock { breaker?.state(at: now) ?? .closed }
    }

    public func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        let now = NIODeadline.now()
        let (admission, transition) = lock.withLock { () -> (CircuitBreaker.Admission, CircuitBreaker.Transition?) in
            let verdict = breaker?.admit(now: now) ?? (.allowed, nil)
            if verdict.0 != .rejected { budget.firstAttempt(now: now) }
            return verdict
        }
        report(transition)
        let call = ResilientCall(request: request, deadline: now + configuration.timeout, probe: admission == .probe,
                                 eventLoop: group.next(), completion: completion)
        if call.probe {
            // However it ends (a cancel in its backoff, its deadline), a probe's place comes back.
            call.onFinish = { [self] in lock.withLock { _ = reportProbe(call, failed: nil, now: .now()) } }
        }
        if admission == .rejected {
            call.finish(.failure(UpstreamError(.overloaded, "circuit open for upstream \(configuration.name); not sent", attempts: 0)))
        } else {
            attempt(call)
        }
        return call
    }

    /// Under `lock`: tells the breaker how probe `call` ended, once. `failed` nil: an end that
    /// says nothing of the upstream (cancelled, a neutral answer), which gives the place back.
    private func reportProbe(_ call: ResilientCall, failed: Bool?, now: NIODeadline) -> CircuitBreaker.Transition? {
        guard !call.probeReported else { return nil }
        call.probeReported = true
        guard let failed else {
            breaker?.probeAbandoned()
            return nil
        }
        return breaker?.record(failed: failed, probe: true, now: now)
    }

    private func attempt(_ call: ResilientCall) {
        let (number, sent) = call.beginAttempt()
        var request = call.request
        request.priorSends = UInt8(min(sent, Int(UInt8.max)))
        let inner = self.inner.execute(request) { [self] result in settled(call, result) }
        call.started(inner, attempt: number)
    }

    private func settled(_ call: ResilientCall, _ result: UpstreamResult) {
        let now = NIODeadline.now()
        let failed = Self.failed(result, request: call.request, handedOver: call.deadline - configuration.timeout, now: now)
        guard let (attempt, sent) = call.attemptEnded(result) else {
            // The item already settled (its deadline, a cancel): only the circuit hears of it.
            let transition = lock.withLock { () -> CircuitBreaker.Transition? in
                if call.probe { return reportProbe(call, failed: failed, now: now) }
                guard let verdict = failed else { return nil }
                return breaker?.record(failed: verdict, probe: false, now: now)
            }
            report(transition)
            return
        }
        let decision = call.isCancelled ? .finish
            : policy.decide(result, request: call.request, attempt: attempt, sent: sent, now: now,
                            deadline: min(call.deadline, call.request.batchDeadline ?? call.deadline),
                            random: { Int64.random(in: $0) })
        var retryReason: String?
        var delay = TimeAmount.zero
        var exhausted = false
        var transition: CircuitBreaker.Transition?
        lock.withLock {
            if case .retry(let after, let reason) = decision {
                if budget.acquireRetry(now: now) {
                    retryReason = reason
                    delay = after
                } else {
                    exhausted = true
                }
            }
            // A probe is one item: its attempts before a retry are not probes of their own (each
            // answered 429 and retried counted as another probe's success).
            if call.probe {
                if retryReason == nil { transition = reportProbe(call, failed: failed, now: now) }
            } else if let verdict = failed {
                transition = breaker?.record(failed: verdict, probe: false, now: now)
            }
        }
        report(transition)
        if exhausted { events.retryBudgetExhausted(configuration.name) }
        guard let reason = retryReason else {
            call.finish(result)
            return
        }
        // Counted when it goes, not when it is scheduled: a client that leaves during the
        // backoff cancels it, and sheaf_upstream_retries_total counted retries never sent.
        call.scheduleRetry(after: delay, timeout: timeoutError()) { [self] in
            events.retry(configuration.name, reason)
            self.attempt(call)
        }
    }

    /// Whether an outcome counts against the circuit: transport failures and 5xx answers do,
    /// 4xx and most cancellations are neutral (nil). A call on the wire that its batch's
    /// deadline cut, handed over (`handedOver`) in the first half of its batch's time, is a
    /// failure: the upstream did not answer in the time the client allowed (Envoy's outlier
    /// detection counts a route timeout so). Otherwise a silent upstream behind a `deadline`
    /// shorter than its `timeout` never opened the circuit. Neutral: a call cut while it waited
    /// (attempts 0), one cancelled before any deadline (its client left), and one handed over
    /// in the second half, as the last wave of a batch too big for its deadline is: counted,
    /// one oversized batch opened a healthy upstream's circuit for every route on it.
    static func failed(_ result: UpstreamResult, request: UpstreamRequest, handedOver: NIODeadline, now: NIODeadline) -> Bool? {
        switch result {
        case .success(let response):
            return response.status >= 500
        case .failure(let error):
            switch error.kind {
            case .unreachable, .protocolError, .timeout, .protocolMismatch: return true
            case .cancelled:
                guard let deadline = request.batchDeadline, now >= deadline, error.attempts > 0 else { return nil }
                let batchTime = (deadline - (request.batchStarted ?? handedOver)).nanoseconds
                return (deadline - handedOver).nanoseconds * 2 >= batchTime ? true : nil
            case .shuttingDown, .requestHeadTooLarge, .overloaded: return nil
            }
        }
    }

    private func timeoutError() -> UpstreamError {
        UpstreamError(.timeout, "upstream \(configuration.name) did not answer within \(configuration.timeout.configText) (retries included)")
    }

    private func report(_ transition: CircuitBreaker.Transition?) {
        guard let transition else { return }
        logger.warning("upstream circuit \(transition.to.rawValue)",
                       metadata: ["upstream": "\(configuration.name)", "from": "\(transition.from.rawValue)"])
        events.circuitTransition(configuration.name, transition.from, transition.to)
    }

    public func cancel(_ calls: [UpstreamCall]) {
        var running: [UpstreamCall] = []
        for call in calls {
            guard let call = call as? ResilientCall else { continue }
            if let inner = call.cancelKeepingInner() { running.append(inner) }
        }
        if !running.isEmpty { inner.cancel(running) }
    }

    public var gauges: [UpstreamGauges] { inner.gauges }

    public func shutdown() async {
        await inner.shutdown()
    }
}

/// One item across its attempts: the inner call now running, or the backoff timer between two.
final class ResilientCall: UpstreamCall, @unchecked Sendable {
    let request: UpstreamRequest
    /// The item's own deadline: retries never go past it.
    let deadline: NIODeadline
    let probe: Bool
    /// Under the transport's lock: the breaker has heard how this probe ended.
    var probeReported = false
    /// Called once when the item settles, however it does; set before its first attempt.
    var onFinish: (@Sendable () -> Void)?
    private let eventLoop: EventLoop
    private let lock = NIOLock()
    private var completion: (@Sendable (UpstreamResult) -> Void)?
    private var relay = CallRelay()
    private var backoff: Scheduled<Void>?
    private var deadlineTimer: Scheduled<Void>?
    /// Attempts begun and ended.
    private var begun = 0
    private var attempts = 0
    private var sends = 0
    /// The engines' re-sends within those sends (the policy's own retries are not among them).
    private var resends = 0

    init(request: UpstreamRequest, deadline: NIODeadline, probe: Bool, eventLoop: EventLoop,
         completion: @escaping @Sendable (UpstreamResult) -> Void) {
        self.request = request
        self.deadline = deadline
        self.probe = probe
        self.eventLoop = eventLoop
        self.completion = completion
    }

    var isCancelled: Bool { lock.withLock { relay.cancelled } }

    /// The new attempt's number, and the sends of those before it.
    func beginAttempt() -> (number: Int, sent: Int) {
        lock.withLock {
            begun += 1
            return (begun, sends)
        }
    }

    /// The engine's call for attempt `number`, unless that attempt already ended (an engine may
    /// settle inside `execute`).
    func started(_ call: UpstreamCall, attempt number: Int) {
        let (cancel, suspend) = lock.withLock { () -> (cancel: Bool, suspend: Bool) in
            completion != nil && attempts < number ? relay.attach(call) : (relay.cancelled, relay.suspended)
        }
        call.catchUp(cancel: cancel, suspend: suspend)
    }

    /// Counts the attempt that ended and its sends; returns its number and the sends of every
    /// attempt so far, or nil when the item has settled already.
    func attemptEnded(_ result: UpstreamResult) -> (number: Int, sent: Int)? {
        lock.withLock {
            attempts += 1
            switch result {
            case .success(let response):
                sends += response.attempts
                resends += response.resends
            case .failure(let error):
                sends += error.attempts
                resends += error.resends
            }
            relay.inner = nil
            return completion == nil ? nil : (attempts, sends)
        }
    }

    /// Another attempt after `delay`. A retry's engine timeout starts afresh, so a timer holds the
    /// item to its first deadline.
    func scheduleRetry(after delay: TimeAmount, timeout: UpstreamError, _ body: @escaping @Sendable () -> Void) {
        lock.withLock {
            guard completion != nil, !relay.cancelled else { return }
            backoff = eventLoop.scheduleTask(in: delay) { [self] in
                let go = lock.withLock { () -> Bool in
                    backoff = nil
                    return completion != nil && !relay.cancelled
                }
                if go { body() }
            }
            if deadlineTimer == nil {
                deadlineTimer = eventLoop.scheduleTask(deadline: deadline) { [self] in
                    var error = timeout
                    error.attempts = lock.withLock { sends }
                    finish(.failure(error))
                }
            }
        }
    }

    /// Settles the item once, with every send of every attempt counted.
    func finish(_ result: UpstreamResult) {
        let (done, call, total, retried) = lock.withLock { () -> ((@Sendable (UpstreamResult) -> Void)?, UpstreamCall?, (sends: Int, resends: Int), Bool) in
            defer {
                completion = nil
                relay.inner = nil
                backoff?.cancel()
                backoff = nil
                deadlineTimer?.cancel()
                deadlineTimer = nil
            }
            return (completion, relay.inner, (sends, resends), begun > 1)
        }
        guard let done else { return }
        call?.cancel()
        onFinish?()
        switch result {
        case .success(var response):
            if retried { (response.attempts, response.resends) = total }
            done(.success(response))
        case .failure(var error):
            if retried { (error.attempts, error.resends) = total }
            done(.failure(error))
        }
    }

    func cancel() {
        if let inner = cancelKeepingInner() { inner.cancel() }
    }

    /// Marks the item cancelled; between attempts it settles now. Returns the running attempt's
    /// call, which the caller cancels (in bulk, for a whole batch).
    func cancelKeepingInner() -> UpstreamCall? {
        let (call, waiting) = lock.withLock { () -> (UpstreamCall?, Bool) in
            let inner = relay.cancel()
            return (inner, inner == nil && completion != nil)
        }
        if waiting { finish(.failure(UpstreamError(.cancelled, "cancelled", attempts: lock.withLock { sends }))) }
        return call
    }

    func suspendReading() {
        lock.withLock { relay.reading(suspended: true) }?.suspendReading()
    }

    func resumeReading() {
        lock.withLock { relay.reading(suspended: false) }?.resumeReading()
    }
}
