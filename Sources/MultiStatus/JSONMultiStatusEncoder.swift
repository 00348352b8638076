import Codecs
import FanOut
import NIOCore

/// The JSON 207:
/// `{"results":[{"id":"a","href":"/users/1","status":200,"headers":{...},"body":...,"error":"..."}],
///  "summary":{"total":3,"succeeded":1,"failed":2}}`.
/// `headers` holds the route's `response_headers` only. A header maps to its value, or to an array of its values when the upstream sent it more than once.
/// A JSON upstream body is embedded as JSON, other text as a string, binary as base64 with
/// `"bodyEncoding":"base64"`; `"bodyTruncated":true` when the size cap cut it.
public final class JSONMultiStatusEncoder: MultiStatusEncoder {
    public let contentType = "application/json"
    private let reported: ReportedHeaders
    private var first = true

    public init(reporting: ReportedHeaders = .standard) {
        reported = reporting
    }

    public func begin(into out: inout ByteBuffer) {
        out.writeStaticString("{\"results\":[")
    }

    public func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        if first { first = false } else { out.writeInteger(UInt8(ascii: ",")) }
        out.writeStaticString("{\"id\":")
        JSONWriter.writeString(item.id, into: &out)
        out.writeStaticString(",\"href\":")
        JSONWriter.writeString(item.href, into: &out)
        out.writeStaticString(",\"status\":")
        out.writeString(String(outcome.status))
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
        if let body = outcome.body {
            switch BodyForm.classify(body, contentType: outcome.headers.first(where: { $0.name == "content-type" })?.value) {
            case .none:
                break
            case .json:
                out.writeStaticString(",\"body\":")
                out.writeImmutableBuffer(body)
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
            out.writeString(String(outcome.attempts))
        }
        out.writeInteger(UInt8(ascii: "}"))
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        out.writeString("],\"summary\":{\"total\":\(summary.total),\"succeeded\":\(summary.succeeded),\"failed\":\(summary.failed)")
        if let retryAfter = summary.retryAfter { out.writeString(",\"retry_after\":\(retryAfter)") }
        out.writeString("}}")
    }
}
