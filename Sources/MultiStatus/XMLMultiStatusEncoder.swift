import Codecs
import CLibXML2
import FanOut
import NIOCore

/// The RFC 4918 `DAV:multistatus` 207, written with libxml2's text writer (which escapes):
/// per item `D:href`, `D:status` as a full status line, `D:responsedescription` when Sheaf
/// explains the outcome, `D:location` for redirects, then extension elements in `urn:sheaf`:
/// `S:id`, `S:attempts` after a re-send, one `S:header name=".."` per value of each header in the
/// route's `response_headers`, and `S:body` (JSON or text as text, binary as base64, with its
/// content type when that header is reported).
/// With a route's `properties`, an item the upstream answered carries no `D:status` of its own
/// (RFC 4918 §14.24: href and status, or href and propstats): a `D:propstat` holds the properties
/// the answer has, with the item's status, and a second one lists those it lacks, empty, under
/// `404 Not Found`, as a PROPFIND answer does. Items Sheaf answered itself keep `D:status`.
/// A final `S:summary` carries the counts.
public final class XMLMultiStatusEncoder: MultiStatusEncoder {
    public let contentType: String
    private let buffer: xmlBufferPtr
    private let writer: xmlTextWriterPtr
    private let reported: ReportedHeaders
    private let properties: [DAVProperty]

    public init(mediaType: String = "application/xml", reporting: ReportedHeaders = .standard, properties: [DAVProperty] = []) {
        reported = reporting
        self.properties = properties
        _ = libxmlInitialized
        contentType = "\(mediaType); charset=\"utf-8\""
        buffer = xmlBufferCreate()
        writer = xmlNewTextWriterMemory(buffer, 0)
    }

    deinit {
        xmlFreeTextWriter(writer)
        xmlBufferFree(buffer)
    }

    public func begin(into out: inout ByteBuffer) {
        xmlTextWriterStartDocument(writer, "1.0", "UTF-8", nil)
        start("D", "multistatus", namespace: XMLNamespace.dav)
        attribute("xmlns:S", XMLNamespace.sheaf)
        drain(into: &out)
    }

    public func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        start("D", "response")
        element("D", "href", item.href)
        if !properties.isEmpty, outcome.isUpstreamAnswer {
            propstat(outcome, found: true, status: outcome.status)
            if properties.contains(where: { $0.value(in: outcome) == nil }) { propstat(outcome, found: false, status: 404) }
        } else {
            element("D", "status", HTTPStatus.line(outcome.status))
        }
        if let reason = outcome.reason {
            element("D", "responsedescription", reason)
        }
        if (300..<400).contains(outcome.status), reported.allows("location"),
           let location = outcome.headers.first(where: { $0.name == "location" })?.value {
            start("D", "location")
            element("D", "href", location)
            end()
        }
        element("S", "id", item.id)
        details(outcome)
        if let then = outcome.then {
            // The route's `then` call, as a response of its own inside the item's.
            start("S", "then")
            element("D", "href", then.href)
            element("D", "status", HTTPStatus.line(then.outcome.status))
            if let reason = then.outcome.reason { element("D", "responsedescription", reason) }
            details(then.outcome)
            end()
        }
        end()
        drain(into: &out)
    }

    /// Attempts, reported headers and the body of an answer.
    private func details(_ outcome: ItemOutcome) {
        if outcome.attempts > 1 { element("S", "attempts", String(outcome.attempts)) }
        forEachReportableHeader(outcome.headers, reported) { name, values in
            for value in values {
                start("S", "header")
                attribute("name", name)
                text(value)
                end()
            }
        }
        if let body = outcome.body {
            let contentType = outcome.headers.first(where: { $0.name == "content-type" })?.value
            let form = BodyForm.classify(body, contentType: contentType)
            if form != .none {
                start("S", "body")
                if let contentType, reported.allows("content-type") { attribute("content-type", contentType) }
                if outcome.bodyTruncated { attribute("truncated", "true") }
                if form == .binary {
                    attribute("encoding", "base64")
                    body.withUnsafeReadableBytes { raw in
                        raw.withMemoryRebound(to: CChar.self) { chars in
                            _ = xmlTextWriterWriteBase64(writer, chars.baseAddress, 0, Int32(chars.count))
                        }
                    }
                } else {
                    body.withUnsafeReadableBytes { raw in
                        _ = Self.withXMLText(raw.bindMemory(to: UInt8.self), nulTerminated: false) { xmlTextWriterWriteString(writer, $0) }
                    }
                }
                end()
            }
        }
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        start("S", "summary")
        attribute("total", String(summary.total))
        attribute("succeeded", String(summary.succeeded))
        attribute("failed", String(summary.failed))
        if let retryAfter = summary.retryAfter { attribute("retry-after", String(retryAfter)) }
        if let problem = summary.inputError {
            start("S", "input-error")
            attribute("status", String(problem.status))
            if let field = problem.field { attribute("field", field) }
            text(problem.detail)
            end()
        }
        end()
        xmlTextWriterEndDocument(writer)
        drain(into: &out)
    }

    /// One `D:propstat`: the properties the answer has (`found`, with their values) or lacks
    /// (empty), in the route's order.
    private func propstat(_ outcome: ItemOutcome, found: Bool, status: Int) {
        start("D", "propstat")
        start("D", "prop")
        for property in properties {
            let value = property.value(in: outcome)
            guard (value != nil) == found else { continue }
            start("D", property.rawValue)
            if let value { text(value) }
            end()
        }
        end()
        element("D", "status", HTTPStatus.line(status))
        end()
    }

    // MARK: writer helpers

    private func start(_ prefix: String, _ name: String, namespace: String? = nil) {
        _ = xml(prefix) { p in xml(name) { n in
            if let namespace {
                return xml(namespace) { ns in xmlTextWriterStartElementNS(writer, p, n, ns) }
            }
            return xmlTextWriterStartElementNS(writer, p, n, nil)
        } }
    }

    private func end() {
        xmlTextWriterEndElement(writer)
    }

    private func element(_ prefix: String, _ name: String, _ content: String) {
        _ = xml(prefix) { p in xml(name) { n in xml(content) { c in
            xmlTextWriterWriteElementNS(writer, p, n, nil, c)
        } } }
    }

    private func text(_ content: String) {
        _ = xml(content) { xmlTextWriterWriteString(writer, $0) }
    }

    private func attribute(_ name: String, _ value: String) {
        _ = xml(name) { n in xml(value) { v in xmlTextWriterWriteAttribute(writer, n, v) } }
    }

    private func xml(_ text: String, _ body: (UnsafePointer<xmlChar>) -> Int32) -> Int32 {
        let count = text.utf8.count
        return text.withCString { chars in
            chars.withMemoryRebound(to: UInt8.self, capacity: count + 1) {
                Self.withXMLText(UnsafeBufferPointer(start: $0, count: count), nulTerminated: true, body)
            }
        }
    }

    /// Every text that enters the 207 passes here: ids, reasons and urls can hold whatever a
    /// client sent, headers and bodies whatever an upstream sent, and libxml2's writer escapes
    /// markup but copies any code point. XML 1.0 (§2.2 Char) cannot carry C0 controls other than
    /// tab, LF and CR, nor U+FFFE or U+FFFF, even escaped; those and invalid UTF-8 become U+FFFD
    /// so the 207 stays well-formed. `body` gets the text NUL-terminated, as libxml2 wants it:
    /// clean text that already has a NUL after it (`nulTerminated`) is passed without a copy.
    static func withXMLText<R>(_ bytes: UnsafeBufferPointer<UInt8>, nulTerminated: Bool,
                               _ body: (UnsafePointer<xmlChar>) -> R) -> R {
        let clean = isXMLText(bytes)
        if clean, nulTerminated, let base = bytes.baseAddress { return body(base) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 1)
        if clean {
            out.append(contentsOf: bytes)
        } else {
            for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
                UTF8.encode(isXMLChar(scalar.value) ? scalar : "\u{FFFD}") { out.append($0) }
            }
        }
        out.append(0)
        return out.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// The common case, checked without decoding: valid UTF-8 with no code point XML forbids.
    private static func isXMLText(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        for i in bytes.indices {
            let byte = bytes[i]
            if byte < 0x20 && byte != 0x09 && byte != 0x0A && byte != 0x0D { return false }
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            if byte == 0xEF, i + 2 < bytes.count, bytes[i + 1] == 0xBF, bytes[i + 2] & 0xFE == 0xBE { return false }
        }
        return JSONParser.isValidUTF8(bytes)
    }

    private static func isXMLChar(_ value: UInt32) -> Bool {
        switch value {
        case 0x09, 0x0A, 0x0D, 0x20...0xD7FF, 0xE000...0xFFFD, 0x10000...0x10FFFF: return true
        default: return false
        }
    }

    private func drain(into out: inout ByteBuffer) {
        xmlTextWriterFlush(writer)
        let length = Int(xmlBufferLength(buffer))
        if length > 0, let content = xmlBufferContent(buffer) {
            out.writeBytes(UnsafeBufferPointer(start: content, count: length))
        }
        xmlBufferEmpty(buffer)
    }
}
