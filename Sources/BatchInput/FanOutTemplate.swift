import Codecs
/// A route's `fan_out` block: which array in the body to fan out over, and the request to
/// make for each element.
public struct FanOutTemplate: Sendable, Equatable {
    public var items: JSONPointer
    public var method: String
    public var path: PathTemplate
    /// Headers sent with every templated request.
    public var headers: [(name: String, value: String)]

    public init(items: JSONPointer, method: String, path: PathTemplate, headers: [(name: String, value: String)] = []) {
        self.items = items
        self.method = method
        self.path = path
        self.headers = headers
    }

    public static func == (lhs: FanOutTemplate, rhs: FanOutTemplate) -> Bool {
        lhs.items == rhs.items && lhs.method == rhs.method && lhs.path == rhs.path
            && lhs.headers.map { "\($0.name):\($0.value)" } == rhs.headers.map { "\($0.name):\($0.value)" }
    }
}
