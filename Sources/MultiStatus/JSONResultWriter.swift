import Codecs
import FanOut
import NIOCore

/// Writes the JSON object of one item and the summary object: the JSON 207 puts them in
/// `results` and `summary`, the NDJSON 207 one per line, so both formats say the same.
struct JSONResultWriter {
    let reported: ReportedHeaders
    let properties: [DAVProperty]
    /// NDJSON: a line break inside a line would split it. Valid JSON has CR and LF only as
    /// whitespace between tokens (inside strings they are escaped), so an embedded JSON body
    /// keeps its meaning with them turned into spaces.
    let singleLine: Bool

    func writeResult(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        writeObject(id: item.id, href: item.href, outcome, into: &out)
    }

    /// One result object; a `then` call's has no id of its own (it is the item's).
    private func writeObject(id: String?, href: String, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        if let id {
            out.writeStaticString("{\"id\":")
            JSONWriter.writeString(id, into: &out)
            out.writeStaticString(",\"href\":")
        } else {
            out.writeStaticString("{\"href\":")
        }
        JSONWriter.writeString(href, into: &out)
        out.writeStaticString(",\"status\":")
        JSONWriter.writeDecimal(outcome.status, into: &out)
        var wroteHeader = false
        forEachReportableHeader(outcome.headers, reported) { name, values in
            out.writeStaticString(wroteHeader ? "," : ",\"headers\":{")
            wroteHeader = true
            JSONWriter.writeString(name, into: &out)
            out.writeInteger(UInt8(ascii: ":"))
            if values.isRepeated {
                JSONWriter.write(.array(values.map(JSONValue.string)), into: &out)
            } else {
                JSONWriter.writeString(values.first, into: &out)
            }
        }
        if wroteHeader { out.writeInteger(UInt8(ascii: "}")) }
        if !properties.isEmpty, outcome.isUpstreamAnswer {
            // An absent property is null, as the XML lists it empty under 404.
            out.writeStaticString(",\"properties\":{")
            for (index, property) in properties.enumerated() {
                if index > 0 { out.writeInteger(UInt8(ascii: ",")) }
                JSONWriter.writeString(property.rawValue, into: &out)
                out.writeInteger(UInt8(ascii: ":"))
                if let value = property.value(in: outcome) {
                    JSONWriter.writeString(value, into: &out)
                } else {
                    out.writeStaticString("null")
                }
            }
            out.writeInteger(UInt8(ascii: "}"))
        }
        if let body = outcome.body {
            switch BodyForm.classify(body, contentType: outcome.headers.first(where: { $0.name == "content-type" })?.value) {
            case .none:
                break
            case .json:
                out.writeStaticString(",\"body\":")
                writeJSONBody(body, into: &out)
            case .text:
                out.writeStaticString(",\"body\":")
                body.withUnsafeReadableBytes { raw in
                    JSONWriter.writeString(bytes: raw.bindMemory(to: UInt8.self), into: &out)
                }
            case .binary:
                out.writeStaticString(",\"body\":\"")
                out.writeString(Base64.encode(body))
                out.writeStaticString("\",\"bodyEncoding\":\"base64\"")
            }
            if outcome.bodyTruncated { out.writeStaticString(",\"bodyTruncated\":true") }
        }
        if let reason = outcome.reason {
            out.writeStaticString(",\"error\":")
            JSONWriter.writeString(reason, into: &out)
        }
        if outcome.attempts > 1 {
            out.writeStaticString(",\"attempts\":")
            JSONWriter.writeDecimal(outcome.attempts, into: &out)
        }
        if let then = outcome.then {
            out.writeStaticString(",\"then\":")
            writeObject(id: nil, href: then.href, then.outcome, into: &out)
        }
        out.writeInteger(UInt8(ascii: "}"))
    }

    /// `{"total":3,"succeeded":1,"failed":2}`, with `retry_after` when an item gave one and
    /// `input_error` when a streamed body went wrong after the 207 began.
    static func writeSummary(_ summary: BatchSummary, into out: inout ByteBuffer) {
        out.writeString("{\"total\":\(summary.total),\"succeeded\":\(summary.succeeded),\"failed\":\(summary.failed)")
        if let retryAfter = summary.retryAfter { out.writeString(",\"retry_after\":\(retryAfter)") }
        if let problem = summary.inputError {
            out.writeString(",\"input_error\":{\"status\":\(problem.status)")
            if let field = problem.field {
                out.writeStaticString(",\"field\":")
                JSONWriter.writeString(field, into: &out)
            }
            out.writeStaticString(",\"detail\":")
            JSONWriter.writeString(problem.detail, into: &out)
            out.writeInteger(UInt8(ascii: "}"))
        }
        out.writeInteger(UInt8(ascii: "}"))
    }

    /// A valid JSON body, embedded as is: without a copy unless a line break must go.
    private func writeJSONBody(_ body: ByteBuffer, into out: inout ByteBuffer) {
        let breaks = singleLine && body.readableBytesView.contains { $0 == 0x0A || $0 == 0x0D }
        guard breaks else {
            out.writeImmutableBuffer(body)
            return
        }
        for byte in body.readableBytesView {
            out.writeInteger(byte == 0x0A || byte == 0x0D ? UInt8(ascii: " ") : byte)
        }
    }
}
