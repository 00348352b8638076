import FanOut
import MultiStatus
import NIOCore

/// A whole 207 body: `begin`, each item, then `end` with the summary the items make.
func encode(_ format: ResponseFormat, _ entries: [(BatchItem, ItemOutcome)], reporting: ReportedHeaders = .standard,
            properties: [DAVProperty] = []) -> String {
    let encoder = format.makeEncoder(reporting: reporting, properties: properties)
    var out = ByteBuffer()
    var summary = BatchSummary()
    encoder.begin(into: &out)
    for (item, outcome) in entries {
        summary.count(outcome)
        encoder.item(item, outcome, into: &out)
    }
    encoder.end(summary, into: &out)
    return String(buffer: out)
}
