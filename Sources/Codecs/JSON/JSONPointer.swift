/// An RFC 6901 JSON Pointer such as `/ids` or `/data/0/items`; `""` is the whole document.
public struct JSONPointer: Sendable, Equatable, CustomStringConvertible {
    public let tokens: [String]
    public let description: String

    /// Why a pointer is malformed.
    public struct SyntaxError: Error, CustomStringConvertible {
        public var description: String
    }

    public init(_ text: String) throws {
        description = text
        if text.isEmpty {
            tokens = []
            return
        }
        guard text.hasPrefix("/") else {
            throw SyntaxError(description: "JSON Pointer \"\(text)\" must be empty or start with '/'")
        }
        var tokens: [String] = []
        for raw in text.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            var token = ""
            var iterator = raw.makeIterator()
            while let c = iterator.next() {
                if c == "~" {
                    switch iterator.next() {
                    case "0": token.append("~")
                    case "1": token.append("/")
                    default: throw SyntaxError(description: "JSON Pointer \"\(text)\": '~' must be followed by 0 or 1")
                    }
                } else {
                    token.append(c)
                }
            }
            tokens.append(token)
        }
        self.tokens = tokens
    }

    /// The value the pointer names, or nil when it names nothing.
    public func resolve(in document: JSONValue) -> JSONValue? {
        var current = document
        for token in tokens {
            switch current {
            case .object:
                guard let next = current[token] else { return nil }
                current = next
            case .array(let elements):
                guard let index = Int(token), token == String(index), index >= 0, index < elements.count else { return nil }
                current = elements[index]
            default:
                return nil
            }
        }
        return current
    }
}
