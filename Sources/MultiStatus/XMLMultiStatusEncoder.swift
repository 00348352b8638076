import Codecs
import FanOut
import NIOCore

/// The RFC 4918 `DAV:multistatus` 207 (escaped as libxml2's text writer escapes, see `XMLTextWriter`):
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
    private var writer = XMLTextWriter()
    /// Gathers each item's XML for one write into the 207 (callers hold the writer's lock).
    private var scratch = ByteScratch()
    private let reported: ReportedHeaders
    private let properties: [DAVProperty]

    public init(mediaType: String = "application/xml", reporting: ReportedHeaders = .standard, properties: [DAVProperty] = []) {
        reported = reporting
        self.properties = properties
        contentType = "\(mediaType); charset=\"utf-8\""
    }

    public func begin(into out: inout ByteBuffer) {
        gathered(into: &out) { s in
            XMLTextWriter.declaration(into: &s)
            // The start tag whole: the first item may go out in another write.
            s.appendStatic("<D:multistatus xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\">")
        }
    }

    /// Runs `write` against the emptied scratch, then puts what it gathered into `out` at once.
    private func gathered(into out: inout ByteBuffer, _ write: (inout ByteScratch) -> Void) {
        scratch.removeAll()
        write(&scratch)
        scratch.move(into: &out)
    }

    public func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        scratch.removeAll()
        write(item, outcome, into: &scratch, bodiesInto: &out)
        scratch.move(into: &out)
    }

    /// A large body goes straight into `buffer`, after what `out` gathered before it.
    private func write(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteScratch, bodiesInto buffer: inout ByteBuffer) {
        writer.start("D:response", into: &out)
        writer.element("D:href", item.href, into: &out)
        if !properties.isEmpty, outcome.isUpstreamAnswer {
            propstat(outcome, found: true, status: outcome.status, into: &out)
            if properties.contains(where: { $0.value(in: outcome) == nil }) { propstat(outcome, found: false, status: 404, into: &out) }
        } else {
            writer.element("D:status", HTTPStatus.line(outcome.status), into: &out)
        }
        if let reason = outcome.reason {
            writer.element("D:responsedescription", reason, into: &out)
        }
        if (300..<400).contains(outcome.status), reported.allows("location"),
           let location = outcome.headers.first("location") {
            writer.start("D:location", into: &out)
            writer.element("D:href", location, into: &out)
            writer.end(into: &out)
        }
        writer.element("S:id", item.id, into: &out)
        details(outcome, into: &out, bodiesInto: &buffer)
        if let then = outcome.then {
            // The route's `then` call, as a response of its own inside the item's.
            writer.start("S:then", into: &out)
            writer.element("D:href", then.href, into: &out)
            writer.element("D:status", HTTPStatus.line(then.outcome.status), into: &out)
            if let reason = then.outcome.reason { writer.element("D:responsedescription", reason, into: &out) }
            details(then.outcome, into: &out, bodiesInto: &buffer)
            writer.end(into: &out)
        }
        writer.end(into: &out)
    }

    /// Attempts, reported headers and the body of an answer.
    private func details(_ outcome: ItemOutcome, into out: inout ByteScratch, bodiesInto buffer: inout ByteBuffer) {
        if outcome.attempts > 1 { writer.element("S:attempts", String(outcome.attempts), into: &out) }
        forEachReportableHeader(outcome.headers, reported) { name, values in
            for value in values {
                writer.start("S:header", into: &out)
                writer.attribute("name", bytes: name, into: &out)
                writer.text(bytes: value, into: &out)
                writer.end(into: &out)
            }
        }
        if let body = outcome.body {
            let form = BodyForm.classify(body, headers: outcome.headers)
            if form != .none {
                writer.start("S:body", into: &out)
                if reported.allows("content-type") {
                    outcome.headers.withFirst("content-type") { value in
                        if let value { writer.attribute("content-type", bytes: value, into: &out) }
                    }
                }
                if outcome.bodyTruncated { writer.attribute("truncated", "true", into: &out) }
                if form == .binary { writer.attribute("encoding", "base64", into: &out) }
                // A large body is written straight into the 207, after what was gathered
                // before it: the scratch never holds a second, escaped copy of it.
                if body.readableBytes > gatheredBodyLimit {
                    out.move(into: &buffer)
                    writeBody(body, binary: form == .binary, into: &buffer)
                } else {
                    writeBody(body, binary: form == .binary, into: &out)
                }
                writer.end(into: &out)
            }
        }
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        gathered(into: &out) { write(summary, into: &$0) }
    }

    private func write(_ summary: BatchSummary, into out: inout ByteScratch) {
        writer.start("S:summary", into: &out)
        writer.attribute("total", String(summary.total), into: &out)
        writer.attribute("succeeded", String(summary.succeeded), into: &out)
        writer.attribute("failed", String(summary.failed), into: &out)
        if let retryAfter = summary.retryAfter { writer.attribute("retry-after", String(retryAfter), into: &out) }
        if let problem = summary.inputError {
            writer.start("S:input-error", into: &out)
            writer.attribute("status", String(problem.status), into: &out)
            if let field = problem.field { writer.attribute("field", field, into: &out) }
            writer.text(problem.detail, into: &out)
            writer.end(into: &out)
        }
        writer.end(into: &out)
        out.appendStatic("</D:multistatus>\n")
    }

    /// The text of `S:body`: base64, or the body escaped.
    private func writeBody<Out: ByteOutput>(_ body: ByteBuffer, binary: Bool, into out: inout Out) {
        if binary {
            writer.raw(Base64.encode(body), into: &out)
        } else {
            body.withUnsafeReadableBytes { raw in writer.text(bytes: raw.bindMemory(to: UInt8.self), into: &out) }
        }
    }

    /// One `D:propstat`: the properties the answer has (`found`, with their values) or lacks
    /// (empty), in the route's order.
    private func propstat(_ outcome: ItemOutcome, found: Bool, status: Int, into out: inout ByteScratch) {
        writer.start("D:propstat", into: &out)
        writer.start("D:prop", into: &out)
        for property in properties {
            let value = property.value(in: outcome)
            guard (value != nil) == found else { continue }
            writer.start(property.qualifiedName, into: &out)
            if let value { writer.text(value, into: &out) }
            writer.end(into: &out)
        }
        writer.end(into: &out)
        writer.element("D:status", HTTPStatus.line(status), into: &out)
        writer.end(into: &out)
    }
}
