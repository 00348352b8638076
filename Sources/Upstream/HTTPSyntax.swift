import TextBytes

/// HTTP syntax both directions share: which header names are tokens, and which belong to one
/// connection only (RFC 9110 §7.6.1), so that they are never forwarded to an upstream nor
/// reported from one.
public enum HTTPSyntax {
    /// Connection-level headers, and those Sheaf sets or settles itself (`expect`: Sheaf holds an
    /// item's whole body, and a client's expectation is for its own hop, RFC 9110 §10.1.1).
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "host", "content-length", "http2-settings", "expect",
    ]

    /// A byte of a header name in lower case (names are ASCII tokens; other bytes stay as they are).
    @inline(__always)
    static func lowercased(_ byte: UInt8) -> UInt8 {
        byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
    }

    /// Whether header `name`, in any case, is `lowercase`, without building a lower-cased copy.
    /// Over the string's contiguous bytes: zipping its UTF-8 view cost over a thousand
    /// instructions a call, once per item on HTTP/2 and three times per header on HTTP/1.1 (issue 13).
    static func isName(_ name: String, _ lowercase: StaticString) -> Bool {
        guard name.utf8.count == lowercase.utf8CodeUnitCount else { return false }
        if let answer = name.utf8.withContiguousStorageIfAvailable({ isName($0, lowercase) }) { return answer }
        return Array(name.utf8).withUnsafeBufferPointer { isName($0, lowercase) }
    }

    /// `isName` for a name's bytes (an HTTP/1.1 header line's).
    static func isName(_ name: UnsafeBufferPointer<UInt8>, _ lowercase: StaticString) -> Bool {
        guard name.count == lowercase.utf8CodeUnitCount else { return false }
        let expected = lowercase.utf8Start
        for i in 0..<name.count where lowercased(name[i]) != expected[i] { return false }
        return true
    }

    /// Optional white space's bytes (RFC 9110 §5.6.3): space and tab.
    @inline(__always)
    static func isBlank(_ byte: UInt8) -> Bool { byte == 32 || byte == 9 }

    /// Why a response's status code is not HTTP's, or nil when it is three digits in 100–599.
    /// RFC 9110 §15 leaves 600–999 to libraries' own uses; reported in a 207 they would be a
    /// status line no client can read, so both engines fail the item with this reason.
    static func statusOutsideRange(_ digits: UnsafeBufferPointer<UInt8>) -> String? {
        guard digits.count == 3, digits[0] &- 0x30 < 10, digits[1] &- 0x30 < 10, digits[2] &- 0x30 < 10 else {
            return "the status code is not three digits"
        }
        return digits[0] >= 0x31 && digits[0] <= 0x35 ? nil : "status \(String(decoding: digits, as: UTF8.self)) is outside 100–599"
    }

    /// The field names a message's Connection header lists, lower-cased: RFC 9110 §7.6.1 makes
    /// them belong to that hop only, so they are not forwarded.
    public static func connectionOptions<S: Sequence>(_ fields: S) -> Set<String> where S.Element == (name: String, value: String) {
        Set(listElements(fields, named: "connection"))
    }

    /// The elements of every `name` field, a comma-separated list (RFC 9110 §5.6.1), in order,
    /// blanks around each removed, lower-cased, empty ones left out.
    public static func listElements<S: Sequence>(_ fields: S, named name: StaticString) -> [String] where S.Element == (name: String, value: String) {
        var elements: [String] = []
        for field in fields where isName(field.name, name) {
            for element in field.value.utf8.split(separator: UInt8(ascii: ",")) {
                var trimmed = element.drop(while: isBlank)
                while let last = trimmed.last, isBlank(last) { trimmed = trimmed.dropLast() }
                if !trimmed.isEmpty { elements.append(String(Substring(trimmed)).lowercased()) }
            }
        }
        return elements
    }

    /// `name` in any case.
    public static func isHopByHop(_ name: String) -> Bool { hopByHop.contains(name.lowercased()) }

    /// RFC 9110 §5.6.2 tchar.
    public static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// A header name: one or more token characters.
    public static func isToken(_ text: String) -> Bool { !text.isEmpty && text.withUTF8Bytes { $0.allSatisfy(isTokenByte) } }
}
