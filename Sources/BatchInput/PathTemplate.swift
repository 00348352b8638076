import Codecs
import FanOut
import TextBytes

/// A route's `fan_out.path`, e.g. `/users/{item}` or `/orgs/{org}/users/{id}`: literal text and
/// placeholders. `{item}` is the array element itself; `{name}` is a field of an object element.
/// Substituted values are percent-encoded as one segment, so a value cannot add a path level.
public struct PathTemplate: Sendable, Equatable, CustomStringConvertible {
    /// A piece of a template: text kept as written, or a placeholder filled per element.
    public enum Part: Sendable, Equatable {
        case literal(String)
        case placeholder(String)
    }

    /// Why a template is malformed.
    public struct SyntaxError: Error, CustomStringConvertible {
        public var description: String
    }

    public let parts: [Part]
    public let description: String

    public init(_ text: String) throws {
        description = text
        guard text.hasPrefix("/") else { throw SyntaxError(description: "path template \"\(text)\" must start with '/'") }
        guard !text.hasPrefix("//") else { throw SyntaxError(description: "path template \"\(text)\" must not start with '//'") }
        var parts: [Part] = []
        var literal = ""
        var name: String?
        for c in text {
            if var current = name {
                if c == "}" {
                    guard !current.isEmpty else { throw SyntaxError(description: "path template \"\(text)\" has an empty placeholder {}") }
                    guard Self.isIdentifier(current) else {
                        throw SyntaxError(description: "path template \"\(text)\": placeholder {\(current)} must be a name of letters, digits and '_'")
                    }
                    parts.append(.placeholder(current))
                    name = nil
                } else if c == "{" {
                    throw SyntaxError(description: "path template \"\(text)\" has a '{' inside a placeholder")
                } else {
                    current.append(c)
                    name = current
                }
            } else if c == "{" {
                if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
                name = ""
            } else if c == "}" {
                throw SyntaxError(description: "path template \"\(text)\" has a '}' without a matching '{'")
            } else {
                guard c.isASCII, let ascii = c.asciiValue, ascii > 0x20, ascii != 0x7F, c != "#", c != "\\" else {
                    throw SyntaxError(description: "path template \"\(text)\" contains \"\(c)\"; write it percent-encoded")
                }
                literal.append(c)
            }
        }
        if name != nil { throw SyntaxError(description: "path template \"\(text)\" has a '{' that is never closed") }
        // Expanded paths skip per-item normalization, so the literal text must already be clean.
        let pathPart = text.split(separator: "?", maxSplits: 1).first ?? ""
        for segment in pathPart.split(separator: "/", omittingEmptySubsequences: false).dropFirst() where segment == "." || segment == ".." {
            throw SyntaxError(description: "path template \"\(text)\" contains a dot segment")
        }
        var bytes = Array(text.utf8)[...]
        while let percent = bytes.firstIndex(of: UInt8(ascii: "%")) {
            let rest = bytes[(percent + 1)...]
            guard rest.count >= 2, rest.prefix(2).allSatisfy({ $0 < 128 && Character(Unicode.Scalar($0)).isHexDigit }) else {
                throw SyntaxError(description: "path template \"\(text)\" has a '%' not followed by two hex digits")
            }
            bytes = rest
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        let sample = parts.map { part -> String in
            if case .literal(let text) = part { return text } else { return "x" }
        }.joined()
        guard !ItemPath.hasDecodedDotSegment(sample) else {
            throw SyntaxError(description: "path template \"\(text)\" contains a dot segment once %2E, %2F or %5C are decoded")
        }
        guard parts.contains(where: { if case .placeholder = $0 { return true } else { return false } }) else {
            throw SyntaxError(description: "path template \"\(text)\" has no placeholder such as {item}")
        }
        self.parts = parts
    }

    private static func isIdentifier(_ name: String) -> Bool {
        guard let first = name.first, first.isASCII, first.isLetter || first == "_" else { return false }
        return name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
    }

    /// Fills the template from one element; the error names the element's field that is wrong.
    /// `location` is the JSON Pointer of the element, used in messages: built only for an error
    /// (an interpolated pointer per item cost about 300 instructions, issue 13).
    public func expand(_ element: JSONValue, at location: @autoclosure () -> String) -> Result<String, BatchError> {
        var path = ""
        for part in parts {
            switch part {
            case .literal(let text):
                path += text
            case .placeholder(let name):
                let value: JSONValue
                func field() -> String { name == "item" ? location() : location() + "/" + name }
                if name == "item" {
                    value = element
                } else {
                    guard case .object = element else {
                        return .failure(.badRequest(field: location(), "must be an object with a field \"\(name)\" for {\(name)}, got \(element.typeName)"))
                    }
                    guard let member = element[name] else {
                        return .failure(.badRequest(field: field(), "missing (the path template uses {\(name)})"))
                    }
                    value = member
                }
                guard let text = value.scalarText else {
                    return .failure(.badRequest(field: field(), "must be a string or number for {\(name)}, got \(value.typeName)"))
                }
                switch Self.segment(text) {
                case .success(let segment): path += segment
                case .failure(let problem): return .failure(.badRequest(field: field(), problem.reason))
                }
            }
        }
        guard !ItemPath.hasDecodedDotSegment(path) else {
            return .failure(.badRequest(field: location(), "makes \"\(path)\", which holds a dot segment once an upstream decodes %2F"))
        }
        return .success(path)
    }

    /// A value as one encoded path segment, or why it cannot be one: empty, `.`, `..`, or with a
    /// `.` or `..` piece between slashes or backslashes (sent encoded, but an upstream that
    /// decodes %2F or %5C, as nginx does, would resolve it). Template values and value
    /// references both go through here.
    static func segment(_ text: String) -> Result<String, DependencyFailure> {
        // Ids and numbers, nearly every value: unreserved bytes but no dot, so nothing to encode
        // and no dot segment to check (issue 13).
        // Over the bytes in place: iterating the UTF-8 view cost ~35 instructions a byte (issue 13).
        if !text.isEmpty, text.withUTF8Bytes({ $0.allSatisfy { $0 != UInt8(ascii: ".") && PercentEncoding.isUnreserved($0) } }) {
            return .success(text)
        }
        guard !text.isEmpty, text != ".", text != ".." else {
            return .failure(DependencyFailure("\"\(text)\" is not a usable path segment"))
        }
        let pieces = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "/" || $0 == "\\" })
        guard !pieces.contains(where: { $0 == "." || $0 == ".." }) else {
            return .failure(DependencyFailure("\"\(text)\" contains a dot segment between slashes, which upstreams that decode %2F would resolve"))
        }
        return .success(PercentEncoding.encodeSegment(text))
    }
}
