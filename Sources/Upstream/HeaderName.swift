#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
/// Upstream response header names as Swift strings, without allocating for the common ones:
/// every upstream response repeats the same handful of names.
enum HeaderName {
    /// `bytes` must already be lower-case. A common name comes back as a literal (no allocation,
    /// no reference counting); picked by length first, so most names take one compare.
    static func intern(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        guard let start = bytes.baseAddress else { return "" }
        @inline(__always) func equal(_ name: StaticString) -> Bool { memcmp(name.utf8Start, start, bytes.count) == 0 }
        switch bytes.count {
        case 4:
            if equal("date") { return "date" }
            if equal("etag") { return "etag" }
            if equal("vary") { return "vary" }
        case 6:
            if equal("server") { return "server" }
        case 7:
            if equal("expires") { return "expires" }
        case 8:
            if equal("location") { return "location" }
        case 10:
            if equal("set-cookie") { return "set-cookie" }
            if equal("connection") { return "connection" }
            if equal("keep-alive") { return "keep-alive" }
        case 11:
            if equal("retry-after") { return "retry-after" }
        case 12:
            if equal("content-type") { return "content-type" }
            if equal("x-request-id") { return "x-request-id" }
        case 13:
            if equal("last-modified") { return "last-modified" }
            if equal("cache-control") { return "cache-control" }
            if equal("accept-ranges") { return "accept-ranges" }
        case 14:
            if equal("content-length") { return "content-length" }
        case 16:
            if equal("content-encoding") { return "content-encoding" }
        case 17:
            if equal("transfer-encoding") { return "transfer-encoding" }
        default:
            break
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The last long value seen for each response header name, per HTTP/2 connection (per curl
/// thread on HTTP/1.1): one upstream answers every item with the same `content-type`, and the
/// same `date` within a second, so the string built once is reused instead of allocated and
/// copied per item (issue 13).
/// Values of up to 15 bytes are Swift small strings, which allocate nothing: they are not kept.
struct RecentHeaderValues {
    private var recent: [(name: String, value: String)] = []
    /// Enough for the long values a response repeats; other names are built each time.
    private static let capacity = 8

    mutating func value(for name: String, _ bytes: UnsafeBufferPointer<UInt8>) -> String {
        guard bytes.count > 15 else { return String(decoding: bytes, as: UTF8.self) }
        // Names come interned (HeaderName), so the compare is of identical strings.
        guard let index = recent.firstIndex(where: { $0.name == name }) else {
            let fresh = String(decoding: bytes, as: UTF8.self)
            if recent.count < Self.capacity { recent.append((name, fresh)) }
            return fresh
        }
        var kept = recent[index].value
        let same = kept.withUTF8 { $0.count == bytes.count && memcmp($0.baseAddress!, bytes.baseAddress!, bytes.count) == 0 }
        if same { return kept }
        let fresh = String(decoding: bytes, as: UTF8.self)
        recent[index].value = fresh
        return fresh
    }
}

/// HTTP syntax both directions share: which header names are tokens, and which belong to one
/// connection only (RFC 9110 §7.6.1), so that they are never forwarded to an upstream nor
/// reported from one.
public enum HTTPSyntax {
    /// Connection-level headers, and those Sheaf sets itself.
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "host", "content-length", "http2-settings",
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
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        guard name.utf8.count == expected.count else { return false }
        func equal(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
            for i in 0..<bytes.count where lowercased(bytes[i]) != expected[i] { return false }
            return true
        }
        if let answer = name.utf8.withContiguousStorageIfAvailable(equal) { return answer }
        return Array(name.utf8).withUnsafeBufferPointer(equal)
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
    public static func isToken(_ text: String) -> Bool { !text.isEmpty && text.utf8.allSatisfy(isTokenByte) }
}
