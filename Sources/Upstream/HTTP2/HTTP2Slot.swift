import Atomics
import Logging
import NIOCore

/// One connection position of an HTTP/2 pool, confined to one event loop: the current
/// connection, the ones draining (GOAWAY, or closing), and the queue of items waiting for a
/// stream.
///
/// The queue is FIFO, which is deadline order (every item of an upstream has the same timeout).
/// A cancelled item stays in it, settled, and is skipped when it comes up: cancelling costs
/// O(1) per item however long the queue.
///
/// Confined to `eventLoop`: it is handed from other threads only to run there (`execute`,
/// `flatSubmit`), as its exchanges are.
final class HTTP2Slot: @unchecked Sendable {
    let configuration: UpstreamConfiguration
    let eventLoop: EventLoop
    let logger: Logger

    private var current: HTTP2Connection?
    private var draining: [ObjectIdentifier: HTTP2Connection] = [:]
    private var pending = CircularBuffer<HTTP2Exchange>()
    /// Live (unsettled) exchanges in `pending`.
    private var queued = 0 {
        didSet { gauges.add(gauges.queued, queued - oldValue) }
    }
    let gauges: UpstreamGauges
    let events: UpstreamEvents
    private(set) var isShutDown = false
    private var tickTask: Scheduled<Void>?
    private var nextTick: NIODeadline?
    /// Whether `nextTick` was set at the busy interval (the shortest one).
    private var nextTickIsBusy = false
    private var pumping = false
    private var pumpAgain = false
    private var closed: EventLoopPromise<Void>?

    /// `:scheme` and `:authority`, the same for every request of this upstream.
    let fixedPseudoHeaders: [(String, String)]
    /// Set for `https://` upstreams: every connection of the slot does TLS with it.
    let tls: UpstreamTLS?

    /// This slot's share of the upstream's `max_queued`.
    let queueLimit: Int

    init(configuration: UpstreamConfiguration, eventLoop: EventLoop, logger: Logger, tls: UpstreamTLS? = nil, slots: Int = 1,
         gauges: UpstreamGauges? = nil, events: UpstreamEvents = .none) {
        self.tls = tls
        self.gauges = gauges ?? UpstreamGauges(protocolName: tls == nil ? "h2c" : "h2")
        self.events = events
        let slots = max(1, slots)
        queueLimit = (configuration.maxQueued + slots - 1) / slots
        self.fixedPseudoHeaders = [(":scheme", configuration.endpoint.scheme), (":authority", configuration.endpoint.authority)]
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
    }

    private var connections: [HTTP2Connection] {
        (current.map { [$0] } ?? []) + draining.values
    }

    /// On the slot's loop: an item enqueued now would go on the wire at once, not wait.
    var hasRoomNow: Bool {
        eventLoop.assertInEventLoop()
        return queued == 0 && !isShutDown && (current?.canOpenStream ?? false)
    }

    /// `hasRoomNow` as last seen on the slot's loop, for other loops to read: a hint, which may
    /// be stale by the time they act on it (the item then waits in this slot's queue).
    let roomHint = ManagedAtomic(false)

    private func publishRoom() {
        roomHint.store(hasRoomNow, ordering: .relaxed)
    }

    /// Items queued or on the wire in this slot.
    var outstanding: Int {
        eventLoop.assertInEventLoop()
        return queued + (current?.openStreams ?? 0) + draining.values.reduce(0) { $0 + $1.openStreams }
    }

    func enqueue(_ exchange: HTTP2Exchange) {
        eventLoop.preconditionInEventLoop()
        if isShutDown {
            exchange.settle(.failure(.shutDown()))
            return
        }
        exchange.headSize = configuration.headSize(exchange.request)
        if let tooLarge = configuration.headTooLarge(size: exchange.headSize, peerLimit: current?.peerMaxHeaderListSize) {
            exchange.settle(.failure(tooLarge))
            return
        }
        // `queued` counts only what waits: every enqueue pumps what can start at once.
        if queued >= queueLimit {
            exchange.settle(.failure(UpstreamError(.overloaded,
                "upstream \(configuration.name) has max_queued (\(configuration.maxQueued)) items waiting for a stream; not sent", attempts: 0)))
            return
        }
        exchange.isQueued = true
        pending.append(exchange)
        queued += 1
        scheduleTick()
        pump()
    }

    /// Items the upstream never processed go back to the front of the queue, oldest first.
    func resend(_ exchanges: [HTTP2Exchange]) {
        for exchange in exchanges.reversed() where !exchange.isSettled {
            if isShutDown {
                exchange.settle(.failure(.shutDown()))
                continue
            }
            exchange.resetForResend()
            exchange.isQueued = true
            pending.prepend(exchange)
            queued += 1
        }
        pump()
    }

    private func popLive() -> HTTP2Exchange? {
        while let exchange = pending.popFirst() {
            guard exchange.isQueued else { continue }  // cancelled while queued
            exchange.isQueued = false
            queued -= 1
            return exchange
        }
        return nil
    }

    /// Moves queued items onto streams while the current connection has room. Re-entrant calls
    /// (a completion that starts the next item) fold into the loop instead of recursing.
    func pump() {
        guard !isShutDown else { return }
        if pumping {
            pumpAgain = true
            return
        }
        pumping = true
        defer {
            pumping = false
            publishRoom()
        }
        repeat {
            pumpAgain = false
            guard queued > 0 else { return }
            guard let connection = current else {
                connect()
                return
            }
            var submitted = false
            while connection.canOpenStream, let exchange = popLive() {
                if let tooLarge = configuration.headTooLarge(size: exchange.headSize, peerLimit: connection.peerMaxHeaderListSize) {
                    exchange.settle(.failure(tooLarge))
                    continue
                }
                connection.submit(exchange)
                submitted = true
            }
            if submitted { connection.scheduleFlush() }
        } while pumpAgain
    }

    /// Where a new connection goes instead of a TCP connect: the HTTP/2 fuzz target (Fuzz/)
    /// attaches it to an `EmbeddedChannel` it feeds with arbitrary frames. Nil in Sheaf.
    var attach: ((HTTP2Connection) -> Void)?

    private func connect() {
        let connection = HTTP2Connection(slot: self)
        current = connection
        if let attach { attach(connection) } else { connection.start() }
        scheduleTick()
    }

    // MARK: events from connections

    /// The peer's SETTINGS arrived, or streams closed and freed room.
    func streamCapacityAvailable(_ connection: HTTP2Connection) {
        if connection === current { pump() }
    }

    func connectionFailedToConnect(_ connection: HTTP2Connection, error: Error) {
        if current === connection { current = nil }
        draining.removeValue(forKey: ObjectIdentifier(connection))
        let message = "cannot connect to upstream \(configuration.name) at \(configuration.endpoint.authority): \(error)"
        logger.warning("upstream connect failed", metadata: ["upstream": "\(configuration.name)", "error": "\(error)"])
        failQueued(.unreachable, message, cause: .connectFailure)
        publishRoom()
        closedIfDone()
    }

    /// GOAWAY received, stream ids exhausted, or the connection is closing: no new streams on it.
    func connectionDraining(_ connection: HTTP2Connection) {
        if current === connection {
            current = nil
            draining[ObjectIdentifier(connection)] = connection
        }
        pump()
    }

    /// The connection is gone. `resend` go back to the queue; `failures` settle. A connection that
    /// never got the peer's SETTINGS fails the queue with its reason (the peer does not speak h2c,
    /// or refuses us): reconnecting in a loop would only hide that.
    /// `retriable`: the queue's items may go again by the retry policy (a refused or dropped
    /// connection; not a failed TLS handshake nor a peer without HTTP/2).
    /// `lost`: the connection did not end drained (see `HTTP2ConnectionStateMachine.endedDrained`).
    func connectionClosed(_ connection: HTTP2Connection, reason: String, established: Bool, lost: Bool = true, notH2C: Bool = false,
                          retriable: Bool = true, resend: [HTTP2Exchange], failures: [(HTTP2Exchange, UpstreamError)]) {
        if current === connection { current = nil }
        draining.removeValue(forKey: ObjectIdentifier(connection))
        publishRoom()
        if !established && !isShutDown {
            logger.warning("upstream connection failed before HTTP/2 SETTINGS",
                           metadata: ["upstream": "\(configuration.name)", "reason": "\(reason)"])
            // Nothing was sent on a connection that never got SETTINGS.
            failQueued(notH2C ? .protocolMismatch : .unreachable, reason, cause: retriable ? .connectFailure : .other)
        }
        if established && !isShutDown && lost && !(failures.isEmpty && resend.isEmpty) {
            // Items failed or went again with the connection (a GOAWAY with an error, a reset, a
            // silent peer): each says so in the 207, and the operator hears it once here.
            logger.warning("upstream connection lost with items on it",
                           metadata: ["upstream": "\(configuration.name)", "reason": "\(reason)",
                                      "failed": "\(failures.count)", "resent": "\(resend.count)"])
        }
        for (exchange, error) in failures {
            exchange.settle(.failure(isShutDown ? .shutDown() : error))
        }
        if !resend.isEmpty {
            logger.debug("re-sending items the upstream did not process",
                         metadata: ["upstream": "\(configuration.name)", "items": "\(resend.count)"])
        }
        self.resend(resend)
        closedIfDone()
    }

    private func failQueued(_ kind: UpstreamError.Kind, _ message: String, cause: UpstreamError.Cause = .other) {
        while let exchange = popLive() { exchange.fail(kind, message, cause: cause) }
        pending.removeAll()
    }

    // MARK: cancellation, deadlines, liveness

    func cancel(_ exchange: HTTP2Exchange) {
        guard !exchange.isSettled else { return }
        if let connection = exchange.connection {
            connection.cancelStream(of: exchange)
        } else if exchange.isQueued {
            exchange.isQueued = false
            queued -= 1
        }
        exchange.fail(.cancelled, "cancelled")
    }

    /// Cancels a slice now and the rest a moment later. Not `execute`: NIO runs tasks queued by
    /// tasks before it polls again, so only a task scheduled ahead lets I/O in between slices.
    func cancel(_ exchanges: ArraySlice<HTTP2Exchange>) {
        let slice = 256
        for exchange in exchanges.prefix(slice) { cancel(exchange) }
        let rest = exchanges.dropFirst(slice)
        guard !rest.isEmpty else { return }
        eventLoop.scheduleTask(in: .microseconds(50)) { self.cancel(rest) }
    }

    private var tickInterval: TimeAmount {
        let twentieth = configuration.timeout.nanoseconds / 20
        return .nanoseconds(min(max(twentieth, 5_000_000), 50_000_000))
    }

    /// Ticks run fast while items are outstanding (deadlines), slowly while connections idle
    /// (PINGs), and not at all when the slot holds nothing.
    private func scheduleTick() {
        guard !isShutDown else { return }
        let busy = outstanding > 0
        guard busy || current != nil || !draining.isEmpty else { return }
        // A busy tick already due is never later than a new one would be: no clock read (this
        // runs for every item enqueued).
        if nextTick != nil, nextTickIsBusy || !busy { return }
        let idle = TimeAmount.nanoseconds(min(configuration.pingInterval.nanoseconds, configuration.pingTimeout.nanoseconds) / 2)
        let at = NIODeadline.now() + (busy ? tickInterval : max(idle, tickInterval))
        if let nextTick, nextTick <= at { return }
        tickTask?.cancel()
        nextTick = at
        nextTickIsBusy = busy
        // Strong: the task is cancelled at shutdown, and a weak capture would give the slot a
        // side table (slow retains and releases for every item it carries).
        tickTask = eventLoop.scheduleTask(deadline: at) { [self] in
            self.nextTick = nil
            self.tickTask = nil
            self.tick()
        }
    }

    private func tick() {
        let now = NIODeadline.now()
        while let first = pending.first, !first.isQueued || first.deadline <= now {
            pending.removeFirst()
            guard first.isQueued else { continue }
            first.isQueued = false
            queued -= 1
            first.settle(.failure(timeoutError(queued: true)))
        }
        for connection in connections { connection.tick(now: now) }
        scheduleTick()
    }

    /// The 504 of an item whose timeout passed; a queued one says what it was waiting for.
    func timeoutError(queued: Bool = false, answerBegun: Bool = false) -> UpstreamError {
        var waiting = ""
        if queued {
            if let limit = current?.peerMaxConcurrentStreams, limit == 0 {
                waiting = " (waiting for a stream: it allows 0 concurrent streams)"
            } else if current == nil || current?.peerMaxConcurrentStreams == nil {
                waiting = " (waiting for a connection)"
            } else {
                waiting = " (waiting for a stream)"
            }
        }
        return configuration.timeoutError(answerBegun: answerBegun, waiting: waiting)
    }

    /// Fails what is queued, closes every connection (their streams then fail with 503), and
    /// completes when the last one has closed.
    func shutdown() -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        isShutDown = true
        tickTask?.cancel()
        tickTask = nil
        failQueued(.shuttingDown, UpstreamError.shutDown().message)
        let promise = eventLoop.makePromise(of: Void.self)
        closed = promise
        for connection in connections { connection.close(reason: "Sheaf is shutting down") }
        closedIfDone()
        return promise.futureResult
    }

    private func closedIfDone() {
        guard isShutDown, current == nil, draining.isEmpty, let closed else { return }
        self.closed = nil
        closed.succeed()
    }
}
