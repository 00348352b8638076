import CLibXML2
import FanOut
import NIOCore

/// The RFC 4918 `DAV:multistatus` 207, written with libxml2's text writer (which escapes):
/// per item `D:href`, `D:status` as a full status line, `D:responsedescription` when Sheaf
/// explains the outcome, `D:location` for redirects, then extension elements in `urn:sheaf`:
/// `S:id` and `S:body` (JSON or text as text, binary as base64, with its content type).
/// A final `S:summary` carries the counts.
public final class XMLMultiStatusEncoder: MultiStatusEncoder {
    public let contentType: String
    private let buffer: xmlBufferPtr
    private let writer: xmlTextWriterPtr

    public init(mediaType: String = "application/xml") {
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
        element("D", "status", HTTPStatus.line(outcome.status))
        if let reason = outcome.reason {
            element("D", "responsedescription", reason)
        }
        if (300..<400).contains(outcome.status), let location = outcome.headers.first(where: { $0.name == "location" })?.value {
            start("D", "location")
            element("D", "href", location)
            end()
        }
        element("S", "id", item.id)
        if outcome.attempts > 1 { element("S", "attempts", String(outcome.attempts)) }
        if let body = outcome.body {
            let contentType = outcome.headers.first(where: { $0.name == "content-type" })?.value
            let form = BodyForm.classify(body, contentType: contentType)
            if form != .none {
                start("S", "body")
                if let contentType { attribute("content-type", contentType) }
                if outcome.bodyTruncated { attribute("truncated", "true") }
                if form == .binary {
                    attribute("encoding", "base64")
                    body.withUnsafeReadableBytes { raw in
                        raw.withMemoryRebound(to: CChar.self) { chars in
                            _ = xmlTextWriterWriteBase64(writer, chars.baseAddress, 0, Int32(chars.count))
                        }
                    }
                } else {
                    var bytes = Array(body.readableBytesView)
                    bytes.append(0)
                    _ = xmlTextWriterWriteString(writer, bytes)
                }
                end()
            }
        }
        end()
        drain(into: &out)
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        start("S", "summary")
        attribute("total", String(summary.total))
        attribute("succeeded", String(summary.succeeded))
        attribute("failed", String(summary.failed))
        end()
        xmlTextWriterEndDocument(writer)
        drain(into: &out)
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

    private func attribute(_ name: String, _ value: String) {
        _ = xml(name) { n in xml(value) { v in xmlTextWriterWriteAttribute(writer, n, v) } }
    }

    private func xml(_ text: String, _ body: (UnsafePointer<xmlChar>) -> Int32) -> Int32 {
        let text = Self.xmlSafe(text)
        return text.withCString { chars in
            chars.withMemoryRebound(to: xmlChar.self, capacity: text.utf8.count + 1) { body($0) }
        }
    }

    /// XML 1.0 cannot carry most C0 control characters, even escaped; ids and reasons can hold
    /// whatever a client sent. Such characters become U+FFFD so the 207 stays well-formed.
    static func xmlSafe(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D }) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map { scalar in
            scalar.value < 0x20 && scalar.value != 0x09 && scalar.value != 0x0A && scalar.value != 0x0D ? "\u{FFFD}" : scalar
        }))
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
