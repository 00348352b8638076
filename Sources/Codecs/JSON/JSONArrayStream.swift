/// Reads one JSON document as it arrives, piece by piece, and hands over each element of the
/// array at `path` (JSON Pointer tokens; empty for the root) as soon as the element is complete,
/// so a huge array is never held whole. The rest of the document is checked as it passes and
/// dropped. Elements are parsed by `JSONParser`; the document around them by a small pushdown
/// automaton that keeps one frame per open container.
public struct JSONArrayStream {
    public enum Failure: Error, Equatable {
        /// Not JSON; `offset` counts bytes from the start of the document.
        case syntax(JSONParser.Error)
        /// The array has more than `limit` elements (the rest is not read).
        case tooManyElements(limit: Int)
        /// The document ended without a value at `path`.
        case notFound
        /// The value at `path` is not an array.
        case notAnArray(typeName: String)
    }

    private enum Expect {
        case value, valueOrEnd, key, keyOrEnd, colon, commaOrEnd, done
    }

    private struct Frame {
        var isObject: Bool
        /// This container lies on `path` (its members may be, or lead to, the array).
        var onPath: Bool
        var isTarget: Bool
        var key: String?
        var count = 0
        /// An object on `path`: its member names so far. A name given twice there would make
        /// which array is read a matter of reader (RFC 8259 §4): refused, as `JSONParser` does
        /// with `uniqueNames`.
        var names: Set<String>?
    }

    private enum Token {
        case none
        /// A string in the document around the array (`isKey`: an object's member name).
        case string(isKey: Bool, escaped: Bool)
        /// A number or literal, read up to the next delimiter.
        case scalar
        /// An element of the array, with its nesting and string state.
        case element(depth: Int, inString: Bool, escaped: Bool, scalar: Bool)
    }

    public let path: [String]
    public let maxElements: Int
    public let maxDepth: Int
    private var stack: [Frame] = []
    private var expect = Expect.value
    private var token = Token.none
    private var buffer: [UInt8] = []
    private var offset = 0
    private var tokenStart = 0
    private var targetSeen = false
    /// A value on the path ended without leading to the array: as JSON Pointer follows the
    /// first member of a name, a later duplicate does not count.
    private var pathMissed = false
    private var failed: Failure?
    /// Elements handed over so far.
    public private(set) var elements = 0

    public init(path: [String], maxElements: Int = .max, maxDepth: Int = JSONParser.maxDepth) {
        self.path = path
        self.maxElements = maxElements
        self.maxDepth = min(maxDepth, JSONParser.maxDepth)
    }

    /// Reads `bytes`, calling `element` with each element completed in them (and its index).
    /// After a failure the stream is dead: every later call fails the same way.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, element: (Int, JSONValue) -> Void) throws(Failure) {
        if let failed { throw failed }
        do throws(Failure) {
            for byte in bytes {
                try step(byte, element)
                offset += 1
            }
        } catch {
            failed = error
            throw error
        }
    }

    /// The document ended: checks it is complete and held the array.
    public mutating func finish(element: (Int, JSONValue) -> Void) throws(Failure) {
        if let failed { throw failed }
        do throws(Failure) {
            // A number or literal at the very end of the document has no delimiter after it; an
            // element never ends there (`[1,2,12` may have been `[1,2,123]`).
            if case .scalar = token { try endScalar() }
            guard expect == .done, case .none = token else { throw syntax("unexpected end of JSON") }
            guard targetSeen else { throw .notFound }
        } catch {
            failed = error
            throw error
        }
    }

    private func syntax(_ message: String, at position: Int? = nil) -> Failure {
        .syntax(JSONParser.Error(offset: position ?? offset, message: message))
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    private static func isDelimiter(_ byte: UInt8) -> Bool {
        isSpace(byte) || byte == UInt8(ascii: ",") || byte == UInt8(ascii: "]") || byte == UInt8(ascii: "}")
    }

    private mutating func step(_ byte: UInt8, _ element: (Int, JSONValue) -> Void) throws(Failure) {
        switch token {
        case .none:
            break
        case .string(let isKey, let escaped):
            buffer.append(byte)
            if escaped {
                token = .string(isKey: isKey, escaped: false)
            } else if byte == UInt8(ascii: "\\") {
                token = .string(isKey: isKey, escaped: true)
            } else if byte == UInt8(ascii: "\"") {
                token = .none
                let value = try parseBuffer()
                if isKey {
                    guard case .string(let key) = value else { throw syntax("member name is not a string", at: tokenStart) }
                    if stack[stack.count - 1].names != nil, !stack[stack.count - 1].names!.insert(key).inserted {
                        throw .syntax(.duplicateName(key, at: tokenStart, in: Array(path.prefix(stack.count - 1))))
                    }
                    stack[stack.count - 1].key = key
                    expect = .colon
                } else {
                    valueEnded()
                }
            }
            return
        case .scalar:
            guard Self.isDelimiter(byte) else {
                buffer.append(byte)
                return
            }
            try endScalar()
        case .element(var depth, var inString, var escaped, let scalar):
            if scalar {
                guard Self.isDelimiter(byte) else {
                    buffer.append(byte)
                    return
                }
                try endElement(element)
                break  // the delimiter belongs to the array
            }
            buffer.append(byte)
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            } else if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                depth += 1
                // Refused as it opens, not when the element ends: a body of `[` was buffered up
                // to `max_body_bytes`. Counted from the root, as the parser counts.
                if stack.count + depth > maxDepth { throw tooDeep() }
            } else if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                depth -= 1
            }
            if depth == 0 && !inString {
                try endElement(element)
            } else {
                token = .element(depth: depth, inString: inString, escaped: escaped, scalar: false)
            }
            return
        }
        if Self.isSpace(byte) { return }
        switch expect {
        case .done:
            throw syntax("unexpected data after the JSON value")
        case .colon:
            guard byte == UInt8(ascii: ":") else { throw syntax("expected ':' after a member name") }
            expect = .value
        case .key, .keyOrEnd:
            if byte == UInt8(ascii: "}"), expect == .keyOrEnd {
                close()
                return
            }
            guard byte == UInt8(ascii: "\"") else { throw syntax("expected a member name") }
            begin(.string(isKey: true, escaped: false), byte)
        case .commaOrEnd:
            let frame = stack[stack.count - 1]
            if byte == UInt8(ascii: ",") {
                expect = frame.isObject ? .key : .value
            } else if byte == UInt8(ascii: frame.isObject ? "}" : "]") {
                close()
            } else {
                throw syntax(frame.isObject ? "expected ',' or '}'" : "expected ',' or ']'")
            }
        case .value, .valueOrEnd:
            if byte == UInt8(ascii: "]"), expect == .valueOrEnd {
                close()
                return
            }
            try beginValue(byte)
        }
    }

    private mutating func begin(_ next: Token, _ byte: UInt8) {
        token = next
        buffer.removeAll(keepingCapacity: buffer.capacity <= 4096)
        buffer.append(byte)
        tokenStart = offset
    }

    /// Where a value starting now sits relative to `path`: on it (a prefix), at it, or off it.
    private func placement() -> (onPath: Bool, isTarget: Bool) {
        guard !targetSeen, !pathMissed else { return (false, false) }
        if stack.isEmpty { return (true, path.isEmpty) }
        let parent = stack[stack.count - 1]
        guard parent.onPath, !parent.isTarget, stack.count <= path.count else { return (false, false) }
        let name = parent.isObject ? parent.key : String(parent.count)
        guard name == path[stack.count - 1] else { return (false, false) }
        return (true, stack.count == path.count)
    }

    private mutating func beginValue(_ byte: UInt8) throws(Failure) {
        if let parent = stack.last, parent.isTarget {
            guard elements < maxElements else { throw .tooManyElements(limit: maxElements) }
            let opens = byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[")
            begin(.element(depth: opens ? 1 : 0, inString: byte == UInt8(ascii: "\""), escaped: false,
                           scalar: !opens && byte != UInt8(ascii: "\"")), byte)
            return
        }
        let (onPath, isTarget) = placement()
        switch byte {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let isObject = byte == UInt8(ascii: "{")
            if isTarget {
                guard !isObject else { throw .notAnArray(typeName: "object") }
                targetSeen = true
            }
            guard stack.count < maxDepth else { throw tooDeep() }
            stack.append(Frame(isObject: isObject, onPath: onPath, isTarget: isTarget, names: isObject && onPath ? [] : nil))
            expect = isObject ? .keyOrEnd : .valueOrEnd
        case UInt8(ascii: "\""):
            if isTarget { throw .notAnArray(typeName: "string") }
            if onPath { pathMissed = true }  // the path goes on below a string: nothing there
            begin(.string(isKey: false, escaped: false), byte)
        default:
            if isTarget {
                let name: String
                switch byte {
                case UInt8(ascii: "t"), UInt8(ascii: "f"): name = "boolean"
                case UInt8(ascii: "n"): name = "null"
                default: name = "number"
                }
                throw .notAnArray(typeName: name)
            }
            if onPath { pathMissed = true }
            begin(.scalar, byte)
        }
    }

    /// `element`: the buffer holds that element of the array (its member names must be unique).
    private mutating func parseBuffer(maxDepth: Int = 1, element: Int? = nil) throws(Failure) -> JSONValue {
        do {
            return try buffer.withUnsafeBufferPointer { try JSONParser.parse($0, maxDepth: maxDepth, uniqueNames: element != nil) }
        } catch let error as JSONParser.Error {
            var error = error
            error.offset += tokenStart
            if let inside = error.duplicate, let element { error.duplicate = path + [String(element)] + inside }
            throw .syntax(error)
        } catch {
            throw syntax("invalid JSON", at: tokenStart)
        }
    }

    private mutating func endScalar() throws(Failure) {
        token = .none
        _ = try parseBuffer()
        valueEnded()
    }

    /// The failure for a container opened at `offset` past `maxDepth` levels.
    private func tooDeep() -> Failure {
        var error = JSONParser.Error(offset: offset, message: "JSON nested deeper than \(maxDepth) levels")
        error.tooDeep = true
        return .syntax(error)
    }

    private mutating func endElement(_ element: (Int, JSONValue) -> Void) throws(Failure) {
        token = .none
        // The element's own nesting counts from the array's depth.
        let value = try parseBuffer(maxDepth: maxDepth - stack.count, element: elements)
        element(elements, value)
        elements += 1
        valueEnded()
    }

    /// A value ended inside the container on top (or at the root).
    private mutating func valueEnded() {
        guard !stack.isEmpty else {
            expect = .done
            return
        }
        stack[stack.count - 1].count += 1
        expect = .commaOrEnd
    }

    private mutating func close() {
        let frame = stack.removeLast()
        if frame.onPath && !frame.isTarget && !targetSeen { pathMissed = true }
        valueEnded()
    }
}
