import CLibXML2
import FanOut
import Codecs
import MultiStatus
import NIOCore
import Testing

private let item = BatchItem(id: "a<&>", href: "/docs/a%20b", rejection: "x")

@Test func jsonEmbedsJSONTextAndBinaryBodies() throws {
    let json = ItemOutcome(status: 200, headers: [("content-type", "application/json"), ("connection", "keep-alive")],
                           body: ByteBuffer(string: #"{"id":1}"#))
    let text = ItemOutcome(status: 404, headers: [("content-type", "text/plain")], body: ByteBuffer(string: "no \"such\""))
    let binary = ItemOutcome(status: 200, headers: [("content-type", "application/octet-stream")], body: ByteBuffer(bytes: [0, 1, 2, 255]))
    let failed = ItemOutcome(status: 504, reason: "upstream users did not answer within 5s")
    let output = encode(.json, [(item, json), (item, text), (item, binary), (item, failed)])
    let parsed = try JSONParser.parse(output)
    guard case .array(let results) = parsed["results"] else { Issue.record("no results"); return }
    #expect(results.count == 4)
    #expect(results[0]["body"] == .object([(key: "id", value: .number("1"))]))
    #expect(results[0]["headers"]?["connection"] == nil)
    #expect(results[0]["status"] == .number("200"))
    #expect(results[1]["body"] == .string("no \"such\""))
    #expect(results[2]["body"] == .string("AAEC/w=="))
    #expect(results[2]["bodyEncoding"] == .string("base64"))
    #expect(results[3]["error"] == .string("upstream users did not answer within 5s"))
    #expect(parsed["summary"] == .object([(key: "total", value: .number("4")), (key: "succeeded", value: .number("2")),
                                          (key: "failed", value: .number("2"))]))
}

@Test func jsonThatIsNotValidIsEmbeddedAsText() throws {
    let broken = ItemOutcome(status: 200, headers: [("content-type", "application/json")], body: ByteBuffer(string: "{\"a\":"))
    let parsed = try JSONParser.parse(encode(.json, [(item, broken)]))
    guard case .array(let results) = parsed["results"] else { Issue.record("no results"); return }
    #expect(results[0]["body"] == .string("{\"a\":"))
}

@Test func xmlFollowsRFC4918Order() {
    let redirect = ItemOutcome(status: 302, headers: [("location", "/users/5")])
    let failed = ItemOutcome(status: 502, reason: "cannot connect & give up")
    let output = encode(.xml(mediaType: "application/xml"), [(item, redirect), (item, failed)])
    #expect(output.hasPrefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"))
    #expect(output.contains("<D:multistatus xmlns:D=\"DAV:\" xmlns:S=\"urn:sheaf\">") || output.contains("<D:multistatus xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\">"))
    #expect(output.contains("<D:response><D:href>/docs/a%20b</D:href><D:status>HTTP/1.1 302 Found</D:status><D:location><D:href>/users/5</D:href></D:location><S:id>a&lt;&amp;&gt;</S:id><S:header name=\"location\">/users/5</S:header></D:response>"))
    #expect(output.contains("<D:status>HTTP/1.1 502 Bad Gateway</D:status><D:responsedescription>cannot connect &amp; give up</D:responsedescription>"))
    #expect(output.contains("<S:summary total=\"2\" succeeded=\"1\" failed=\"1\"/></D:multistatus>"))
}

@Test func xmlCarriesBinaryAsBase64() {
    let binary = ItemOutcome(status: 200, headers: [("content-type", "image/png")], body: ByteBuffer(bytes: [0, 1, 2, 255]))
    let output = encode(.xml(mediaType: "text/xml"), [(item, binary)])
    #expect(output.contains("<S:body content-type=\"image/png\" encoding=\"base64\">AAEC/w==</S:body>"))
}

@Test func statusLinesHaveReasonPhrases() {
    #expect(HTTPStatus.line(404) == "HTTP/1.1 404 Not Found")
    #expect(HTTPStatus.line(423) == "HTTP/1.1 423 Locked")
    #expect(HTTPStatus.line(599) == "HTTP/1.1 599 Server Error")
}

@Test func negotiation() {
    #expect(MediaType.negotiate(accept: nil, requestIsXML: false) == .json)
    #expect(MediaType.negotiate(accept: "*/*", requestIsXML: true) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "text/xml", requestIsXML: false) == .xml(mediaType: "text/xml"))
    #expect(MediaType.negotiate(accept: "application/json;q=0.5, application/xml", requestIsXML: false) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "application/xml;q=0, application/json", requestIsXML: true) == .json)
    #expect(MediaType.negotiate(accept: "text/html", requestIsXML: false) == nil)
    #expect(MediaType.isJSON("application/merge-patch+json; charset=utf-8"))
    #expect(!MediaType.isJSON("text/plain"))
}

@Test func xmlStaysWellFormedWithControlCharactersInIdsAndReasons() throws {
    let hostile = BatchItem(id: "a\u{01}b", href: "/x", rejection: "url \"\u{02}\" is absolute")
    let output = encode(.xml(mediaType: "application/xml"), [(hostile, ItemOutcome(status: 400, reason: "url \"\u{02}\" is absolute"))])
    #expect(!output.utf8.contains(1) && !output.utf8.contains(2))
    #expect(output.contains("<S:id>a\u{FFFD}b</S:id>"))
    #expect(isWellFormedXML(output))
    #expect(output.contains("<D:responsedescription>url &quot;\u{FFFD}&quot; is absolute</D:responsedescription>")
            || output.contains("<D:responsedescription>url \"\u{FFFD}\" is absolute</D:responsedescription>"))
}

@Test func attemptsAreReportedOnlyWhenAnItemWasSentMoreThanOnce() throws {
    let once = ItemOutcome(status: 200, attempts: 1)
    let twice = ItemOutcome(status: 404, attempts: 2)
    let json = try JSONParser.parse(encode(.json, [(item, once), (item, twice)]))
    guard case .array(let results) = json["results"] else { Issue.record("no results"); return }
    #expect(results[0]["attempts"] == nil)
    #expect(results[1]["attempts"] == .number("2"))
    let xml = encode(.xml(mediaType: "application/xml"), [(item, once), (item, twice)])
    #expect(xml.components(separatedBy: "<S:attempts>").count == 2)
    #expect(xml.contains("<S:attempts>2</S:attempts>"))
}

/// True when libxml2 parses the text as a well-formed XML document (no recovery).
private func isWellFormedXML(_ text: String) -> Bool {
    let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
    return Array(text.utf8).withUnsafeBufferPointer { raw in
        raw.withMemoryRebound(to: CChar.self) { chars in
            guard let document = xmlReadMemory(chars.baseAddress, Int32(chars.count), nil, nil, options) else { return false }
            xmlFreeDoc(document)
            return true
        }
    }
}

/// Code points XML 1.0 forbids (and a valid one, U+FFFD's neighbour U+FFFC, that must pass), in
/// every place text enters a 207.
private let forbidden = "\u{FFFE}\u{FFFF}\u{01}\u{1F}\u{00}x\u{FFFC}"
private let hostileItem = BatchItem(id: "a\(forbidden)", href: "/x", rejection: "x")
private let hostileOutcomes = [
    ItemOutcome(status: 400, reason: "url \"/x\(forbidden)\" is absolute"),
    ItemOutcome(status: 200, headers: [("content-type", "text/plain")], body: ByteBuffer(string: "text\u{FFFE}\u{FFFF}")),
    ItemOutcome(status: 200, headers: [("content-type", "application/json")], body: ByteBuffer(string: "{\"k\":\"\u{FFFF}\u{FFFE}\"}")),
    ItemOutcome(status: 302, headers: [("location", "/moved\u{FFFF}")]),
    ItemOutcome(status: 200, headers: [("content-type", "text/plain\u{FFFE}")], body: ByteBuffer(bytes: [0x41, 0x01])),
    ItemOutcome(status: 200, headers: [("content-type", "text/plain")], body: ByteBuffer(bytes: [0x41, 0xFF, 0xFE, 0x42])),
]

@Test func xmlIsWellFormedWhateverTheIdsReasonsAndBodiesHold() throws {
    let output = encode(.xml(mediaType: "application/xml"), hostileOutcomes.map { (hostileItem, $0) })
    #expect(isWellFormedXML(output), "\(output)")
    let bytes = Array(output.utf8)
    #expect(!output.unicodeScalars.contains { $0 == "\u{FFFE}" || $0 == "\u{FFFF}" || $0 == "\u{01}" || $0 == "\u{1F}" })
    #expect(!bytes.contains(0x00) && !bytes.contains(0x01) && !bytes.contains(0x1F))
    let replaced = "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}x\u{FFFC}"
    #expect(output.contains("<S:id>a\(replaced)</S:id>"))
    #expect(output.contains("<D:responsedescription>url \"/x\(replaced)\" is absolute</D:responsedescription>"))
    #expect(output.contains("<S:body content-type=\"text/plain\">text\u{FFFD}\u{FFFD}</S:body>"))
    #expect(output.contains("<S:body content-type=\"application/json\">{\"k\":\"\u{FFFD}\u{FFFD}\"}</S:body>"))
    #expect(output.contains("<D:location><D:href>/moved\u{FFFD}</D:href></D:location>"))
    // Bytes XML cannot carry as text (a control character, invalid UTF-8) travel as base64.
    #expect(output.contains("<S:body content-type=\"text/plain\u{FFFD}\" encoding=\"base64\">QQE=</S:body>"))
    #expect(output.contains("<S:body content-type=\"text/plain\" encoding=\"base64\">Qf/+Qg==</S:body>"))
}

@Test func jsonIsValidWhateverTheIdsReasonsAndBodiesHold() throws {
    let output = encode(.json, hostileOutcomes.map { (hostileItem, $0) })
    let parsed = try JSONParser.parse(output)
    guard case .array(let results) = parsed["results"] else { Issue.record("no results"); return }
    #expect(results[0]["id"] == .string("a\(forbidden)"))
    #expect(results[0]["error"] == .string("url \"/x\(forbidden)\" is absolute"))
    #expect(output.contains("\\u0001\\u001f\\u0000x"))
    #expect(results[1]["body"] == .string("text\u{FFFE}\u{FFFF}"))
    #expect(results[2]["body"] == .object([(key: "k", value: .string("\u{FFFF}\u{FFFE}"))]))
    #expect(results[4]["body"] == .string("QQE="))
    #expect(results[5]["body"] == .string("Qf/+Qg=="))
    #expect(results[5]["bodyEncoding"] == .string("base64"))
}

// RFC 9110 §12.5.1: the most specific range that matches a type gives its q-value, so an
// explicit q=0 is not undone by a wildcard.
@Test func aWildcardDoesNotOverrideAnExplicitRefusal() {
    #expect(MediaType.negotiate(accept: "application/json;q=0, */*", requestIsXML: false) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "*/*, application/json;q=0", requestIsXML: false) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "application/json;q=0, application/*", requestIsXML: false) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "application/xml;q=0, */*", requestIsXML: true) == .json)
    #expect(MediaType.negotiate(accept: "application/*;q=0, */*", requestIsXML: false) == .xml(mediaType: "text/xml"))
    #expect(MediaType.negotiate(accept: "text/xml;q=0, text/*", requestIsXML: false) == nil)
    #expect(MediaType.negotiate(accept: "application/json;q=0, application/xml;q=0, text/xml;q=0, */*", requestIsXML: false) == nil)
    #expect(MediaType.negotiate(accept: "*/*;q=0.1, application/json;q=0.5", requestIsXML: true) == .json)
    #expect(MediaType.negotiate(accept: "application/*", requestIsXML: true) == .xml(mediaType: "application/xml"))
    #expect(MediaType.negotiate(accept: "text/*", requestIsXML: false) == .xml(mediaType: "text/xml"))
}

@Test func repeatedHeadersStayDistinctInJSON() throws {
    let cookie = "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/"
    let outcome = ItemOutcome(status: 200, headers: [("set-cookie", cookie), ("content-type", "text/plain"), ("set-cookie", "b=2"),
                                                     ("connection", "close"), ("vary", "accept"), ("set-cookie", "c=3")])
    let reporting = ReportedHeaders(["content-type", "set-cookie", "vary", "connection"])
    let parsed = try JSONParser.parse(encode(.json, reporting: reporting, outcome))
    guard case .array(let results) = parsed["results"], case .object(let headers) = results[0]["headers"] else {
        Issue.record("no headers"); return
    }
    #expect(headers.map(\.key) == ["set-cookie", "content-type", "vary"])
    #expect(results[0]["headers"]?["set-cookie"] == .array([.string(cookie), .string("b=2"), .string("c=3")]))
    #expect(results[0]["headers"]?["content-type"] == .string("text/plain"))
    #expect(results[0]["headers"]?["vary"] == .string("accept"))
}

@Test func theSummaryCarriesTheLongestRetryAfterOf429And503Items() throws {
    let busy = ItemOutcome(status: 503, headers: [("retry-after", "5")])
    let limited = ItemOutcome(status: 429, headers: [("retry-after", "30")])
    let other = ItemOutcome(status: 500, headers: [("retry-after", "600")])
    let parsed = try JSONParser.parse(encode(.json, [(item, busy), (item, limited), (item, other)]))
    #expect(parsed["summary"]?["retry_after"] == .number("30"))
    let none = try JSONParser.parse(encode(.json, [(item, other)]))
    #expect(none["summary"]?["retry_after"] == nil)
    #expect(encode(.xml(mediaType: "application/xml"), [(item, busy)]).contains(#"retry-after="5""#))
}

private func encode(_ format: ResponseFormat, reporting: ReportedHeaders, _ outcome: ItemOutcome) -> String {
    let encoder = format.makeEncoder(reporting: reporting)
    var out = ByteBuffer()
    encoder.begin(into: &out)
    encoder.item(BatchItem(id: "a", href: "/a", rejection: "x"), outcome, into: &out)
    encoder.end(BatchSummary(), into: &out)
    return String(buffer: out)
}

private let noisy = ItemOutcome(status: 301, headers: [
    ("content-type", "text/plain"), ("etag", "\"v1\""), ("x-internal-token", "secret"), ("set-cookie", "s=1"),
    ("server", "nginx"), ("date", "Thu, 26 Nov 2026 10:00:00 GMT"), ("locatiom", "/x"), ("location", "/b"), ("etag", "\"v2\""), ("connection", "close"),
], body: ByteBuffer(string: "moved"))

@Test func onlyAllowlistedResponseHeadersReachTheJSON207() throws {
    let standard = try JSONParser.parse(encode(.json, reporting: .standard, noisy))
    guard case .array(let results) = standard["results"], case .object(let headers) = results.first?["headers"] else {
        Issue.record("no headers"); return
    }
    #expect(headers.map(\.key) == ["content-type", "etag", "location"])
    #expect(results[0]["headers"]?["etag"] == .array([.string("\"v1\""), .string("\"v2\"")]))

    let custom = try JSONParser.parse(encode(.json, reporting: ReportedHeaders(["X-Internal-Token", "connection"]), noisy))
    guard case .array(let customResults) = custom["results"], case .object(let only) = customResults.first?["headers"] else {
        Issue.record("no headers"); return
    }
    #expect(only.map(\.key) == ["x-internal-token"])
    // With nothing allowed there is no headers member at all, yet the body keeps its form.
    let none = try JSONParser.parse(encode(.json, reporting: ReportedHeaders([]), noisy))
    guard case .array(let bare) = none["results"] else { Issue.record("no results"); return }
    #expect(bare[0]["headers"] == nil)
    #expect(bare[0]["body"] == .string("moved"))
}

/// Names of 63 bytes or more share one length class in the allow-list's quick check: a long
/// reported name still matches only itself.
@Test func longReportedHeaderNamesMatchOnlyThemselves() throws {
    let long = "x-" + String(repeating: "a", count: 68), other = "x-" + String(repeating: "b", count: 62)
    let outcome = ItemOutcome(status: 200, headers: [(other, "no"), (long, "yes"), ("x-short", "no")], body: ByteBuffer())
    let parsed = try JSONParser.parse(encode(.json, reporting: ReportedHeaders([long.uppercased()]), outcome))
    guard case .array(let results) = parsed["results"], case .object(let headers) = results.first?["headers"] else {
        Issue.record("no headers"); return
    }
    #expect(headers.map(\.key) == [long])
    #expect(results[0]["headers"]?[long] == .string("yes"))
}

@Test func onlyAllowlistedResponseHeadersReachTheXML207() {
    let standard = encode(.xml(mediaType: "application/xml"), reporting: .standard, noisy)
    #expect(standard.contains("<D:location><D:href>/b</D:href></D:location>"))
    #expect(standard.contains("<S:header name=\"etag\">\"v1\"</S:header><S:header name=\"etag\">\"v2\"</S:header>"))
    #expect(standard.contains("<S:header name=\"content-type\">text/plain</S:header>"))
    #expect(standard.contains("<S:body content-type=\"text/plain\">moved</S:body>"))
    #expect(!standard.contains("secret"))
    #expect(!standard.contains("s=1"))
    #expect(!standard.contains("nginx"))
    let none = encode(.xml(mediaType: "application/xml"), reporting: ReportedHeaders([]), noisy)
    #expect(!none.contains("D:location"))
    #expect(!none.contains("S:header"))
    #expect(none.contains("<S:body>moved</S:body>"))
}

/// Small JSON bodies are gathered with the rest of their object and large ones written from
/// their own buffer: either way each lands whole, in its own item, and NDJSON keeps one line each.
@Test(arguments: [ResponseFormat.json, .ndjson])
func jsonBodiesOfEverySizeLandWholeInTheirOwnItem(format: ResponseFormat) throws {
    let sizes = [0, 1, 4000, 4095, 4096, 4097, 70_000]
    let entries = sizes.map { size -> (BatchItem, ItemOutcome) in
        // A JSON string of `size` letters, pretty-printed over lines so NDJSON has breaks to turn.
        let body = "{\n\"size\": \(size),\n\"text\": \"" + String(repeating: "x", count: size) + "\"\n}"
        return (BatchItem(id: "s\(size)", href: "/sized/\(size)", rejection: "x"),
                ItemOutcome(status: 200, headers: [("content-type", "application/json")], body: ByteBuffer(string: body)))
    }
    let output = encode(format, entries)
    let results: [JSONValue]
    if format == .ndjson {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        #expect(lines.count == sizes.count + 1)
        results = try lines.dropLast().map { try JSONParser.parse(String($0)) }
    } else {
        guard case .array(let array) = try JSONParser.parse(output)["results"] else { Issue.record("no results"); return }
        results = array
    }
    #expect(results.count == sizes.count)
    for (result, size) in zip(results, sizes) {
        #expect(result["id"] == .string("s\(size)"))
        #expect(result["body"]?["size"] == .number("\(size)"))
        #expect(result["body"]?["text"] == .string(String(repeating: "x", count: size)))
    }
}

/// NDJSON lines hold no character any reader takes for a line break (Python's `splitlines`
/// splits at U+0085, U+2028 and U+2029 too): ids, headers and embedded bodies, small and large,
/// carry them escaped, and each line still parses to the same values.
@Test func ndjsonLinesHoldNoUnicodeLineBreaks() throws {
    let text = "a\u{2028}b\u{2029}c\u{85}d—e©"
    let entries = [0, 5000].map { pad -> (BatchItem, ItemOutcome) in
        let body = "{\n\"text\": \"" + text + String(repeating: "x", count: pad) + "\"\n}"
        return (BatchItem(id: "i\(pad)\u{2028}", href: "/u/\(pad)", rejection: "x"),
                ItemOutcome(status: 200, headers: [("content-type", "application/json"), ("x-note", text)], body: ByteBuffer(string: body)))
    }
    let output = encode(.ndjson, entries)
    let lines = output.split(whereSeparator: { $0.isNewline }).filter { !$0.isEmpty }
    #expect(lines.count == entries.count + 1)
    for (line, pad) in zip(lines, [0, 5000]) {
        let result = try JSONParser.parse(String(line))
        #expect(result["id"] == .string("i\(pad)\u{2028}"))
        #expect(result["body"]?["text"] == .string(text + String(repeating: "x", count: pad)))
    }
}

/// An item with a large escaped body grows the scratch its bytes are gathered in; emptying it
/// gives that storage back, so one large answer is not held for the rest of the batch.
@Test func theScratchGivesBackWhatALargeItemGrew() {
    let scratch = ByteScratch()
    // What an ordinary item grows stays: it is reused for the next one.
    for _ in 0..<100 { scratch.appendStatic("&amp;&amp;&amp;&amp;&amp;&amp;&amp;&amp;&amp;&amp;") }
    let ordinary = scratch.storageSize
    scratch.removeAll()
    #expect(scratch.storageSize == ordinary && scratch.count == 0)
    let chunk = [UInt8](repeating: 0x26, count: 100_000)
    chunk.withUnsafeBytes { for _ in 0..<20 { scratch.appendBytes($0) } }
    #expect(scratch.count == 2_000_000 && scratch.storageSize >= 2_000_000)
    #expect(scratch.bytes.allSatisfy { $0 == 0x26 })
    scratch.removeAll()
    #expect(scratch.count == 0 && scratch.storageSize <= 64 << 10)
    scratch.appendStatic("after")
    #expect(Array(scratch.bytes) == Array("after".utf8))
}

/// Text and binary bodies on both sides of the size past which a body is written straight into
/// the 207 instead of gathered: each lands whole and escaped, in its own item, in every format.
@Test(arguments: [ResponseFormat.json, .ndjson, .xml(mediaType: "application/xml")])
func textAndBinaryBodiesOfEverySizeLandWhole(format: ResponseFormat) throws {
    let sizes = [10, 4095, 4096, 4097, 50_000]
    var entries: [(BatchItem, ItemOutcome)] = []
    for size in sizes {
        // Text with characters both formats escape, and bytes only base64 can carry.
        let text = String(repeating: "a<&>\"\\\n", count: size / 7 + 1)
        entries.append((BatchItem(id: "t\(size)", href: "/t/\(size)", rejection: "x"),
                        ItemOutcome(status: 200, headers: [("content-type", "text/plain")], body: ByteBuffer(string: text))))
        entries.append((BatchItem(id: "b\(size)", href: "/b/\(size)", rejection: "x"),
                        ItemOutcome(status: 200, headers: [("content-type", "application/octet-stream")],
                                    body: ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7 + 255) }))))
    }
    let output = encode(format, entries)
    if case .xml = format {
        #expect(isWellFormedXML(output))
        for size in sizes {
            let text = String(repeating: "a&lt;&amp;&gt;\"\\\n", count: size / 7 + 1)
            #expect(output.components(separatedBy: "<S:id>t\(size)</S:id><S:header name=\"content-type\">text/plain</S:header><S:body content-type=\"text/plain\">\(text)</S:body>").count == 2)
            let base64 = Base64.encode(ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7 + 255) }))
            #expect(output.components(separatedBy: "<S:id>b\(size)</S:id><S:header name=\"content-type\">application/octet-stream</S:header><S:body content-type=\"application/octet-stream\" encoding=\"base64\">\(base64)</S:body>").count == 2)
        }
        return
    }
    let results: [JSONValue]
    if format == .ndjson {
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.count == entries.count + 1)
        results = try lines.dropLast().map { try JSONParser.parse($0) }
    } else {
        guard case .array(let array) = try JSONParser.parse(output)["results"] else { Issue.record("no results"); return }
        results = array
    }
    #expect(results.count == entries.count)
    for (result, (item, outcome)) in zip(results, entries) {
        #expect(result["id"] == .string(item.id))
        if item.id.hasPrefix("t") {
            #expect(result["body"] == .string(String(buffer: outcome.body!)))
        } else {
            #expect(result["body"] == .string(Base64.encode(outcome.body!)))
            #expect(result["bodyEncoding"] == .string("base64"))
        }
    }
}

/// The text of the first element named `element`, and the value of its attribute `attribute`
/// if asked, as libxml2 reads them back from a 207.
private func readBack(_ xml: String, element: String, attribute: String? = nil) -> String? {
    let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
    return Array(xml.utf8).withUnsafeBufferPointer { raw -> String? in
        raw.withMemoryRebound(to: CChar.self) { chars -> String? in
            guard let document = xmlReadMemory(chars.baseAddress, Int32(chars.count), nil, nil, options) else { return nil }
            defer { xmlFreeDoc(document) }
            var stack = [xmlDocGetRootElement(document)]
            while let next = stack.popLast() {
                guard let node = next else { continue }
                if node.pointee.type == XML_ELEMENT_NODE, String(cString: node.pointee.name) == element {
                    let value = attribute.map { xmlGetProp(node, $0) } ?? xmlNodeGetContent(node)
                    guard let value else { return nil }
                    defer { xmlFree(value) }
                    return String(cString: value)
                }
                var child = node.pointee.children
                var children: [UnsafeMutablePointer<xmlNode>?] = []
                while let c = child { children.append(c); child = c.pointee.next }
                stack.append(contentsOf: children.reversed())
            }
            return nil
        }
    }
}

/// Text and attribute values whose first byte needing work comes after plain runs of every
/// length (the plain part is copied a word at a time, the rest escaped byte by byte): libxml2
/// reads back exactly what went in, with what XML cannot carry replaced by U+FFFD.
@Test func xmlTextReadsBackWhereverItsFirstSpecialCharacterFalls() {
    let specials = ["&", "<", ">", "\"", "'", "\r", "\n", "\t", "é", "\u{FFFE}", "\u{01}", "\u{FFFC}", "]]>", "x"]
    for length in 0...19 {
        for special in specials {
            let text = String(repeating: "p", count: length) + special + "tail&<>\"\r\u{7F}é" + special
            let expected = String(String.UnicodeScalarView(text.unicodeScalars.map {
                [0x01, 0xFFFE].contains($0.value) ? "\u{FFFD}" : $0
            }))
            let item = BatchItem(id: text, href: "/x", rejection: "x")
            let outcome = ItemOutcome(status: 200, headers: [("content-type", text)], body: ByteBuffer(string: "body"))
            let xml = encode(.xml(mediaType: "application/xml"), [(item, outcome)])
            #expect(readBack(xml, element: "id") == expected, "\(xml)")
            #expect(readBack(xml, element: "body", attribute: "content-type") == expected, "\(xml)")
        }
    }
}
