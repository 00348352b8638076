import TextBytes

/// Turns the path a client wrote for an item into the path sent upstream, or says why not.
/// Items address paths on their route's upstream only: absolute URLs, `//host`, backslashes,
/// encoded slashes and backslashes in the path, encoded dot segments and dot segments that climb
/// above the upstream's base path are refused.
public enum ItemPath {
    /// The normalized path (what the 207 reports as `href`) and the path sent upstream.
    public struct Resolved: Sendable, Equatable {
        public var href: String
        public var upstreamPath: String
    }

    /// Why an item's url is refused; reported as the item's 400 reason.
    public struct Rejection: Error, Sendable, Equatable, CustomStringConvertible, ExpressibleByStringInterpolation {
        public var description: String
        public init(stringLiteral value: String) { description = value }
        public init(stringInterpolation: DefaultStringInterpolation) { description = String(stringInterpolation: stringInterpolation) }
    }

    public static func resolve(_ raw: String, basePath: String) -> Result<Resolved, Rejection> {
        guard !raw.isEmpty else { return .failure("url is empty") }
        let bytes = Array(raw.utf8)
        if bytes[0] != UInt8(ascii: "/") {
            if raw.contains("://") || raw.lowercased().hasPrefix("http:") || raw.lowercased().hasPrefix("https:") {
                return .failure("url \"\(raw)\" is absolute; items address paths on the route's upstream only")
            }
            return .failure("url \"\(raw)\" must start with '/'")
        }
        if bytes.count > 1 && bytes[1] == UInt8(ascii: "/") {
            return .failure("url \"\(raw)\" starts with '//' (a network-path reference to another host)")
        }
        var encoded: [UInt8] = []
        encoded.reserveCapacity(bytes.count)
        var inQuery = false
        var i = 0
        while i < bytes.count {
            let byte = bytes[i]
            switch byte {
            case 0x00...0x20, 0x7F:
                return .failure("url contains a space or control character at byte \(i)")
            case UInt8(ascii: "\\"):
                return .failure("url contains a backslash")
            case UInt8(ascii: "#"):
                return .failure("url contains a fragment ('#'), which is never sent to a server")
            case UInt8(ascii: "%"):
                guard i + 2 < bytes.count, isHex(bytes[i + 1]), isHex(bytes[i + 2]) else {
                    return .failure("url has a '%' not followed by two hex digits at byte \(i)")
                }
                // Upstreams such as nginx decode %2F (some also %5C) before resolving dot
                // segments, so `..%2F..%2F` would climb past the base path this check guards.
                if !inQuery, let separator = encodedSeparator(bytes[i + 1], bytes[i + 2]) {
                    let sequence = String(decoding: bytes[i...i + 2], as: UTF8.self)
                    return .failure("url contains an encoded \(separator) (\"\(sequence)\"), which upstreams may decode into a path separator")
                }
                encoded.append(contentsOf: bytes[i...i + 2])
                i += 3
                continue
            case UInt8(ascii: "?"):
                inQuery = true
                encoded.append(byte)
            case 0x80...0xFF:
                PercentEncoding.append(byte, to: &encoded)
            case UInt8(ascii: "\""), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "^"),
                 UInt8(ascii: "`"), UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"):
                PercentEncoding.append(byte, to: &encoded)
            default:
                encoded.append(byte)
            }
            i += 1
        }
        let text = String(decoding: encoded, as: UTF8.self)
        let path: Substring
        let query: Substring?
        if let mark = text.firstIndex(of: "?") {
            path = text[..<mark]
            query = text[text.index(after: mark)...]
        } else {
            path = text[...]
            query = nil
        }
        var output: [Substring] = []
        let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        for (index, segment) in segments.enumerated() {
            let isLast = index == segments.count - 1
            let lowered = segment.lowercased()
            if lowered.contains("%2e") && lowered.replacingOccurrences(of: "%2e", with: ".").allSatisfy({ $0 == "." })
                && (lowered.count <= 6) {
                return .failure("url contains an encoded dot segment (\"\(segment)\")")
            }
            if segment == "." {
                if isLast { output.append("") }
                continue
            }
            if segment == ".." {
                guard !output.isEmpty else {
                    return .failure("url \"\(raw)\" climbs out of the upstream's base path with '..'")
                }
                output.removeLast()
                if isLast { output.append("") }
                continue
            }
            output.append(segment)
        }
        var href = "/" + output.joined(separator: "/")
        // Dot segments in front of an empty one (`/.//host/x`) would leave `//host/x`.
        if href.hasPrefix("//") {
            return .failure("url \"\(raw)\" resolves to a path starting with '//' (a network-path reference to another host)")
        }
        if let query { href += "?" + query }
        return .success(Resolved(href: href, upstreamPath: basePath.isEmpty ? href : basePath + href))
    }

    /// An href for an item whose url was refused: the url as written when it is an absolute
    /// path (unsafe bytes percent-encoded), otherwise the whole url encoded under `/`, so that
    /// every href in a 207 keeps the absolute-path form.
    public static func reportableHref(_ raw: String) -> String {
        guard raw.hasPrefix("/"), !raw.hasPrefix("//") else { return "/" + PercentEncoding.encodeSegment(raw) }
        var out: [UInt8] = []
        for byte in raw.utf8 {
            switch byte {
            case 0x00...0x20, 0x7F...0xFF, UInt8(ascii: "\""), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "\\"),
                 UInt8(ascii: "^"), UInt8(ascii: "`"), UInt8(ascii: "{"), UInt8(ascii: "|"), UInt8(ascii: "}"), UInt8(ascii: "#"):
                PercentEncoding.append(byte, to: &out)
            default:
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `path` (up to its query) has a `.` or `..` segment once `%2E`, `%2F` and `%5C` are
    /// decoded and `\` is read as `/`, as upstreams such as nginx read it before resolving dot
    /// segments. Values encoded as one segment are safe alone, but not next to literal dots
    /// (`..` + `%2Fsecret`), so expanded templates and references are checked whole.
    static func hasDecodedDotSegment(_ path: String) -> Bool {
        // A dot segment needs a "." or a "%2E"; most paths have neither (checked per item, issue 13).
        // A plain loop over the contiguous bytes: iterating the UTF-8 view cost ~35 instructions a byte.
        let mayHaveOne = path.withUTF8Bytes { bytes -> Bool in
            for byte in bytes {
                if byte == UInt8(ascii: "?") { return false }
                if byte == UInt8(ascii: ".") || byte == UInt8(ascii: "%") { return true }
            }
            return false
        }
        guard mayHaveOne else { return false }
        let bytes = Array(path.utf8.prefix { $0 != UInt8(ascii: "?") })
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count {
                if bytes[i + 1] == UInt8(ascii: "2"), bytes[i + 2] | 0x20 == UInt8(ascii: "e") {
                    decoded.append(UInt8(ascii: "."))
                    i += 3
                    continue
                }
                if encodedSeparator(bytes[i + 1], bytes[i + 2]) != nil {
                    decoded.append(UInt8(ascii: "/"))
                    i += 3
                    continue
                }
            }
            decoded.append(bytes[i] == UInt8(ascii: "\\") ? UInt8(ascii: "/") : bytes[i])
            i += 1
        }
        return decoded.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .contains { $0.elementsEqual([0x2E]) || $0.elementsEqual([0x2E, 0x2E]) }
    }

    /// `slash` for `%2F`, `backslash` for `%5C` (either case), nil for any other escape.
    private static func encodedSeparator(_ high: UInt8, _ low: UInt8) -> String? {
        switch (high, low | 0x20) {
        case (UInt8(ascii: "2"), UInt8(ascii: "f")): return "slash"
        case (UInt8(ascii: "5"), UInt8(ascii: "c")): return "backslash"
        default: return nil
        }
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x46).contains(byte) || (0x61...0x66).contains(byte)
    }
}

/// RFC 3986 percent-encoding.
public enum PercentEncoding {
    private static let hex: [UInt8] = Array("0123456789ABCDEF".utf8)

    static func append(_ byte: UInt8, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "%"))
        out.append(hex[Int(byte >> 4)])
        out.append(hex[Int(byte & 0x0F)])
    }

    /// Encodes everything but RFC 3986 unreserved characters: safe as one path segment or
    /// one query value (`/` and `?` included are encoded).
    /// RFC 3986 unreserved: letters, digits, `-`, `.`, `_`, `~`, kept as they are in a segment.
    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    public static func encodeSegment(_ text: String) -> String {
        // Ids and numbers need nothing encoded: the same string, nothing allocated (issue 13).
        if text.withUTF8Bytes({ $0.allSatisfy(isUnreserved) }) { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            if isUnreserved(byte) { out.append(byte) } else { append(byte, to: &out) }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
