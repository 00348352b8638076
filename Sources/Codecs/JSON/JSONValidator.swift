/// Whether bytes are exactly one RFC 8259 JSON value (surrounding white space allowed), with
/// nothing built and no recursion: the check every upstream body labelled JSON goes through
/// before a JSON 207 embeds it as is. `JSONParser` validating the same way cost about 28
/// instructions per byte, most of an item's encoding (issue 13). It accepts exactly what
/// `JSONParser` accepts, nesting limit included (a property test and the FuzzJSONParser target
/// hold the two to that).
enum JSONValidator {
    static func isValid(_ bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int = JSONParser.maxDepth) -> Bool {
        var scan = Scan(bytes: bytes)
        return scan.document(maxDepth: min(maxDepth, JSONParser.maxDepth))
    }

    private struct Scan {
        let bytes: UnsafeBufferPointer<UInt8>
        var i = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        mutating func skipWhitespace() {
            while i < bytes.count {
                switch bytes[i] {
                case 0x20, 0x09, 0x0A, 0x0D: i += 1
                default: return
                }
            }
        }

        /// Open containers as a bit stack, innermost in bit 0: 1 for an object, 0 for an array
        /// (the depth limit, at most 64, fits one word).
        mutating func document(maxDepth: Int) -> Bool {
            var stack: UInt64 = 0
            var depth = 0
            while true {
                // A value is expected.
                skipWhitespace()
                guard i < bytes.count else { return false }
                switch bytes[i] {
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    let isObject = bytes[i] == UInt8(ascii: "{")
                    depth += 1
                    guard depth <= maxDepth else { return false }
                    stack = stack << 1 | (isObject ? 1 : 0)
                    i += 1
                    skipWhitespace()
                    if i < bytes.count && bytes[i] == (isObject ? UInt8(ascii: "}") : UInt8(ascii: "]")) {
                        i += 1
                        depth -= 1
                        stack >>= 1
                    } else if isObject {
                        guard memberName() else { return false }
                        continue
                    } else {
                        continue
                    }
                case UInt8(ascii: "\""):
                    guard string() else { return false }
                case UInt8(ascii: "t"):
                    guard literal("true") else { return false }
                case UInt8(ascii: "f"):
                    guard literal("false") else { return false }
                case UInt8(ascii: "n"):
                    guard literal("null") else { return false }
                case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                    guard number() else { return false }
                default:
                    return false
                }
                // A value ended: a separator, the end of its container, or of the document.
                while true {
                    skipWhitespace()
                    if depth == 0 { return i == bytes.count }
                    guard i < bytes.count else { return false }
                    let inObject = stack & 1 == 1
                    let byte = bytes[i]
                    if byte == UInt8(ascii: ",") {
                        i += 1
                        if inObject {
                            skipWhitespace()
                            guard memberName() else { return false }
                        }
                        break
                    }
                    guard byte == (inObject ? UInt8(ascii: "}") : UInt8(ascii: "]")) else { return false }
                    i += 1
                    depth -= 1
                    stack >>= 1
                }
            }
        }

        /// `"name"` and its `:`, at `i`.
        mutating func memberName() -> Bool {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\""), string() else { return false }
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return false }
            i += 1
            return true
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard i + count <= bytes.count else { return false }
            for k in 0..<count where bytes[i + k] != word.utf8Start[k] { return false }
            i += count
            return true
        }

        func isDigit(_ at: Int) -> Bool { at < bytes.count && bytes[at] >= 0x30 && bytes[at] <= 0x39 }

        mutating func number() -> Bool {
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard isDigit(i) else { return false }
            if bytes[i] == UInt8(ascii: "0") {
                i += 1
            } else {
                while isDigit(i) { i += 1 }
            }
            if i < bytes.count && bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard isDigit(i) else { return false }
                while isDigit(i) { i += 1 }
            }
            if i < bytes.count && bytes[i] | 0x20 == UInt8(ascii: "e") {
                i += 1
                if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
                guard isDigit(i) else { return false }
                while isDigit(i) { i += 1 }
            }
            return true
        }

        /// A string at `i` (its opening quote): no control characters, valid escapes (a
        /// `\u` surrogate only as a high-low pair), well-formed UTF-8.
        mutating func string() -> Bool {
            // Plain bytes are skipped a word at a time (`PlainRun`); anything else goes back
            // through `i`.
            var j = i + 1
            while true {
                j = PlainRun.end(in: bytes, from: j, stops: PlainRun.json, stopAtNonASCII: true)
                guard j < bytes.count else { return false }
                let byte = bytes[j]
                i = j
                if byte == UInt8(ascii: "\"") {
                    i += 1
                    return true
                }
                if byte == UInt8(ascii: "\\") {
                    guard escape() else { return false }
                } else if byte >= 0x80 {
                    guard utf8Sequence() else { return false }
                } else {
                    return false  // a control character
                }
                j = i
            }
        }

        /// One escape at `i` (its backslash).
        mutating func escape() -> Bool {
            guard i + 1 < bytes.count else { return false }
            switch bytes[i + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                 UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                i += 2
                return true
            case UInt8(ascii: "u"):
                guard let unit = JSONValidator.hex4(bytes, at: i + 2) else { return false }
                i += 6
                if unit >= 0xDC00 && unit < 0xE000 { return false }
                guard unit >= 0xD800 && unit < 0xDC00 else { return true }
                guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u"),
                      let low = JSONValidator.hex4(bytes, at: i + 2), low >= 0xDC00 && low < 0xE000 else { return false }
                i += 6
                return true
            default:
                return false
            }
        }

        /// One multi-byte UTF-8 sequence at `i` (RFC 3629: no overlong forms, no surrogates,
        /// nothing past U+10FFFF).
        mutating func utf8Sequence() -> Bool {
            let lead = bytes[i]
            let length: Int
            var low: UInt8 = 0x80, high: UInt8 = 0xBF  // the second byte's range
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; high = 0x9F
            case 0xF0: length = 4; low = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; high = 0x8F
            default: return false
            }
            guard i + length <= bytes.count, bytes[i + 1] >= low, bytes[i + 1] <= high else { return false }
            for k in 2..<length where bytes[i + k] & 0xC0 != 0x80 { return false }
            i += length
            return true
        }
    }

    /// The four hex digits of a `\u` escape at `start`, as a UTF-16 code unit (the parser reads them here too).
    static func hex4(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> UInt32? {
        guard start + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for k in start..<(start + 4) {
            let byte = bytes[k]
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x41...0x46: digit = byte - 0x41 + 10
            case 0x61...0x66: digit = byte - 0x61 + 10
            default: return nil
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }
}
