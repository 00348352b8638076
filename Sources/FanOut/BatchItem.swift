import NIOCore
import Upstream

/// One item of a batch after decoding and planning: either a request ready for the upstream,
/// or a rejection that Sheaf answers itself (400) without sending anything.
public struct BatchItem: Sendable {
    /// The client's id for the item (default: its zero-based index).
    public var id: String
    /// The path the client addressed, normalized and percent-encoded; the 207's `href`.
    public var href: String
    public var request: UpstreamRequest?
    /// Why the item is not sent, when it is not.
    public var rejection: String?

    public init(id: String, href: String, request: UpstreamRequest) {
        self.id = id
        self.href = href
        self.request = request
        self.rejection = nil
    }

    public init(id: String, href: String, rejection: String) {
        self.id = id
        self.href = href
        self.request = nil
        self.rejection = rejection
    }
}

/// The one status every item leaves with: the upstream's own, or one Sheaf assigns and explains.
public struct ItemOutcome: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: ByteBuffer?
    public var bodyTruncated: Bool
    /// Set when Sheaf assigned the status (400, 502, 504, ...): what happened, for a human.
    public var reason: String?
    /// Times the item's request went on the wire; reported when above 1 (a re-send).
    public var attempts: Int

    public init(status: Int, headers: [(name: String, value: String)] = [], body: ByteBuffer? = nil,
                bodyTruncated: Bool = false, reason: String? = nil, attempts: Int = 1) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyTruncated = bodyTruncated
        self.reason = reason
        self.attempts = attempts
    }

    public init(_ result: UpstreamResult) {
        switch result {
        case .success(let response):
            self.init(status: response.status, headers: response.headers, body: response.body,
                      bodyTruncated: response.bodyTruncated, attempts: response.attempts)
        case .failure(let error):
            self.init(status: error.status, reason: error.message, attempts: error.attempts)
        }
    }

    /// 1xx–3xx count as succeeded in summaries and metrics; 4xx and 5xx as failed.
    public var succeeded: Bool { status < 400 }
}
