/// A strict RFC 8259 parser over bytes, with a nesting limit for hostile input. It can stop
/// as soon as one array grows past a limit, which is how a batch with too many items is
/// refused without reading all of it. (Validating alone is `JSONValidator`'s, which builds nothing.)
public struct JSONParser {
    /// Why a document is not JSON, with the byte offset where it went wrong.
    public struct Error: Swift.Error, CustomStringConvertible, Equatable {
        public var offset: Int
        public var message: String
        /// The document is nested past the parser's depth limit (`max_nesting_depth`).
        public var tooDeep = false
        /// For a member name given twice in one object (`uniqueNames`): the JSON Pointer
        /// tokens of the second one, so that the 400 names the field.
        public var duplicate: [String]?
        public var description: String { "\(message) at byte \(offset)" }

        /// A member name given twice; `path`: the tokens of the object holding it.
        static func duplicateName(_ key: String, at offset: Int, in path: [String] = []) -> Error {
            var error = Error(offset: offset, message: "member name \"\(key)\" given twice in one object")
            error.duplicate = path + [key]
            return error
        }

        /// `duplicate` as a JSON Pointer (RFC 6901: `~` and `/` escaped).
        public var duplicatePointer: String? {
            duplicate.map { tokens in
                tokens.map { token in
                    "/" + token.map { $0 == "~" ? "~0" : $0 == "/" ? "~1" : String($0) }.joined()
                }.joined()
            }
        }
    }

    /// Thrown by `parse(_:countingArrayAt:upTo:)` at the first element past the limit.
    public struct TooManyElements: Swift.Error, Equatable {
        public var limit: Int
    }

    public static let maxDepth = 64

    private let bytes: UnsafeBufferPointer<UInt8>
    private var position = 0
    private var depth = 0
    /// The reference tokens (as in a JSON Pointer) of the array to count, and its limit.
    private let counted: (path: [String], limit: Int)?

    /// Nesting past this is an error (`max_nesting_depth`): a deep document costs stack.
    private let depthLimit: Int
    /// A member name given twice in one object is an error. RFC 8259 §4 leaves such an object's
    /// meaning to each reader (first wins here, last there): a request Sheaf acts on must not be
    /// read one way by a filter in front of it and another by Sheaf (RFC 7493 §2.3).
    private let uniqueNames: Bool

    private init(bytes: UnsafeBufferPointer<UInt8>, counted: (path: [String], limit: Int)? = nil,
                 depthLimit: Int = JSONParser.maxDepth, uniqueNames: Bool = false) {
        self.bytes = bytes
        self.counted = counted
        self.depthLimit = min(depthLimit, JSONParser.maxDepth)
        self.uniqueNames = uniqueNames
    }

    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        return try parser.document()
    }

    /// Parses like `parse(_:)`, but throws `TooManyElements` as soon as the array that `path`
    /// (JSON Pointer tokens; empty for the root) names has more than `limit` elements.
    /// `maxDepth`: at most `JSONParser.maxDepth`.
    /// `uniqueNames`: a member name given twice in one object is an error (`Error.duplicate`).
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>, countingArrayAt path: [String], upTo limit: Int,
                             maxDepth: Int = JSONParser.maxDepth, uniqueNames: Bool = false) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes, counted: (path, limit), depthLimit: maxDepth, uniqueNames: uniqueNames)
        return try parser.document()
    }

    /// Parses like `parse(_:)`, with nesting limited to `maxDepth` (at most `JSONParser.maxDepth`).
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int, uniqueNames: Bool = false) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes, depthLimit: maxDepth, uniqueNames: uniqueNames)
        return try parser.document()
    }

    public static func parse<C: Collection>(_ bytes: C) throws -> JSONValue where C.Element == UInt8 {
        let array = Array(bytes)
        return try array.withUnsafeBufferPointer { try parse($0) }
    }

    public static func parse(_ text: String) throws -> JSONValue {
        try parse(Array(text.utf8))
    }

    /// True when the bytes are exactly one JSON value (surrounding white space allowed).
    public static func isValid(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        JSONValidator.isValid(bytes)
    }

    private mutating func document() throws -> JSONValue {
        skipWhitespace()
        let value = try parseValue(onPath: counted == nil ? nil : 0)
        skipWhitespace()
        guard position == bytes.count else { throw fail("unexpected data after the JSON value") }
        return value
    }

    private func fail(_ message: String) -> Error {
        Error(offset: position, message: message)
    }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    /// `onPath` is how many tokens of the counted array's path lead to this value, nil when the
    /// value is not on that path.
    private mutating func parseValue(onPath: Int? = nil) throws -> JSONValue {
        guard position < bytes.count else { throw fail("unexpected end of JSON") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject(onPath: onPath)
        case UInt8(ascii: "["): return try parseArray(onPath: onPath)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected character '\(Character(Unicode.Scalar(bytes[position])))'")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard position + count <= bytes.count else { throw fail("unexpected end of JSON") }
        for i in 0..<count where bytes[position + i] != word.utf8Start[i] {
            throw fail("invalid literal")
        }
        position += count
    }

    private mutating func enter() throws {
        depth += 1
        if depth > depthLimit {
            var error = fail("JSON nested deeper than \(depthLimit) levels")
            error.tooDeep = true
            throw error
        }
    }

    /// The path token at `onPath`, when the path goes deeper than this value.
    private func nextToken(_ onPath: Int?) -> String? {
        guard let onPath, let counted, onPath < counted.path.count else { return nil }
        return counted.path[onPath]
    }

    private mutating func parseObject(onPath: Int?) throws -> JSONValue {
        var token = nextToken(onPath)
        try enter()
        position += 1
        var members: [(key: String, value: JSONValue)] = []
        /// The names so far, once an object is large enough that scanning `members` would cost
        /// quadratic time (a hostile body).
        var names: Set<String>?
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count else { throw fail("unexpected end of JSON") }
            guard bytes[position] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
            let nameStart = position
            let key = try parseString()
            if uniqueNames {
                if names == nil, members.count >= 16 { names = Set(members.map(\.key)) }
                let repeated: Bool
                if names != nil { repeated = !names!.insert(key).inserted } else { repeated = members.contains { $0.key == key } }
                if repeated { throw Error.duplicateName(key, at: nameStart) }
            }
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            position += 1
            skipWhitespace()
            // Like JSONPointer.resolve, follow the first member with the name only.
            let follows = key == token
            if follows { token = nil }
            let value: JSONValue
            do {
                value = try parseValue(onPath: follows ? onPath.map { $0 + 1 } : nil)
            } catch var error as Error where error.duplicate != nil {
                error.duplicate!.insert(key, at: 0)
                throw error
            }
            members.append((key, value))
            skipWhitespace()
            guard position < bytes.count else { throw fail("unexpected end of JSON") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "}") { position += 1; break }
            throw fail("expected ',' or '}'")
        }
        depth -= 1
        return .object(members)
    }

    private mutating func parseArray(onPath: Int?) throws -> JSONValue {
        let token = nextToken(onPath)
        let limit = onPath != nil && token == nil ? counted?.limit : nil
        try enter()
        position += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return .array(elements)
        }
        var count = 0
        while true {
            skipWhitespace()
            let value: JSONValue
            do {
                value = try parseValue(onPath: token != nil && token == String(count) ? onPath.map { $0 + 1 } : nil)
            } catch var error as Error where error.duplicate != nil {
                error.duplicate!.insert(String(count), at: 0)
                throw error
            }
            count += 1
            if let limit, count > limit { throw TooManyElements(limit: limit) }
            elements.append(value)
            skipWhitespace()
            guard position < bytes.count else { throw fail("unexpected end of JSON") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "]") { position += 1; break }
            throw fail("expected ',' or ']'")
        }
        depth -= 1
        return .array(elements)
    }

    private mutating func parseNumber() throws -> JSONValue {
        let start = position
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        // Each refusal says what RFC 8259 §6 wants there: "invalid number", or "unexpected data"
        // after a leading zero, left a client guessing.
        guard position < bytes.count, isDigit(bytes[position]) else { throw fail("a digit must follow '-' in a number") }
        if bytes[position] == UInt8(ascii: "0") {
            position += 1
            if position < bytes.count && isDigit(bytes[position]) { throw fail("a number has a leading zero") }
        } else {
            while position < bytes.count && isDigit(bytes[position]) { position += 1 }
        }
        if position < bytes.count && bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard position < bytes.count, isDigit(bytes[position]) else { throw fail("a digit must follow '.' in a number") }
            while position < bytes.count && isDigit(bytes[position]) { position += 1 }
        }
        if position < bytes.count && (bytes[position] | 0x20) == UInt8(ascii: "e") {
            position += 1
            if position < bytes.count && (bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-")) { position += 1 }
            guard position < bytes.count, isDigit(bytes[position]) else { throw fail("a digit must follow the exponent in a number") }
            while position < bytes.count && isDigit(bytes[position]) { position += 1 }
        }
        return .number(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self))
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    private mutating func parseString() throws -> String {
        position += 1
        let start = position
        var plain = true
        // Fast path: no escapes, valid UTF-8 checked by String(validating:).
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") { plain = false; break }
            if byte < 0x20 { throw fail("control character in string") }
            position += 1
        }
        guard position < bytes.count else { throw fail("unterminated string") }
        if plain {
            let slice = UnsafeBufferPointer(rebasing: bytes[start..<position])
            position += 1
            guard let text = String(validating: slice, as: UTF8.self) else { throw fail("invalid UTF-8 in string") }
            return text
        }
        var out: [UInt8] = Array(UnsafeBufferPointer(rebasing: bytes[start..<position]))
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                position += 1
                guard let text = String(validating: out, as: UTF8.self) else { throw fail("invalid UTF-8 in string") }
                return text
            }
            if byte < 0x20 { throw fail("control character in string") }
            if byte != UInt8(ascii: "\\") {
                out.append(byte)
                position += 1
                continue
            }
            position += 1
            guard position < bytes.count else { throw fail("unterminated string") }
            let escape = bytes[position]
            position += 1
            switch escape {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate in string")
                    }
                    position += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate in string") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(scalar) {
                    throw fail("unpaired surrogate in string")
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(unicode)).utf8))
            default:
                throw fail("invalid escape in string")
            }
        }
        throw fail("unterminated string")
    }

    /// UTF-8 well-formedness (RFC 3629) without building a String.
    public static func isValidUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b < 0x80 { i += 1; continue }
            let length: Int
            var minimum: UInt32
            var scalar: UInt32
            switch b {
            case 0xC2...0xDF: length = 2; minimum = 0x80; scalar = UInt32(b & 0x1F)
            case 0xE0...0xEF: length = 3; minimum = 0x800; scalar = UInt32(b & 0x0F)
            case 0xF0...0xF4: length = 4; minimum = 0x10000; scalar = UInt32(b & 0x07)
            default: return false
            }
            guard i + length <= n else { return false }
            for k in 1..<length {
                let c = bytes[i + k]
                guard c & 0xC0 == 0x80 else { return false }
                scalar = scalar << 6 | UInt32(c & 0x3F)
            }
            if scalar < minimum || scalar > 0x10FFFF || (0xD800...0xDFFF).contains(scalar) { return false }
            i += length
        }
        return true
    }

    private mutating func hex4() throws -> UInt32 {
        guard let value = JSONValidator.hex4(bytes, at: position) else { throw fail("invalid \\u escape") }
        position += 4
        return value
    }
}
