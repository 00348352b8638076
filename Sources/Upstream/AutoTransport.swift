import Logging
import NIOConcurrencyHelpers
import NIOCore

/// `protocol: auto`: HTTP/2 first (`http://`: h2c with prior knowledge; `https://`: TLS whose
/// ALPN offers h2 and http/1.1); when the upstream shows it does not speak it (an HTTP/1.x answer
/// to the preface, a close without any answer, or ALPN picking http/1.1), HTTP/1.1 from then on,
/// and the items caught by the discovery go out again over HTTP/1.1 (none of them was sent).
/// The decision is per upstream, logged once when it changes, and made again when HTTP/1.1
/// connections to the upstream fail.
public final class AutoTransport: UpstreamTransport, @unchecked Sendable {
    public let configuration: UpstreamConfiguration
    private let logger: Logger
    private let events: UpstreamEvents
    private let h2: HTTP2Transport
    private let lock = NIOLock()
    private var http1: CurlTransport?
    private var usesHTTP1 = false

    /// Throws when the TLS files of an `https://` upstream cannot be used.
    public init(configuration: UpstreamConfiguration, group: EventLoopGroup, logger: Logger, events: UpstreamEvents = .none) throws {
        self.configuration = configuration
        self.logger = logger
        self.events = events
        let tls = configuration.endpoint.scheme == "https"
            ? try UpstreamTLS(configuration: configuration, offerHTTP1: true, events: events) : nil
        self.h2 = HTTP2Transport(configuration: configuration, group: group, logger: logger, tls: tls, events: events)
    }

    private var http2Name: String { configuration.endpoint.scheme == "https" ? "HTTP/2 over TLS" : "h2c" }

    /// Which protocol the upstream gets now (for tests and logs).
    public var currentProtocol: UpstreamProtocol {
        lock.withLock { usesHTTP1 ? .http1 : configuration.endpoint.scheme == "https" ? .h2 : .h2c }
    }

    public func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        let call = AutoCall()
        send(request, call: call, completion: completion)
        return call
    }

    private func send(_ request: UpstreamRequest, call: AutoCall, completion: @escaping @Sendable (UpstreamResult) -> Void) {
        let http1 = lock.withLock { usesHTTP1 ? curl() : nil }
        let inner: UpstreamCall
        if let http1 {
            inner = http1.execute(request) { [self] result in
                if case .failure(let error) = result, error.kind == .unreachable { rethink(after: error) }
                completion(result)
            }
        } else {
            inner = h2.execute(request) { [self] result in
                guard case .failure(let error) = result, error.kind == .protocolMismatch else {
                    completion(result)
                    return
                }
                useHTTP1(because: error)
                send(request, call: call, completion: completion)
            }
        }
        call.attach(inner)
    }

    /// Under `lock`.
    private func curl() -> CurlTransport {
        if let http1 { return http1 }
        let transport = CurlTransport(configuration: configuration, logger: logger, events: events)
        http1 = transport
        return transport
    }

    private func useHTTP1(because error: UpstreamError) {
        let changed = lock.withLock { () -> Bool in
            defer { usesHTTP1 = true }
            return !usesHTTP1
        }
        if changed {
            logger.info("upstream does not speak \(http2Name); using HTTP/1.1",
                        metadata: ["upstream": "\(configuration.name)", "reason": "\(error.message)"])
        }
    }

    /// HTTP/1.1 connections fail: the upstream may have been replaced by one that speaks HTTP/2.
    /// The next item tries HTTP/2 again (and comes back here if it still does not).
    private func rethink(after error: UpstreamError) {
        let changed = lock.withLock { () -> Bool in
            defer { usesHTTP1 = false }
            return usesHTTP1
        }
        if changed {
            logger.info("upstream connection failed; trying \(http2Name) again",
                        metadata: ["upstream": "\(configuration.name)", "reason": "\(error.message)"])
        }
    }

    public var gauges: [UpstreamGauges] {
        h2.gauges + (lock.withLock { http1 }?.gauges ?? [])
    }

    public func cancel(_ calls: [UpstreamCall]) {
        for call in calls { call.cancel() }
    }

    public func shutdown() async {
        await h2.shutdown()
        if let http1 = lock.withLock({ http1 }) { await http1.shutdown() }
    }
}

/// The call `AutoTransport` hands out: it follows its item from the h2c attempt to HTTP/1.1, so a
/// cancel or a backpressure signal reaches whichever engine holds the item now.
final class AutoCall: UpstreamCall, @unchecked Sendable {
    private let lock = NIOLock()
    private var relay = CallRelay()

    func attach(_ call: UpstreamCall) {
        let (cancel, suspend) = lock.withLock { relay.attach(call) }
        call.catchUp(cancel: cancel, suspend: suspend)
    }

    func cancel() {
        lock.withLock { relay.cancel() }?.cancel()
    }

    func suspendReading() {
        lock.withLock { relay.reading(suspended: true) }?.suspendReading()
    }

    func resumeReading() {
        lock.withLock { relay.reading(suspended: false) }?.resumeReading()
    }
}
