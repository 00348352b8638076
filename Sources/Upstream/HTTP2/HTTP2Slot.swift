import Logging
import NIOCore

/// One connection position of an HTTP/2 pool, confined to one event loop: the current
/// connection, the ones draining after GOAWAY, and the queue of items waiting for a stream.
final class HTTP2Slot {
    let configuration: UpstreamConfiguration
    let eventLoop: EventLoop
    let logger: Logger

    private var current: HTTP2Connection?
    private var draining: [ObjectIdentifier: HTTP2Connection] = [:]
    private var pending = CircularBuffer<HTTP2Exchange>()
    private var timer: RepeatedTask?
    private var isShutDown = false

    /// `:scheme` and `:authority`, the same for every request of this upstream.
    let fixedPseudoHeaders: [(String, String)]

    init(configuration: UpstreamConfiguration, eventLoop: EventLoop, logger: Logger) {
        self.fixedPseudoHeaders = [(":scheme", configuration.endpoint.scheme), (":authority", configuration.endpoint.authority)]
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Items queued or on the wire in this slot.
    var outstanding: Int {
        pending.count + (current?.activeStreams ?? 0) + draining.values.reduce(0) { $0 + $1.activeStreams }
    }

    func enqueue(_ exchange: HTTP2Exchange) {
        if isShutDown {
            exchange.settle(.failure(UpstreamError(.shuttingDown, "Sheaf is shutting down")))
            return
        }
        pending.append(exchange)
        startTimerIfNeeded()
        pump()
    }

    /// Put items the upstream never processed back at the front of the queue.
    func requeue(_ exchanges: [HTTP2Exchange]) {
        for exchange in exchanges.reversed() where !exchange.isSettled {
            exchange.resetForRetry()
            pending.prepend(exchange)
        }
    }

    /// Move queued items onto streams while the current connection has room.
    func pump() {
        guard !pending.isEmpty, !isShutDown else { return }
        guard let connection = current else {
            connect()
            return
        }
        guard connection.isReady else { return }
        var submitted = false
        while connection.hasStreamCapacity, let exchange = pending.popFirst() {
            connection.submit(exchange)
            submitted = true
            if !connection.isReady { break }  // submit can discover the session is no longer usable
        }
        if submitted { connection.scheduleFlush() }
        if current == nil && !pending.isEmpty { connect() }
    }

    private func connect() {
        let connection = HTTP2Connection(slot: self)
        current = connection
        connection.start()
    }

    // MARK: events from connections

    func connectionReady(_ connection: HTTP2Connection) {
        pump()
    }

    func connectionFailedToConnect(_ connection: HTTP2Connection, error: Error) {
        if current === connection { current = nil }
        let message = "cannot connect to upstream \(configuration.name) at \(configuration.endpoint.authority): \(error)"
        logger.warning("upstream connect failed", metadata: ["upstream": "\(configuration.name)", "error": "\(error)"])
        while let exchange = pending.popFirst() {
            exchange.settle(.failure(UpstreamError(.unreachable, message)))
        }
    }

    /// GOAWAY received (or the session cannot open more streams): stop using it, open a fresh one.
    func connectionGoingAway(_ connection: HTTP2Connection) {
        if current === connection {
            current = nil
            draining[ObjectIdentifier(connection)] = connection
        }
        pump()
    }

    func connectionClosed(_ connection: HTTP2Connection) {
        if current === connection { current = nil }
        draining.removeValue(forKey: ObjectIdentifier(connection))
        pump()
    }

    func streamCapacityAvailable(_ connection: HTTP2Connection) {
        if connection === current { pump() }
    }

    // MARK: cancellation, deadlines

    func cancel(_ exchange: HTTP2Exchange) {
        guard !exchange.isSettled else { return }
        if let connection = exchange.connection {
            connection.cancelStream(of: exchange)
        } else if let position = pending.firstIndex(where: { $0 === exchange }) {
            pending.remove(at: position)
        }
        exchange.settle(.failure(UpstreamError(.cancelled, "cancelled")))
    }

    private var tickInterval: TimeAmount {
        let twentieth = configuration.timeout.nanoseconds / 20
        return .nanoseconds(min(max(twentieth, 5_000_000), 50_000_000))
    }

    private func startTimerIfNeeded() {
        guard timer == nil else { return }
        timer = eventLoop.scheduleRepeatedTask(initialDelay: tickInterval, delay: tickInterval) { [unowned self] task in
            self.tick()
        }
    }

    private func tick() {
        let now = NIODeadline.now()
        // Every item of one upstream has the same timeout, so the queue is in deadline order.
        while let first = pending.first, first.deadline <= now {
            pending.removeFirst()
            first.settle(.failure(timeoutError()))
        }
        current?.expireStreams(now: now)
        for connection in draining.values { connection.expireStreams(now: now) }
        if outstanding == 0 {
            timer?.cancel()
            timer = nil
        }
    }

    func timeoutError() -> UpstreamError {
        UpstreamError(.timeout, "upstream \(configuration.name) did not answer within \(configuration.timeout.configText)")
    }

    func shutdown() {
        isShutDown = true
        timer?.cancel()
        timer = nil
        while let exchange = pending.popFirst() {
            exchange.settle(.failure(UpstreamError(.shuttingDown, "Sheaf is shutting down")))
        }
        current?.close()
        for connection in draining.values { connection.close() }
    }
}
