import NIOCore

/// One single-item call to an upstream, as the fan-out engine hands it over.
public struct UpstreamRequest: Sendable {
    public var method: String
    /// Path and query on the upstream, base path already applied, already validated.
    public var path: String
    /// End-to-end request headers of this item alone; hop-by-hop headers are already removed.
    public var headers: [(name: String, value: String)]
    /// Header fields every item of its batch sends alike (a route template's, the forwarded and
    /// inherited ones), sent before `headers`. One array shared by the batch's requests: copying
    /// or freeing a request retains or releases it once, not each of its strings (issue 13).
    public var batchHeaders: [(name: String, value: String)]
    // `Optional<...>` and no defaults here: the init sets every field once. An implicit `= nil`
    // set first and then overwritten cost a copy and a free of the whole request per item.
    public var body: Optional<ByteBuffer>
    /// The `X-Request-ID` the item is sent with, after `headers`.
    public var requestID: Optional<ItemRequestID>
    /// The route's `deadline` and the batch's start, one optional: a second optional took the
    /// request past 128 bytes, where Swift moves it with `memcpy` (+430 instructions an item).
    private var batchTimes: Optional<(deadline: NIODeadline, started: NIODeadline)>
    /// Sends the item's earlier tries made (set by the retry policy), so that an engine's own
    /// re-sends and the policy's retries share one bound. One byte, to stay within 128.
    public var priorSends: UInt8

    /// When the item's batch ends by its route's `deadline`: a retry does not wait past it (the
    /// answer in hand stands instead of becoming the deadline's 504).
    public var batchDeadline: NIODeadline? {
        get { batchTimes?.deadline }
        set { batchTimes = newValue.map { ($0, batchTimes?.started ?? $0) } }
    }

    /// When the item's batch began (set after `batchDeadline`; without it, the deadline): how
    /// much of its time an item had when it went, since a deadline cut counts against the circuit
    /// only for one that had half of it.
    public var batchStarted: NIODeadline? {
        get { batchTimes?.started }
        set { if let newValue, let deadline = batchTimes?.deadline { batchTimes = (deadline, newValue) } }
    }

    public init(method: String, path: String, headers: [(name: String, value: String)] = [],
                batchHeaders: [(name: String, value: String)] = [], body: ByteBuffer? = nil,
                requestID: ItemRequestID? = nil) {
        self.method = method
        self.path = path
        self.headers = headers
        self.batchHeaders = batchHeaders
        self.body = body
        self.requestID = requestID
        self.batchTimes = nil
        self.priorSends = 0
    }

    /// Every header field as sent: `batchHeaders`, then `headers`, then the request id.
    public var allHeaders: [(name: String, value: String)] {
        var all = batchHeaders + headers
        if let requestID { all.append((ItemRequestID.name, requestID.value)) }
        return all
    }

    /// Calls `body` with each field as sent (`batchHeaders`, then `headers`, then the request id),
    /// without joining them. The engines write the request id's two parts themselves
    /// (`requestID`); this joins them, for the paths that are not per item.
    @inlinable
    public func forEachHeader(_ body: (_ name: String, _ value: String) -> Void) {
        for header in batchHeaders { body(header.name, header.value) }
        for header in headers { body(header.name, header.value) }
        if let requestID { body(ItemRequestID.name, requestID.value) }
    }

    /// Whether any field, shared or own, satisfies `predicate`.
    public func containsHeader(where predicate: (_ name: String, _ value: String) -> Bool) -> Bool {
        batchHeaders.contains { predicate($0.name, $0.value) } || headers.contains { predicate($0.name, $0.value) }
            || requestID.map { predicate(ItemRequestID.name, $0.value) } ?? false
    }

    /// The size of the request's header list as RFC 9113 §6.5.2 counts it (each field's name
    /// and value plus 32 octets), pseudo-headers included. Both engines refuse an item above the
    /// upstream's `max_request_header_bytes` with the same 431, so an item never depends on the
    /// protocol it happens to travel on.
    public func headerListSize(authorityByteCount: Int, scheme: String) -> Int {
        var size = 32 + 7 + method.utf8.count      // :method
        size += 32 + 5 + path.utf8.count           // :path
        size += 32 + 7 + scheme.utf8.count         // :scheme
        size += 32 + 10 + authorityByteCount       // :authority
        // Field by field, not through `forEachHeader`, which joins the request id's parts.
        func field(_ name: String, _ valueBytes: Int) { size += 32 + name.utf8.count + valueBytes }
        for header in batchHeaders { field(header.name, header.value.utf8.count) }
        for header in headers { field(header.name, header.value.utf8.count) }
        if let requestID { field(ItemRequestID.name, requestID.byteCount) }
        if let body { size += 32 + 14 + String(body.readableBytes).utf8.count }
        return size
    }

    /// The most times an engine puts one idempotent request on the wire when the upstream
    /// provably left it unprocessed or a connection died before any byte of answer.
    public static let maxSends = 4

    /// The sends this try may make in all, re-sends of a request the upstream left unprocessed
    /// included: a try's first send always goes (the retry policy decided it), and re-sends stop
    /// at `maxSends` counting the sends of earlier tries. So an item goes at most
    /// max(`maxSends`, `retry.attempts`) times.
    public var sendBudget: Int {
        max(1, Self.maxSends - Int(priorSends))
    }

    /// RFC 9110 §9.2.2: safe to send again when the upstream may not have seen it.
    public var isIdempotent: Bool {
        switch method {
        case "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PROPFIND": return true
        default: return false
        }
    }
}

/// An item's `X-Request-ID`: its batch's id and a dot, then the item's id (percent-encoded).
/// Kept as the two parts, which the engines write one after the other: joined, they were a new
/// string (and an array to hold the field) per item (issue 13).
public struct ItemRequestID: Sendable, Equatable {
    public static let name = "x-request-id"
    /// `<batch request id>.`, one string shared by the batch's items.
    public var prefix: String
    /// The item's id, percent-encoded.
    public var suffix: String

    public init(prefix: String, suffix: String) {
        self.prefix = prefix
        self.suffix = suffix
    }

    /// The field's value.
    public var value: String { prefix + suffix }

    public var byteCount: Int { prefix.utf8.count + suffix.utf8.count }
}

/// What the upstream answered for one item.
public struct UpstreamResponse: Sendable {
    public var status: Int
    /// Response headers in arrival order, names lower-cased.
    public var headers: HeaderFields
    public var body: ByteBuffer
    /// True when the body was cut at the configured size cap.
    public var bodyTruncated: Bool
    /// Times the request went on the wire: above 1 when the transport sent it again after a
    /// connection closed or the upstream refused it unprocessed.
    public var attempts: Int
    /// Sends among `attempts` that repeated a request the upstream left unprocessed (an engine's
    /// re-sends); the others are the first send and the retry policy's (`retry`).
    public var resends: Int {
        get { countedResends ?? max(0, attempts - 1) }
        set { countedResends = newValue }
    }
    /// Set by the retry policy, which knows which sends were its own; else every send after the
    /// first was an engine's.
    private var countedResends: Optional<Int>

    public init(status: Int, headers: HeaderFields, body: ByteBuffer, bodyTruncated: Bool = false,
                attempts: Int = 1) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyTruncated = bodyTruncated
        self.attempts = attempts
        self.countedResends = nil
    }

    /// First value of a header, by lower-case name.
    public func header(_ name: String) -> String? {
        headers.first(name: name)
    }
}

/// Why an item got no upstream response. Each kind maps to the status Sheaf reports.
public struct UpstreamError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, which decides the status Sheaf reports.
    public enum Kind: Sendable, Equatable {
        /// Could not connect, or the connection broke: reported as 502.
        case unreachable
        /// The upstream reset the stream or spoke broken HTTP: reported as 502.
        case protocolError
        /// The item's deadline passed: reported as 504.
        case timeout
        /// Sheaf cancelled the call (client gone, batch stopped).
        case cancelled
        /// The transport was shut down before the call could finish: reported as 503.
        case shuttingDown
        /// The request's head is larger than the upstream accepts: not sent, reported as 431.
        case requestHeadTooLarge
        /// The upstream does not speak the protocol tried (an HTTP/1.x answer to the h2c preface,
        /// or a close without any answer): nothing was sent, reported as 502 (`protocol: auto`
        /// sends the item again over HTTP/1.1).
        case protocolMismatch
        /// Sheaf did not send it: the upstream's circuit is open, or its `max_queued` is full.
        /// Reported as 503.
        case overloaded
    }
    /// What happened on the wire, for retry policies (`retry.on`): finer than `kind`.
    public enum Cause: String, Sendable, Equatable {
        /// No connection could be made (or it failed before HTTP could start): nothing was sent.
        case connectFailure = "connect-failure"
        /// The stream was reset, or the connection broke, after the request may have arrived.
        case reset
        /// The upstream refused the stream unprocessed (RFC 9113 §8.7) every time it was sent.
        case refusedStream = "refused-stream"
        case other
    }
    public var kind: Kind
    public var message: String
    /// Times the request went on the wire before it failed (0 when it never left).
    public var attempts: Int
    public var cause: Cause
    /// As `UpstreamResponse.resends`: the sends that repeated a request left unprocessed.
    public var resends: Int {
        get { countedResends ?? max(0, attempts - 1) }
        set { countedResends = newValue }
    }
    private var countedResends: Optional<Int>

    public init(_ kind: Kind, _ message: String, attempts: Int = 1, cause: Cause = .other) {
        self.kind = kind
        self.message = message
        self.attempts = attempts
        self.cause = cause
        self.countedResends = nil
    }

    public var description: String { message }

    /// What every item still open when a transport shuts down says, whichever engine had it.
    public static func shutDown(attempts: Int = 1) -> UpstreamError {
        UpstreamError(.shuttingDown, "Sheaf shut down before the item finished", attempts: attempts)
    }

    /// The HTTP status Sheaf reports for this failure.
    public var status: Int {
        switch kind {
        case .unreachable, .protocolError, .protocolMismatch: return 502
        case .timeout: return 504
        case .cancelled: return 499
        case .shuttingDown, .overloaded: return 503
        case .requestHeadTooLarge: return 431
        }
    }
}

public typealias UpstreamResult = Result<UpstreamResponse, UpstreamError>

extension UpstreamConfiguration {
    /// The 431 both engines give an item whose head is over `maxRequestHeaderBytes` (or a lower
    /// limit the peer announced), before anything is sent; nil when it fits.
    public func headTooLarge(_ request: UpstreamRequest, peerLimit: Int? = nil) -> UpstreamError? {
        headTooLarge(size: headSize(request), peerLimit: peerLimit)
    }

    /// `request`'s head as `headTooLarge` counts it.
    public func headSize(_ request: UpstreamRequest) -> Int {
        request.headerListSize(authorityByteCount: endpoint.authorityByteCount, scheme: endpoint.scheme)
    }

    /// The 504 of an item whose timeout passed. `answerBegun`: its answer's head had come, and
    /// the item waited for the body (saying "did not answer" then sent operators the wrong way).
    public func timeoutError(answerBegun: Bool = false, waiting: String = "") -> UpstreamError {
        let what = answerBegun ? "began its answer but did not finish it" : "did not answer"
        return UpstreamError(.timeout, "upstream \(name) \(what) within \(timeout.configText)\(waiting)")
    }

    /// Why an answer whose head grew past `maxResponseHeaderBytes` is refused (either engine).
    public var responseHeadTooLarge: String {
        "a head over max_response_header_bytes, \(maxResponseHeaderBytes) bytes by the RFC 9113 §6.5.2 count"
    }

    /// `headTooLarge` for a head of `size` bytes, counted before (`headSize`).
    public func headTooLarge(size: Int, peerLimit: Int? = nil) -> UpstreamError? {
        let limit = min(maxRequestHeaderBytes, peerLimit ?? Int.max)
        guard size > limit else { return nil }
        let whose = limit == maxRequestHeaderBytes
            ? "upstream \(name)'s max_request_header_bytes (\(limit))"
            : "the \(limit) bytes upstream \(name) accepts (its SETTINGS_MAX_HEADER_LIST_SIZE)"
        return UpstreamError(.requestHeadTooLarge,
                             "the request head is \(size) bytes (RFC 9113 §6.5.2 count), more than \(whose); not sent",
                             attempts: 0)
    }
}

/// A call in flight; `cancel()` removes it from the wire (RST_STREAM / curl_multi_remove_handle)
/// and settles it with `.cancelled` unless it already settled.
public protocol UpstreamCall: AnyObject, Sendable {
    func cancel()
    /// Backpressure from a client that reads slowly: stop taking the response body off the
    /// upstream (HTTP/2: no WINDOW_UPDATE for the stream; HTTP/1.1: the transfer is paused), so
    /// the upstream holds the bytes, not Sheaf. The item's timeout still runs.
    func suspendReading()
    /// Take the response body again.
    func resumeReading()
}

extension UpstreamTransport {
    /// `execute` with a closure: `completion` is called exactly once, on a thread of the
    /// transport's choosing; it must not block.
    public func execute(_ request: consuming UpstreamRequest, completion: @escaping @Sendable (UpstreamResult) -> Void) -> UpstreamCall {
        execute(request, for: ClosureSink(completion), tag: 0)
    }

    /// Engines with nothing to report (test doubles) report nothing.
    public var gauges: [UpstreamGauges] { [] }

    /// One call at a time; engines that can do better override it.
    public func cancel(_ calls: [UpstreamCall]) {
        for call in calls { call.cancel() }
    }
}

extension UpstreamCall {
    /// A call that has nothing to suspend (a test double, an item already settled) ignores it.
    public func suspendReading() {}
    public func resumeReading() {}
}

/// Where an engine delivers an item's result. The fan-out run is one itself, with the item's
/// index as the tag: a completion closure per item was an allocation and a free (issue 13).
public protocol UpstreamResultSink: AnyObject, Sendable {
    /// Called exactly once per call, on a thread of the transport's choosing; must not block.
    func deliver(_ result: UpstreamResult, tag: Int)
}

/// A closure as a sink, for the callers that are not per item (wrapping transports, tests).
public final class ClosureSink: UpstreamResultSink {
    private let body: @Sendable (UpstreamResult) -> Void

    public init(_ body: @escaping @Sendable (UpstreamResult) -> Void) { self.body = body }

    public func deliver(_ result: UpstreamResult, tag: Int) { body(result) }
}

/// The one interface the fan-out engine sees. Two engines stand behind it: HTTP/2 on
/// libnghttp2 (`HTTP2Transport`) and HTTP/1.1 on libcurl (`CurlTransport`).
public protocol UpstreamTransport: AnyObject, Sendable {
    var configuration: UpstreamConfiguration { get }
    /// Sends `request`; its result goes to `sink` with `tag`, exactly once. `request` is consumed:
    /// an engine keeps it, and a borrowed one was copied into the engine's exchange (a retain and
    /// release of each of its strings and arrays per item, issue 13).
    func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall
    /// Fails queued calls and every call still running (503), closes connections, stops
    /// threads; returns when every call has settled.
    func shutdown() async
    /// Cancels many calls of this transport at once (a batch whose client went away), without
    /// holding an event loop for all of them in one go.
    func cancel(_ calls: [UpstreamCall])
    /// What the engine(s) hold now: connections, streams in use, items queued.
    var gauges: [UpstreamGauges] { get }
}
