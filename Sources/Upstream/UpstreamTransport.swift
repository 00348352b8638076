import NIOCore

/// One single-item call to an upstream, as the fan-out engine hands it over.
public struct UpstreamRequest: Sendable {
    public var method: String
    /// Path and query on the upstream, base path already applied, already validated.
    public var path: String
    /// End-to-end request headers; hop-by-hop headers are already removed.
    public var headers: [(name: String, value: String)]
    public var body: ByteBuffer?

    public init(method: String, path: String, headers: [(name: String, value: String)] = [], body: ByteBuffer? = nil) {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
    }

    /// RFC 9110 §9.2.2: safe to send again when the upstream may not have seen it.
    public var isIdempotent: Bool {
        switch method {
        case "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PROPFIND": return true
        default: return false
        }
    }
}

/// What the upstream answered for one item.
public struct UpstreamResponse: Sendable {
    public var status: Int
    /// Response headers in arrival order, names lower-cased.
    public var headers: [(name: String, value: String)]
    public var body: ByteBuffer
    /// True when the body was cut at the configured size cap.
    public var bodyTruncated: Bool

    public init(status: Int, headers: [(name: String, value: String)], body: ByteBuffer, bodyTruncated: Bool = false) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyTruncated = bodyTruncated
    }

    /// First value of a header, by lower-case name.
    public func header(_ name: String) -> String? {
        headers.first(where: { $0.name == name })?.value
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
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// The HTTP status Sheaf reports for this failure.
    public var status: Int {
        switch kind {
        case .unreachable, .protocolError: return 502
        case .timeout: return 504
        case .cancelled: return 499
        case .shuttingDown: return 503
        }
    }
}

public typealias UpstreamResult = Result<UpstreamResponse, UpstreamError>

/// A call in flight; `cancel()` removes it from the wire (RST_STREAM / curl_multi_remove_handle)
/// and settles it with `.cancelled` unless it already settled.
public protocol UpstreamCall: AnyObject, Sendable {
    func cancel()
}

/// The one interface the fan-out engine sees. Two engines stand behind it: HTTP/2 on
/// libnghttp2 (`HTTP2Transport`) and HTTP/1.1 on libcurl (`CurlTransport`).
///
/// `completion` is called exactly once, on a thread of the transport's choosing; it must not block.
public protocol UpstreamTransport: AnyObject, Sendable {
    var configuration: UpstreamConfiguration { get }
    func execute(_ request: UpstreamRequest, completion: @escaping @Sendable (UpstreamResult) -> Void) -> UpstreamCall
    /// Fails queued calls, closes connections, and stops threads.
    func shutdown()
}
