/// Why a bulk request is answered without fanning out. Rendered as `application/problem+json`
/// (RFC 9457) with the status, and a `detail` that names the item and field when there is one.
public struct BatchError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    /// The offending field, e.g. `requests[3].method` or `/ids/2`.
    public var field: String?
    public var message: String

    public init(status: Int, field: String? = nil, _ message: String) {
        self.status = status
        self.field = field
        self.message = message
    }

    public static func badRequest(field: String? = nil, _ message: String) -> BatchError {
        BatchError(status: 400, field: field, message)
    }

    /// The 413 for a batch with more items than its route's `max_items`; `field` names the item
    /// array. Said without a count: decoders stop reading at the first item too many.
    public static func tooManyItems(field: String, maxItems: Int) -> BatchError {
        BatchError(status: 413, field: field, "more items than this route's max_items (\(maxItems))")
    }

    public var description: String {
        guard let field else { return message }
        return "\(field): \(message)"
    }
}
