/// Why a bulk request is answered without fanning out. Rendered as `application/problem+json`
/// (RFC 9457) with the status, and a `detail` that names the item and field when there is one.
public struct BatchError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    /// The offending field, e.g. `requests[3].method` or `/ids/2`.
    public var field: String?
    public var message: String
    /// The config key of the limit the request passed, when that is why (for metrics).
    public var limit: String?

    public init(status: Int, field: String? = nil, _ message: String, limit: String? = nil) {
        self.status = status
        self.field = field
        self.message = message
        self.limit = limit
    }

    public static func badRequest(field: String? = nil, _ message: String) -> BatchError {
        BatchError(status: 400, field: field, message)
    }

    /// The 413 for a batch with more items than its route's `max_items`; `field` names the item
    /// array. Said without a count: decoders stop reading at the first item too many.
    public static func tooManyItems(field: String, maxItems: Int) -> BatchError {
        BatchError(status: 413, field: field, "more items than this route's max_items (\(maxItems))", limit: "max_items")
    }

    public var description: String {
        guard let field else { return message }
        return "\(field): \(message)"
    }
}

/// Bounds on what one bulk request's body may hold, besides the item count.
public struct InputLimits: Sendable, Equatable {
    /// One item's body (`max_item_body_bytes`): more makes the batch 413, naming the item.
    public var maxItemBodyBytes = Int.max
    /// JSON or XML nesting (`max_nesting_depth`): deeper is a 400.
    public var maxDepth = 64

    public init(maxItemBodyBytes: Int = Int.max, maxDepth: Int = 64) {
        self.maxItemBodyBytes = maxItemBodyBytes
        self.maxDepth = maxDepth
    }
}
