import Codecs
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
        // What nearly every JSON API sends, answered without building the essence (per item, issue 13).
        if value == "application/json" { return true }
        let e = essence(value)
        return e == "application/json" || (e.hasPrefix("application/") && e.hasSuffix("+json"))
    }

    /// `isJSON` for a value's bytes (an upstream's field as it lies in its `HeaderFields`).
    public static func isJSON(bytes value: UnsafeBufferPointer<UInt8>) -> Bool {
        let plain: StaticString = "application/json"
        if value.count == plain.utf8CodeUnitCount, memcmp(value.baseAddress!, plain.utf8Start, value.count) == 0 { return true }
        return isJSON(String(decoding: value, as: UTF8.self))
    }

    public static func isXML(_ value: String) -> Bool {
        let e = essence(value)
        return e == "application/xml" || e == "text/xml" || (e.hasPrefix("application/") && e.hasSuffix("+xml"))
    }

    /// The 207's media types, for the 406 answer's text.
    public static let offered = "application/xml, text/xml, application/json or application/x-ndjson"

    /// Chooses the 207's format from an Accept header (RFC 9110 §12.5.1, q-values honoured).
    /// No Accept, or a wildcard that covers it, mirrors the request body's format. NDJSON is
    /// chosen only when Accept names it: a client that reads any type has not said it reads
    /// one result per line. Returns nil when nothing Sheaf writes is acceptable (answer 406).
    public static func negotiate(accept: String?, requestIsXML: Bool) -> ResponseFormat? {
        guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else {
            return requestIsXML ? .xml(mediaType: "application/xml") : .json
        }
        let ranges = accept.split(separator: ",").enumerated().map { AcceptRange($0.element, order: $0.offset) }
        // The mirror comes first, so that it wins when one wildcard accepts several types equally.
        let json = Offer(type: "application/json", format: .json)
        let xml = Offer(type: "application/xml", format: .xml(mediaType: "application/xml"))
        let offers = (requestIsXML ? [xml, json] : [json, xml])
            + [Offer(type: "text/xml", format: .xml(mediaType: "text/xml")),
               Offer(type: "application/x-ndjson", format: .ndjson, namedOnly: true)]
        var best: (q: Double, order: Int, format: ResponseFormat)?
        for offer in offers {
            // The most specific range that matches a type gives its q-value, so `*/*` does not
            // undo an explicit `application/json;q=0`.
            guard let range = ranges.filter({ $0.matches(offer.type) && (!offer.namedOnly || $0.specificity == 2) })
                                    .max(by: { $0.specificity < $1.specificity }),
                  range.q > 0 else { continue }
            if let current = best, range.q < current.q || (range.q == current.q && range.order >= current.order) { continue }
            best = (range.q, range.order, offer.format)
        }
        return best?.format
    }

    /// A type Sheaf can write; `namedOnly`: wildcards do not reach it.
    private struct Offer {
        var type: String
        var format: ResponseFormat
        var namedOnly = false
    }
}

/// One media range of an Accept header, e.g. `application/*;q=0.5`.
private struct AcceptRange {
    var type: String
    var q = 1.0
    /// Where it stands in the header; the earlier range wins between equal q-values.
    var order: Int

    init(_ text: Substring, order: Int) {
        let pieces = text.split(separator: ";")
        type = pieces.first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        self.order = order
        for parameter in pieces.dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if pair.count == 2, pair[0].lowercased() == "q", let value = Double(pair[1]) { q = value }
        }
    }

    /// `*/*` 0, `type/*` 1, `type/subtype` 2.
    var specificity: Int {
        if type == "*/*" { return 0 }
        return type.hasSuffix("/*") ? 1 : 2
    }

    func matches(_ mediaType: String) -> Bool {
        switch specificity {
        case 0: return true
        case 1: return mediaType.hasPrefix(type.dropLast())
        default: return mediaType == type
        }
    }
}
