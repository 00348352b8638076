import Foundation

/// Content-Type and Accept handling for bulk requests and 207 responses.
public enum MediaType {
    /// The type/subtype of a Content-Type value, lower-cased, parameters dropped. Byte-level:
    /// it runs once per upstream response.
    public static func essence(_ value: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for byte in value.utf8 {
            if byte == UInt8(ascii: ";") { break }
            if byte == 0x20 || byte == 0x09 { continue }
            bytes.append(byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    public static func isJSON(_ value: String) -> Bool {
        let e = essence(value)
        return e == "application/json" || (e.hasPrefix("application/") && e.hasSuffix("+json"))
    }

    public static func isXML(_ value: String) -> Bool {
        let e = essence(value)
        return e == "application/xml" || e == "text/xml" || (e.hasPrefix("application/") && e.hasSuffix("+xml"))
    }

    /// Chooses the 207's format from an Accept header (RFC 9110 §12.5.1, q-values honoured).
    /// No Accept, or a wildcard that covers it, mirrors the request body's format.
    /// Returns nil when nothing Sheaf writes is acceptable (answer 406).
    public static func negotiate(accept: String?, requestIsXML: Bool) -> ResponseFormat? {
        let mirror: ResponseFormat = requestIsXML ? .xml(mediaType: "application/xml") : .json
        guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else { return mirror }
        var best: (q: Double, order: Int, format: ResponseFormat)?
        for (order, range) in accept.split(separator: ",").enumerated() {
            let pieces = range.split(separator: ";")
            let type = pieces.first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            var q = 1.0
            for parameter in pieces.dropFirst() {
                let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if pair.count == 2, pair[0].lowercased() == "q", let value = Double(pair[1]) { q = value }
            }
            guard q > 0 else { continue }
            let format: ResponseFormat?
            switch type {
            case "application/xml": format = .xml(mediaType: "application/xml")
            case "text/xml": format = .xml(mediaType: "text/xml")
            case "application/json": format = .json
            case "*/*", "application/*": format = mirror
            case "text/*": format = .xml(mediaType: "text/xml")
            default: format = nil
            }
            guard let format else { continue }
            if best == nil || q > best!.q { best = (q, order, format) }
        }
        return best?.format
    }
}
