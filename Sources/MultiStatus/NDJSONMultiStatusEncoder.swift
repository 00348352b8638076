import Codecs
import FanOut
import NIOCore

/// The NDJSON 207 (`application/x-ndjson`): one line per item, the same object the JSON 207
/// writes in `results`, each written as its item settles; then `{"summary":{...}}` as the last
/// line. A client can act on each line as it arrives, without a streaming JSON parser.
public final class NDJSONMultiStatusEncoder: MultiStatusEncoder {
    public let contentType = "application/x-ndjson"
    private let writer: JSONResultWriter
    /// Gathers each item's bytes for one write into the 207 (callers hold the writer's lock).
    private let scratch = ByteScratch()

    public init(reporting: ReportedHeaders = .standard, properties: [DAVProperty] = []) {
        writer = JSONResultWriter(reported: reporting, properties: properties, singleLine: true)
    }

    public func begin(into out: inout ByteBuffer) {}

    public func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        writer.writeResult(item, outcome, separator: nil, lineEnd: true, scratch: scratch, into: &out)
    }

    public func end(_ summary: BatchSummary, into out: inout ByteBuffer) {
        out.writeStaticString("{\"summary\":")
        JSONResultWriter.writeSummary(summary, into: &out)
        out.writeStaticString("}\n")
    }
}
