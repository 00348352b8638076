import Codecs
import FanOut
import MultiStatus
import NIOCore
import Testing

private let item = BatchItem(id: "a", href: "/users/1", rejection: "x")

/// Encodes `entries` with `format`, returning the body and, after each call, how many bytes it had.
private func encodeStepwise(_ format: ResponseFormat, _ entries: [(BatchItem, ItemOutcome)]) -> (String, [Int]) {
    let encoder = format.makeEncoder()
    var out = ByteBuffer()
    var summary = BatchSummary()
    var sizes: [Int] = []
    encoder.begin(into: &out)
    sizes.append(out.readableBytes)
    for (item, outcome) in entries {
        summary.count(outcome)
        encoder.item(item, outcome, into: &out)
        sizes.append(out.readableBytes)
    }
    encoder.end(summary, into: &out)
    return (String(buffer: out), sizes)
}

private let entries: [(BatchItem, ItemOutcome)] = [
    (item, ItemOutcome(status: 200, headers: [("content-type", "application/json")], body: ByteBuffer(string: "{\n  \"id\": 1,\r\n  \"tags\": [\"a\"]\n}\n"))),
    (BatchItem(id: "b", href: "/users/2", rejection: "x"),
     ItemOutcome(status: 503, headers: [("content-type", "text/plain"), ("retry-after", "7")], body: ByteBuffer(string: "busy\nlater"))),
    (BatchItem(id: "c", href: "/users/3", rejection: "x"), ItemOutcome(status: 504, reason: "upstream users did not answer within 5s")),
]

@Test func ndjsonWritesEachResultOnItsOwnLineAsItSettlesThenTheSummary() throws {
    let (text, sizes) = encodeStepwise(.ndjson, entries)
    #expect(ResponseFormat.ndjson.makeEncoder().contentType == "application/x-ndjson")
    // Nothing before the first item; each item is a whole line the moment it is encoded.
    #expect(sizes[0] == 0)
    #expect(sizes == sizes.sorted() && Set(sizes).count == sizes.count)
    #expect(text.hasSuffix("\n"))
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    #expect(lines.count == entries.count + 1)
    // The same object the JSON 207 writes per item in `results`, pretty-printed JSON bodies included.
    let json = try JSONParser.parse(encode(.json, entries))
    guard case .array(let results) = json["results"] else { Issue.record("no results"); return }
    for (index, line) in lines.dropLast().enumerated() {
        #expect(try JSONParser.parse(line) == results[index], "line \(index): \(line)")
    }
    #expect(try JSONParser.parse(lines[0])["body"]?["tags"] == .array([.string("a")]))
    let summary = try JSONParser.parse(lines[3])
    #expect(summary == .object([(key: "summary", value: json["summary"]!)]))
    #expect(summary["summary"] == .object([(key: "total", value: .number("3")), (key: "succeeded", value: .number("1")),
                                           (key: "failed", value: .number("2")), (key: "retry_after", value: .number("7"))]))
}

@Test func ndjsonIsOfferedOnlyWhenAcceptNamesItWithTheHighestQ() {
    #expect(MediaType.negotiate(accept: "application/x-ndjson", requestIsXML: false) == .ndjson)
    #expect(MediaType.negotiate(accept: "Application/X-NDJSON", requestIsXML: true) == .ndjson)
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0.9, */*;q=0.8", requestIsXML: true) == .ndjson)
    #expect(MediaType.negotiate(accept: "application/json;q=0.5, application/x-ndjson", requestIsXML: false) == .ndjson)
    // A lower q loses, whatever its place.
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0.5, application/json", requestIsXML: false) == .json)
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0.5, */*", requestIsXML: true) == .xml(mediaType: "application/xml"))
    // Equal q: the earlier range wins, as between JSON and XML.
    #expect(MediaType.negotiate(accept: "application/json, application/x-ndjson", requestIsXML: false) == .json)
    // Wildcards keep today's default: the request body's own format.
    #expect(MediaType.negotiate(accept: "*/*", requestIsXML: false) == .json)
    #expect(MediaType.negotiate(accept: "*/*", requestIsXML: true) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "application/*", requestIsXML: false) == .json)
    // q=0 excludes it.
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0, */*", requestIsXML: false) == .json)
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0", requestIsXML: false) == nil)
    #expect(MediaType.negotiate(accept: "application/x-ndjson;q=0, application/json;q=0, application/xml;q=0, text/xml;q=0, */*",
                                requestIsXML: false) == nil)
    #expect(MediaType.offered.contains("application/x-ndjson"))
}
