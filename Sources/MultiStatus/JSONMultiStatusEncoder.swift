import Codecs
import FanOut
import NIOCore

/// The JSON 207:
/// `{"results":[{"id":"a","href":"/users/1","status":200,"headers":{...},"properties":{...},"body":...,"error":"..."}],
///  "summary":{"total":3,"succeeded":1,"failed":2}}`.
/// `headers` holds the route's `response_headers` only. A header maps to its value, or to an array of its values when the upstream sent it more than once.
/// `properties` (with a route's `properties`, for items the upstream answered) maps each named
/// WebDAV property to its value, or to null when the answer lacks it.
/// A JSON upstream body is embedded as JSON, other text as a string, binary as base64 with
/// `"bodyEncoding":"base64"`; `"bodyTruncated":true` when the size cap cut it.
public final class JSONMultiStatusEncoder: MultiStatusEncoder {
    public let contentType = "application/json"
    private let writer: JSONResultWriter
    /// Gathers each item's bytes for one write into the 207 (callers hold the writer's lock).
    private let scratch = ByteScratch()
    private var first = true

    public init(reporting: ReportedHeaders = .standard, properties: [DAVProperty] = []) {
        writer = JSONResultWriter(reported: reporting, properties: properties, singleLine: false)
    }

    public func begin(into out: inout ByteBuffer) {
        out.writeStaticString("{\"results\":[")
    }

    public func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        writer.writeResult(item, outcome, separator: first ? nil : ",", lineEnd: false, scratch: scratch, into: &out)
        first = false
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        out.writeStaticString("],\"summary\":")
        JSONResultWriter.writeSummary(summary, into: &out)
        out.writeInteger(UInt8(ascii: "}"))
    }
}
