import Codecs
/// A route's `fan_out` block: which array in the body to fan out over, and the request to
/// make for each element.
public struct FanOutTemplate: Sendable, Equatable {
    public var items: JSONPointer
    public var method: String
    public var path: PathTemplate
    /// Headers sent with every templated request.
    public var headers: [(name: String, value: String)]
    /// A second call per element, over values of the first call's JSON answer (`then`).
    public var then: ChainTemplate?

    public init(items: JSONPointer, method: String, path: PathTemplate, headers: [(name: String, value: String)] = [],
                then: ChainTemplate? = nil) {
        self.items = items
        self.method = method
        self.path = path
        self.headers = headers
        self.then = then
    }

    public static func == (lhs: FanOutTemplate, rhs: FanOutTemplate) -> Bool {
        lhs.items == rhs.items && lhs.method == rhs.method && lhs.path == rhs.path && lhs.then == rhs.then
            && lhs.headers.map { "\($0.name):\($0.value)" } == rhs.headers.map { "\($0.name):\($0.value)" }
    }
}

/// A route's `then`: after an element's call succeeds, one more call whose path takes values
/// from its JSON answer, `{/pointer}` each (RFC 6901), encoded as one segment: for example
/// `GET /users/{id}` then `GET /accounts/{/account_id}`. Nothing is evaluated.
public struct ChainTemplate: Sendable, Equatable {
    public var method: String
    /// As written, e.g. `/accounts/{/account_id}`: the href the second call is reported under.
    public let text: String
    let path: ReferencedText

    /// Throws the reason for a template that does not start with `/` or has a bad pointer.
    public init(method: String, path text: String) throws {
        guard text.hasPrefix("/"), !text.hasPrefix("//") else {
            throw PathTemplate.SyntaxError(description: "then path \"\(text)\" must start with a single '/'")
        }
        // `{/pointer}` is `{id:/pointer}` with the first answer as the only dependency.
        let marked = text.replacingOccurrences(of: "{/", with: "{answer:/").replacingOccurrences(of: "{}", with: "{answer:}")
        do {
            path = try ReferencedText(marked)
        } catch {
            throw PathTemplate.SyntaxError(description: "then path \"\(text)\": \(error.message)")
        }
        // The literal text follows fan_out.path's rules (no dot segments, no bad escapes).
        var checked = ""
        for part in path.parts {
            switch part {
            case .literal(let literal): checked += literal
            case .reference: checked += "{value}"
            }
        }
        do { _ = try PathTemplate(checked) } catch {
            throw PathTemplate.SyntaxError(description: "then path \"\(text)\": \(error)")
        }
        guard !path.references.isEmpty else {
            throw PathTemplate.SyntaxError(description: "then path \"\(text)\" uses no value of the first answer (write {/pointer})")
        }
        self.method = method
        self.text = text
    }

    public static func == (lhs: ChainTemplate, rhs: ChainTemplate) -> Bool {
        lhs.method == rhs.method && lhs.text == rhs.text
    }
}
