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

    /// Writes the item's object after `separator` (a comma, or nothing). Its bytes are gathered in
    /// `scratch` and reach `out` in one write, or two around an embedded body (issue 13).
    func writeResult(_ item: BatchItem, _ outcome: ItemOutcome, separator: StaticString?, lineEnd: Bool,
                     scratch: ByteScratch, into out: inout ByteBuffer) {
        scratch.removeAll()
        var s = scratch
        if let separator { s.appendStatic(separator) }
        writeObject(id: item.id, href: item.href, outcome, into: &s, bodiesInto: &out)
        if lineEnd { s.appendByte(UInt8(ascii: "\n")) }
        s.move(into: &out)
    }

    /// One result object; a `then` call's has no id of its own (it is the item's). An embedded
    /// body goes straight from its buffer into `out`, after what `s` gathered before it.
    private func writeObject(id: String?, href: String, _ outcome: ItemOutcome, into s: inout ByteScratch,
                             bodiesInto out: inout ByteBuffer) {
        if let id {
            s.appendStatic("{\"id\":")
            JSONWriter.writeString(id, into: &s)
            s.appendStatic(",\"href\":")
        } else {
            s.appendStatic("{\"href\":")
        }
        JSONWriter.writeString(href, into: &s)
        s.appendStatic(",\"status\":")
        JSONWriter.writeDecimal(outcome.status, into: &s)
        var wroteHeader = false
        forEachReportableHeader(outcome.headers, reported) { name, values in
            s.appendStatic(wroteHeader ? "," : ",\"headers\":{")
            wroteHeader = true
            JSONWriter.writeString(bytes: name, into: &s)
            s.appendByte(UInt8(ascii: ":"))
            if values.isRepeated {
                s.appendByte(UInt8(ascii: "["))
                for (index, value) in values.enumerated() {
                    if index > 0 { s.appendByte(UInt8(ascii: ",")) }
                    JSONWriter.writeString(bytes: value, into: &s)
                }
                s.appendByte(UInt8(ascii: "]"))
            } else {
                JSONWriter.writeString(bytes: values.first, into: &s)
            }
        }
        if wroteHeader { s.appendByte(UInt8(ascii: "}")) }
        if !properties.isEmpty, outcome.isUpstreamAnswer {
            // An absent property is null, as the XML lists it empty under 404.
            s.appendStatic(",\"properties\":{")
            for (index, property) in properties.enumerated() {
                if index > 0 { s.appendByte(UInt8(ascii: ",")) }
                JSONWriter.writeString(property.rawValue, into: &s)
                s.appendByte(UInt8(ascii: ":"))
                if let value = property.value(in: outcome) {
                    JSONWriter.writeString(value, into: &s)
                } else {
                    s.appendStatic("null")
                }
            }
            s.appendByte(UInt8(ascii: "}"))
        }
        if let body = outcome.body {
            switch BodyForm.classify(body, headers: outcome.headers) {
            case .none:
                break
            case .json:
                s.appendStatic(",\"body\":")
                writeJSONBody(body, after: &s, into: &out)
            case .text:
                s.appendStatic(",\"body\":")
                body.withUnsafeReadableBytes { raw in
                    let text = raw.bindMemory(to: UInt8.self)
                    if raw.count <= gatheredBodyLimit {
                        JSONWriter.writeString(bytes: text, into: &s)
                    } else {
                        s.move(into: &out)
                        JSONWriter.writeString(bytes: text, into: &out)
                    }
                }
            case .binary:
                s.appendStatic(",\"body\":\"")
                if body.readableBytes <= gatheredBodyLimit {
                    s.appendUTF8(Base64.encode(body))
                } else {
                    s.move(into: &out)
                    out.writeString(Base64.encode(body))
                }
                s.appendStatic("\",\"bodyEncoding\":\"base64\"")
            }
            if outcome.bodyTruncated { s.appendStatic(",\"bodyTruncated\":true") }
        }
        if let reason = outcome.reason {
            s.appendStatic(",\"error\":")
            JSONWriter.writeString(reason, into: &s)
        }
        if outcome.attempts > 1 {
            s.appendStatic(",\"attempts\":")
            JSONWriter.writeDecimal(outcome.attempts, into: &s)
        }
        if let then = outcome.then {
            s.appendStatic(",\"then\":")
            writeObject(id: nil, href: then.href, then.outcome, into: &s, bodiesInto: &out)
        }
        s.appendByte(UInt8(ascii: "}"))
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

    /// A valid JSON body, embedded as is (a large one without a copy). NDJSON makes its line
    /// breaks harmless: CR and LF (whitespace between tokens) become spaces, and U+0085, U+2028
    /// and U+2029 (which valid JSON has inside strings only) are escaped, as the writer escapes them.
    private func writeJSONBody(_ body: ByteBuffer, after s: inout ByteScratch, into out: inout ByteBuffer) {
        body.withUnsafeReadableBytes { raw in
            if singleLine && raw.contains(where: { $0 == 0x0A || $0 == 0x0D || $0 == 0xC2 || $0 == 0xE2 }) {
                s.move(into: &out)
                Self.writeSingleLine(raw, into: &out)
                return
            }
            if raw.count <= gatheredBodyLimit {
                s.appendBytes(raw)
                return
            }
            s.move(into: &out)
            out.writeImmutableBuffer(body)
        }
    }

    private static func writeSingleLine(_ raw: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        var runStart = 0, i = 0
        while i < raw.count {
            let byte = raw[i]
            if byte == 0x0A || byte == 0x0D {
                out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[runStart..<i]))
                out.writeInteger(UInt8(ascii: " "))
                i += 1
                runStart = i
            } else if byte >= 0xC2, let lineBreak = JSONWriter.unicodeLineBreak(in: raw, at: i) {
                out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[runStart..<i]))
                out.writeStaticString(lineBreak.escape)
                i += lineBreak.width
                runStart = i
            } else {
                i += 1
            }
        }
        out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[runStart..<raw.count]))
    }
}
