import FanOut
import BatchInput
import Codecs
import NIOCore
import Testing

private func template(_ path: String, items: String = "/ids") throws -> FanOutTemplate {
    FanOutTemplate(items: try JSONPointer(items), method: "GET", path: try PathTemplate(path))
}

private func decodeError(_ body: () throws(BatchError) -> [BatchItem]) -> BatchError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}

@Test func templateFansOutEveryElementWithEncodedValues() throws {
    let items = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,"a b","x/y","é"]}"#),
                                            template: try template("/users/{item}"), basePath: "/api", maxItems: 10)
    #expect(items.map(\.href) == ["/users/1", "/users/a%20b", "/users/x%2Fy", "/users/%C3%A9"])
    #expect(items.map(\.id) == ["0", "1", "2", "3"])
    #expect(items[0].request?.path == "/api/users/1")
    #expect(items.allSatisfy { $0.request?.method == "GET" })
}

@Test func templateFieldsComeFromObjectElements() throws {
    let items = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"users":[{"org":"acme","id":7}]}"#),
                                            template: try template("/orgs/{org}/users/{id}", items: "/users"), basePath: "", maxItems: 10)
    #expect(items.first?.href == "/orgs/acme/users/7")
}

@Test func templateErrorsNameTheElementAndField() throws {
    let t = try template("/orgs/{org}/users/{id}", items: "/users")
    let missing = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"users":[{"org":"a","id":1},{"org":"b"}]}"#), template: t, basePath: "", maxItems: 10)
    }
    #expect(missing?.status == 400)
    #expect(missing?.field == "/users/1/id")
    let wrongType = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,[2]]}"#), template: try! template("/u/{item}"), basePath: "", maxItems: 10)
    }
    #expect(wrongType?.description == "/ids/1: must be a string or number for {item}, got array")
    let notArray = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":{}}"#), template: try! template("/u/{item}"), basePath: "", maxItems: 10)
    }
    #expect(notArray?.description == "/ids: must be an array, got object")
    let dots = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[".."]}"#), template: try! template("/u/{item}"), basePath: "", maxItems: 10)
    }
    #expect(dots?.field == "/ids/0")
}

@Test func tooManyItemsIs413() throws {
    let error = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,2,3]}"#), template: try! template("/u/{item}"), basePath: "", maxItems: 2)
    }
    #expect(error?.status == 413)
}

@Test func explicitBatchDecodesEveryField() throws {
    let body = #"{"requests":[{"id":"a","method":"get","url":"/users/1","headers":{"Accept":"application/json","Connection":"close"}},{"method":"POST","url":"/docs","body":{"k":1}},{"method":"PUT","url":"/t","body":"raw"}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
    #expect(items.map(\.id) == ["a", "1", "2"])
    #expect(items[0].request?.method == "GET")
    #expect(items[0].request?.headers.map(\.name) == ["Accept"])  // hop-by-hop Connection dropped
    #expect(items[1].request.map { String(buffer: $0.body!) } == #"{"k":1}"#)
    #expect(items[1].request?.headers.contains { $0.name == "content-type" && $0.value == "application/json" } == true)
    #expect(items[2].request.map { String(buffer: $0.body!) } == "raw")
}

/// An item's `Expect: 100-continue` is not sent on: Sheaf holds the whole body, and the
/// expectation was the client's, for its own hop (RFC 9110 §10.1.1); sent on, it made libcurl
/// wait for a 100 (up to a second) before each such item's body.
@Test func anItemsExpectationIsNotForwarded() throws {
    let body = #"{"requests":[{"method":"POST","url":"/a","headers":{"Expect":"100-continue","x-kept":"2"},"body":"x"}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
    #expect(items[0].request?.headers.map(\.name) == ["x-kept"])
}

/// RFC 9110 §7.6.1: the fields an item's own Connection header names belong to that one hop, as
/// Connection itself does, so neither goes upstream; the rest of the item's headers do.
@Test func anItemsConnectionOptionsAreNotForwarded() throws {
    let body = #"{"requests":[{"method":"GET","url":"/a","headers":{"Connection":"X-Hop, keep-alive","X-Hop":"1","x-kept":"2"}}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
    #expect(items[0].request?.headers.map(\.name) == ["x-kept"])
}

@Test(arguments: [
    (#"{"requests":[{"method":"GET","url":"/a"},{"url":"/b"}]}"#, "requests[1].method: missing"),
    (#"{"requests":[{"method":"GET"}]}"#, "requests[0].url: missing"),
    (#"{"requests":[{"id":"x","method":"GET","url":"/a"},{"id":"x","method":"GET","url":"/b"}]}"#, "requests[1].id: duplicate id \"x\""),
    (#"{"requests":[{"method":"G T","url":"/a"}]}"#, "requests[0].method: \"G T\" is not an HTTP method"),
    (#"{"requests":[{"method":"connect","url":"/a"}]}"#, "requests[0].method: CONNECT opens a tunnel, not a single-item request"),
    (#"{"requests":[{"method":"GET","url":"/a","headers":{"X":"a\r\nEvil: 1"}}]}"#, "requests[0].headers.X: value contains a control character (a value may hold tabs and visible characters only)"),
    (#"{"requests":[{"method":"GET","url":"/a","headers":{"X":"a\u0001b"}}]}"#, "requests[0].headers.X: value contains a control character (a value may hold tabs and visible characters only)"),
    (#"{"requests":[{"method":"GET","url":"/a","mehtod":"x"}]}"#, "requests[0].mehtod: unknown field (expected id, method, url, headers, body, dependsOn)"),
    (#"{"requests":{}}"#, "requests: must be an array, got object"),
    (#"{"reqs":[]}"#, "reqs: unknown field (a batch has only \"requests\")"),
    (#"[1]"#, "body: must be a JSON object with a \"requests\" array, got array"),
])
func explicitBatchErrorsNameItemAndField(body: String, expected: String) {
    let error = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
    }
    #expect(error?.status == 400)
    #expect(error?.description == expected)
}

@Test func itemsThatEscapeTheirUpstreamAreRejectedOneByOne() throws {
    let body = #"{"requests":[{"method":"GET","url":"http://evil.example/x"},{"method":"GET","url":"//evil.example/x"},{"method":"GET","url":"/a/../../etc/passwd"},{"method":"GET","url":"/a/%2e%2e/b"},{"method":"GET","url":"/a/./b/../c?q=1"}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "/api", maxItems: 10)
    #expect(items.count == 5)
    #expect(items[0].rejection?.contains("absolute") == true)
    #expect(items[1].rejection?.contains("'//'") == true)
    #expect(items[2].rejection?.contains("climbs out") == true)
    #expect(items[3].rejection?.contains("encoded dot segment") == true)
    #expect(items[4].request?.path == "/api/a/c?q=1")
    #expect(items[4].href == "/a/c?q=1")
    #expect(Set(items.map(\.href)).count == 5)
    #expect(items.allSatisfy { $0.href.hasPrefix("/") && !$0.href.hasPrefix("//") })
}

@Test func duplicatePathsGetDistinctHrefs() throws {
    let body = #"{"requests":[{"id":"a","method":"GET","url":"/u/1"},{"id":"b","method":"DELETE","url":"/u/1"},{"id":"c","method":"GET","url":"/u/./1"}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
    #expect(items.map(\.href) == ["/u/1", "/u/1#b", "/u/1#c"])
}

@Test func xmlBatchDecodes() throws {
    let xml = """
    <?xml version="1.0"?>
    <S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:" xmlns:x="urn:other">
      <S:request id="a" method="DELETE"><D:href>/docs/a.pdf</D:href></S:request>
      <x:ignored><S:request method="GET"><D:href>/nope</D:href></S:request></x:ignored>
      <S:request id="b" method="PUT"><D:href> /docs/b.txt </D:href>
        <S:header name="Content-Type">text/plain</S:header><S:body>hello &amp; bye</S:body></S:request>
      <S:request method="POST"><D:href>/bin</D:href><S:body encoding="base64">AAEC</S:body></S:request>
    </S:batch>
    """
    let items = try XMLBatchDecoder.decode(ByteBuffer(string: xml), basePath: "", maxItems: 10)
    #expect(items.map(\.id) == ["a", "b", "2"])
    #expect(items.map(\.href) == ["/docs/a.pdf", "/docs/b.txt", "/bin"])
    #expect(items[1].request?.headers.first?.value == "text/plain")
    #expect(items[1].request.map { String(buffer: $0.body!) } == "hello & bye")
    #expect(items[2].request?.body?.readableBytesView.map { $0 } == [0, 1, 2])
}

@Test(arguments: [
    ("<!DOCTYPE x [<!ENTITY e \"boom\">]><S:batch xmlns:S=\"urn:sheaf\"/>", "DTD"),
    ("<S:batch xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\"><S:request><D:href>/a</D:href></S:request></S:batch>", "requests[0].method: missing"),
    ("<batch/>", "root element must be batch in namespace urn:sheaf"),
    ("<S:batch xmlns:S=\"urn:sheaf\"><S:request method=\"GET\">", "not well-formed"),
    ("<S:batch xmlns:S=\"urn:sheaf\"><S:thing/></S:batch>", "unknown element S:thing"),
    ("<S:batch xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\"><S:request method=\"GET\"><D:href>/a</D:href><S:header>v</S:header></S:request></S:batch>", "without a name"),
])
func xmlBatchErrors(xml: String, expected: String) {
    let error = decodeError { () throws(BatchError) in
        try XMLBatchDecoder.decode(ByteBuffer(string: xml), basePath: "", maxItems: 10)
    }
    #expect(error?.status == 400)
    #expect(error?.description.contains(expected) == true, "\(String(describing: error))")
}

@Test func xmlBatchLimitIs413() {
    let xml = "<S:batch xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\">" + String(repeating: "<S:request method=\"GET\"><D:href>/a</D:href></S:request>", count: 3) + "</S:batch>"
    let error = decodeError { () throws(BatchError) in
        try XMLBatchDecoder.decode(ByteBuffer(string: xml), basePath: "", maxItems: 2)
    }
    #expect(error?.status == 413)
}

@Test func pathTemplateSyntax() {
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate("users/{item}") }
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate("/users/{}") }
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate("/users/}") }
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate("/users/all") }
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate("/users/{a-b}") }
    #expect((try? PathTemplate("/users/{item}?full=1")) != nil)
}

@Test func explicitUrlsWithEncodedSlashesAreRefusedItemByItem() throws {
    let body = #"{"requests":[{"method":"GET","url":"/x/..%2f..%2fsecret"},{"method":"GET","url":"/%2e%2e%2fsecret"},{"method":"GET","url":"/users/1?next=%2Fhome"}]}"#
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "/api", maxItems: 10)
    #expect(items[0].rejection == "url contains an encoded slash (\"%2f\"), which upstreams may decode into a path separator")
    #expect(items[1].rejection == "url contains an encoded slash (\"%2f\"), which upstreams may decode into a path separator")
    #expect(items[2].request?.path == "/api/users/1?next=%2Fhome")
}

/// Plain values (letters, digits, `-_~`) take a path that skips encoding and the dot check;
/// anything else still gets both, and a template's own dots are still checked.
@Test func templateValuesPlainAndNot() throws {
    let users = try PathTemplate("/users/{item}")
    for (value, path) in [("Ab-9_~z", "/users/Ab-9_~z"), ("42", "/users/42"), ("a.b", "/users/a.b"), ("a b", "/users/a%20b"),
                          ("a/b", "/users/a%2Fb"), ("é", "/users/%C3%A9"), ("%2e", "/users/%252e")] {
        #expect(try users.expand(.string(value), at: "/0").get() == path, "\(value)")
    }
    for value in ["", ".", "..", "a/..", "..\\b"] {
        guard case .failure(let error) = users.expand(.string(value), at: "/0") else {
            Issue.record("\(value) was accepted")
            continue
        }
        #expect(error.field == "/0")
    }
    let dotted = try PathTemplate("/files/{id}/..{name}")
    #expect(try dotted.expand(.object([("id", .string("a")), ("name", .string("b"))]), at: "/0").get() == "/files/a/..b")
}

// Templated paths do not go through ItemPath: there %2F is Sheaf's own encoding of a value as one segment.
@Test func templatedValuesKeepSlashesInsideOneSegment() throws {
    let items = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":["a/b","x\\y"]}"#),
                                            template: try template("/users/{item}"), basePath: "/api", maxItems: 10)
    #expect(items.map { $0.request?.path } == ["/api/users/a%2Fb", "/api/users/x%5Cy"])
}

// An upstream that decodes %2F would see `../../secret` in `/users/..%2F..%2Fsecret` and climb out.
@Test(arguments: ["../../secret", "a/../../b", "./x", "..\\x", "a/.."])
func templatedValuesThatHideDotSegmentsAreRefused(value: String) throws {
    let body = ByteBuffer(string: "{\"ids\":[1,\(JSONValue.string(value).serialized)]}")
    let error = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(body, template: try! template("/users/{item}"), basePath: "/api", maxItems: 10)
    }
    #expect(error?.status == 400)
    #expect(error?.field == "/ids/1")
    #expect(error?.message.contains("dot segment") == true, "\(String(describing: error))")
}

@Test(arguments: ["!!!!", "AAE", "A=AA", "AA=A", "AAEC!", "AAECAQ==AAEC"])
func xmlBodyThatIsNotBase64IsRefused(encoded: String) {
    let xml = "<S:batch xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\"><S:request method=\"PUT\"><D:href>/a</D:href>"
        + "<S:body encoding=\"base64\">\(encoded)</S:body></S:request></S:batch>"
    let error = decodeError { () throws(BatchError) in
        try XMLBatchDecoder.decode(ByteBuffer(string: xml), basePath: "", maxItems: 10)
    }
    #expect(error?.status == 400)
    #expect(error?.description == "requests[0].body: not valid base64")
}

@Test func xmlBase64BodyMayBeWrappedOverLines() throws {
    let xml = "<S:batch xmlns:S=\"urn:sheaf\" xmlns:D=\"DAV:\"><S:request method=\"PUT\"><D:href>/a</D:href>"
        + "<S:body encoding=\"base64\">\n  AAEC\r\n  /w==\n</S:body></S:request></S:batch>"
    let items = try XMLBatchDecoder.decode(ByteBuffer(string: xml), basePath: "", maxItems: 10)
    #expect(items[0].request?.body?.readableBytesView.map { $0 } == [0, 1, 2, 255])
}

@Test func base64RoundTripsEveryTailLength() {
    for length in 0...8 {
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 * 97 + 251) }
        #expect(Base64.decode(Base64.encode(ByteBuffer(bytes: bytes))) == bytes, "\(length) bytes")
    }
}

@Test func oneItemOverMaxItemsIs413NamingTheArray() throws {
    let templated = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,2,3]}"#), template: try! template("/u/{item}"), basePath: "", maxItems: 2)
    }
    #expect(templated?.status == 413)
    #expect(templated?.description == "/ids: more items than this route's max_items (2)")
    let explicit = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: #"{"requests":[{},{},{}]}"#), basePath: "", maxItems: 2)
    }
    #expect(explicit?.status == 413)
    #expect(explicit?.description == "requests: more items than this route's max_items (2)")
    #expect(try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,2]}"#), template: try template("/u/{item}"),
                                        basePath: "", maxItems: 2).count == 2)
}

// Each body below is cut off after ten times max_items elements, so it is not JSON at all: a
// decoder that read it in full would answer 400; one that stops at max_items + 1 answers 413.
@Test func parsingStopsOnceTheItemArrayPassesMaxItems() throws {
    let elements = (0..<100).map(String.init).joined(separator: ",")
    let templated = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":["# + elements + ",{\"unterminated"),
                                    template: try! template("/u/{item}"), basePath: "", maxItems: 10)
    }
    #expect(templated?.status == 413)
    #expect(templated?.field == "/ids")
    let rootArray = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: "[" + elements + ",{"), template: try! template("/u/{item}", items: ""),
                                    basePath: "", maxItems: 10)
    }
    #expect(rootArray?.status == 413)
    #expect(rootArray?.field == "body")
    let requests = String(repeating: #"{"method":"GET","url":"/a"},"#, count: 100)
    let explicit = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: #"{"requests":["# + requests + #"{"method":"#), basePath: "", maxItems: 10)
    }
    #expect(explicit?.status == 413)
    #expect(explicit?.field == "requests")
}

// Only the array the pointer names is counted: other arrays, and a same-named array deeper
// down, may be longer than max_items.
@Test func onlyTheItemArrayIsCounted() throws {
    let body = #"{"ids":[1,2,3,4],"data":{"other":[1,2,3],"ids":[5,6]}}"#
    let items = try JSONBatchDecoder.decode(ByteBuffer(string: body), template: try template("/u/{item}", items: "/data/ids"),
                                            basePath: "", maxItems: 2)
    #expect(items.map(\.href) == ["/u/5", "/u/6"])
    let groups = #"{"groups":[[1,2,3,4],[7,8]]}"#
    let second = try JSONBatchDecoder.decode(ByteBuffer(string: groups), template: try template("/u/{item}", items: "/groups/1"),
                                             basePath: "", maxItems: 2)
    #expect(second.map(\.href) == ["/u/7", "/u/8"])
    let first = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decode(ByteBuffer(string: groups), template: try! template("/u/{item}", items: "/groups/0"), basePath: "", maxItems: 2)
    }
    #expect(first?.status == 413)
}

private func header(_ item: BatchItem, _ name: String) -> [String] {
    (item.request?.allHeaders ?? []).filter { $0.name.lowercased() == name }.map(\.value)
}

@Test func everyItemCarriesTheRequestIDAndSheafsForwardingHeaders() throws {
    let shared = BatchHeaders(inherited: [("Authorization", "Bearer t")],
                              imposed: [("x-forwarded-for", "10.0.0.9"), ("forwarded", "for=10.0.0.9;proto=http")],
                              requestID: "req-1")
    let explicit = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: """
        {"requests":[{"id":"a","method":"GET","url":"/a","headers":{"X-Forwarded-For":"6.6.6.6","X-Request-ID":"spoof","Authorization":"mine"}},
         {"id":"b c","method":"GET","url":"/b"},{"id":"ü-1.x_~","method":"GET","url":"/c"}]}
        """), basePath: "", maxItems: 10, headers: shared)
    #expect(header(explicit[2], "x-request-id") == ["req-1.%C3%BC-1.x_~"])
    #expect(header(explicit[0], "x-forwarded-for") == ["10.0.0.9"])
    #expect(header(explicit[0], "forwarded") == ["for=10.0.0.9;proto=http"])
    #expect(header(explicit[0], "x-request-id") == ["req-1.a"])
    #expect(header(explicit[0], "authorization") == ["mine"])
    #expect(header(explicit[1], "x-request-id") == ["req-1.b%20c"])
    #expect(header(explicit[1], "authorization") == ["Bearer t"])

    let templated = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,2]}"#), template: try template("/users/{item}"),
                                                basePath: "", maxItems: 10, headers: shared)
    #expect(templated.map { header($0, "x-request-id") } == [["req-1.0"], ["req-1.1"]])
    #expect(templated.allSatisfy { header($0, "x-forwarded-for") == ["10.0.0.9"] })

    let xml = try XMLBatchDecoder.decode(ByteBuffer(string: """
        <?xml version="1.0"?><S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:"><S:request id="x" method="GET"><D:href>/x</D:href>\
        <S:header name="Forwarded">for=evil</S:header></S:request></S:batch>
        """), basePath: "", maxItems: 10, headers: shared)
    #expect(header(xml[0], "forwarded") == ["for=10.0.0.9;proto=http"])
    #expect(header(xml[0], "x-request-id") == ["req-1.x"])

    // Without a request id or forwarding, an item's own headers travel as it wrote them.
    let plain = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: """
        {"requests":[{"id":"a","method":"GET","url":"/a","headers":{"X-Forwarded-For":"6.6.6.6","X-Request-ID":"mine"}}]}
        """), basePath: "", maxItems: 10)
    #expect(header(plain[0], "x-forwarded-for") == ["6.6.6.6"])
    #expect(header(plain[0], "x-request-id") == ["mine"])
}

private func explicit(_ json: String, coalesce: Bool = false) throws(BatchError) -> [BatchItem] {
    try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: json), basePath: "/api", maxItems: 100, coalesce: coalesce)
}

@Test func dependenciesComeFirstAndNameTheirIndices() throws {
    // c depends on a later item; the order keeps the request's wherever it can.
    let items = try explicit("""
        {"requests":[{"id":"c","method":"GET","url":"/c","dependsOn":["b"]},{"id":"a","method":"GET","url":"/a"},
                     {"id":"b","method":"GET","url":"/b","dependsOn":["a"]},{"id":"d","method":"GET","url":"/d","dependsOn":["a","b"]}]}
        """)
    #expect(items.map(\.id) == ["a", "b", "c", "d"])
    #expect(items.map(\.dependsOn) == [[], [0], [1], [0, 1]])
}

@Test(arguments: [
    (#"{"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["zz"]}]}"#, "requests[0].dependsOn: unknown id \"zz\""),
    (#"{"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["b"]},{"id":"b","method":"GET","url":"/b","dependsOn":["a"]}]}"#,
     "dependsOn forms a cycle: \"a\" → \"b\" → \"a\""),
    (#"{"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["a"]}]}"#, "requests[0].dependsOn: dependsOn forms a cycle: \"a\" → \"a\""),
    (#"{"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":"b"}]}"#, "requests[0].dependsOn: must be an array of item ids, got string"),
    (#"{"requests":[{"id":"a","method":"GET","url":"/a"},{"id":"b","method":"GET","url":"/u/{c:/x}","dependsOn":["a"]}]}"#,
     "requests[1].url: {c:/x} refers to \"c\", which is not in dependsOn"),
])
func badDependenciesAre400NamingThem(body: String, expected: String) {
    let error = decodeError { () throws(BatchError) in try explicit(body) }
    #expect(error?.status == 400)
    #expect(error?.description.hasSuffix(expected) == true, "\(error?.description ?? "no error")")
}

@Test func valueReferencesAreFilledFromTheDependencysAnswer() throws {
    let items = try explicit("""
        {"requests":[{"id":"a","method":"GET","url":"/users/1"},
                     {"id":"b","method":"POST","url":"/orgs/{a:/org}/audit","dependsOn":["a"],
                      "headers":{"X-Manager":"{a:/manager/id}"},"body":{"user":"{a:/id}","note":"for {a:/id}"}}]}
        """)
    let resolve = try #require(items[1].resolve)
    let answer = ItemOutcome(status: 200, body: ByteBuffer(string: #"{"id":7,"org":"a b/c","manager":{"id":"m-3"}}"#))
    let request = try resolve([answer]).get()
    #expect(request.path == "/api/orgs/a%20b%2Fc/audit")
    #expect(request.headers.contains { $0.name == "X-Manager" && $0.value == "m-3" })
    #expect(request.body.map { String(buffer: $0) } == #"{"user":7,"note":"for {a:/id}"}"#)
    // A pointer that finds nothing, or an answer that is not JSON: a reason naming the reference.
    let missing = ItemOutcome(status: 200, body: ByteBuffer(string: #"{"id":7}"#))
    #expect(throws: DependencyFailure("{a:/org}: the answer of \"a\" has nothing at /org")) { try resolve([missing]).get() }
    let text = ItemOutcome(status: 200, body: ByteBuffer(string: "plain"))
    #expect(throws: DependencyFailure("{a:/org}: the answer of \"a\" is not JSON")) { try resolve([text]).get() }
}

@Test func identicalGetsAreCoalescedWhenTheRouteAllows() throws {
    let body = """
        {"requests":[{"id":"1","method":"GET","url":"/u/1"},{"id":"2","method":"GET","url":"/u/1"},
                     {"id":"3","method":"GET","url":"/u/1","headers":{"Accept":"text/plain"}},{"id":"4","method":"DELETE","url":"/u/1"},
                     {"id":"5","method":"get","url":"/u/./1"},{"id":"6","method":"GET","url":"/u/1","headers":{"Accept":"text/plain"}}]}
        """
    let items = try explicit(body, coalesce: true)
    // 6 matches 3 (not the path's first item): each variant on a path leads its own copies.
    #expect(items.map(\.sameAs) == [nil, 0, nil, nil, 0, 2])
    #expect(Set(items.map(\.href)).count == 6)  // every href stays unique
    #expect(try explicit(body).allSatisfy { $0.sameAs == nil })
    let templated = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[1,2,1,1]}"#), template: try template("/users/{item}"),
                                                basePath: "", maxItems: 10, coalesce: true)
    #expect(templated.map(\.sameAs) == [nil, nil, 0, 0])
}

/// A forwarded header on several lines keeps every line; an item's own field of that name
/// replaces them all.
@Test func inheritedHeadersKeepEveryLineUnlessTheItemSetsTheName() throws {
    let shared = BatchHeaders(inherited: [("X-Tenant", "t1"), ("X-Tenant", "t2"), ("Authorization", "Bearer a")])
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: """
        {"requests":[{"id":"1","method":"GET","url":"/u/1"},
                     {"id":"2","method":"GET","url":"/u/2","headers":{"x-tenant":"mine"}}]}
        """), basePath: "", maxItems: 10, headers: shared)
    func values(_ item: BatchItem, _ name: String) -> [String] {
        (item.request?.allHeaders ?? []).filter { $0.name.lowercased() == name }.map(\.value)
    }
    #expect(values(items[0], "x-tenant") == ["t1", "t2"])
    #expect(values(items[1], "x-tenant") == ["mine"])
    #expect(values(items[1], "authorization") == ["Bearer a"])
}

/// The call key coalescing compares: the batch's shared headers count, a header name's case
/// does not, and neither does a request id (Sheaf's own per item, or one the client sent).
@Test func coalescingIgnoresRequestIDsAndHeaderNameCase() throws {
    let body = """
        {"requests":[{"id":"1","method":"GET","url":"/u/1","headers":{"Accept":"text/plain","X-Request-ID":"a"}},
                     {"id":"2","method":"GET","url":"/u/1","headers":{"accept":"text/plain","x-request-id":"b"}},
                     {"id":"3","method":"GET","url":"/u/1","headers":{"Accept":"text/html"}},
                     {"id":"4","method":"GET","url":"/u/1","headers":{"ACCEPT":"text/html"}}]}
        """
    let shared = BatchHeaders(inherited: [("authorization", "Bearer t")], requestID: "batch")
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "/api", maxItems: 100,
                                                    headers: shared, coalesce: true)
    #expect(items.map(\.sameAs) == [nil, 0, nil, 2])
    // Each item still carries its own request id, which the key left out.
    #expect(Set(items.compactMap { $0.request?.requestID?.value }).count == 4)
}

@Test func xmlItemsNameTheirDependencies() throws {
    let items = try XMLBatchDecoder.decode(ByteBuffer(string: """
        <S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:"><S:request id="b" method="GET"><D:href>/b/{a:/id}</D:href>\
        <S:depends-on>a</S:depends-on></S:request><S:request id="a" method="GET"><D:href>/a</D:href></S:request></S:batch>
        """), basePath: "", maxItems: 10)
    #expect(items.map(\.id) == ["a", "b"])
    #expect(items[1].dependsOn == [0])
    let resolve = try #require(items[1].resolve)
    let request = try resolve([ItemOutcome(status: 200, body: ByteBuffer(string: #"{"id":"x"}"#))]).get()
    #expect(request.path == "/b/x")
}

@Test func thenAddsASecondCallPerElementOverTheFirstAnswer() throws {
    var t = try template("/users/{item}")
    t.then = try ChainTemplate(method: "GET", path: "/accounts/{/account/id}")
    let items = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"ids":[7,8]}"#), template: t, basePath: "/api", maxItems: 10)
    #expect(items.map(\.id) == ["0", "0.then", "1", "1.then"])
    #expect(items.map(\.dependsOn) == [[], [0], [], [2]])
    #expect(items[1].href == "/accounts/{/account/id}")
    let resolve = try #require(items[1].resolve)
    let request = try resolve([ItemOutcome(status: 200, body: ByteBuffer(string: #"{"account":{"id":"a/b"}}"#))]).get()
    #expect(request.path == "/api/accounts/a%2Fb")
    #expect(throws: (any Error).self) { try ChainTemplate(method: "GET", path: "/accounts/x") }  // no value used
    #expect(throws: (any Error).self) { try ChainTemplate(method: "GET", path: "/../{/id}") }
    #expect(throws: (any Error).self) { try ChainTemplate(method: "GET", path: "accounts/{/id}") }
}

@Test func referencedValuesCannotClimbOutOfTheBasePath() throws {
    let items = try explicit("""
        {"requests":[{"id":"a","method":"GET","url":"/x"},{"id":"b","method":"GET","url":"/{a:/t}/{a:/t}/admin","dependsOn":["a"]}]}
        """)
    let resolve = try #require(items[1].resolve)
    for value in ["..", ".", "", "../../x", "a/../../b"] {
        let answer = ItemOutcome(status: 200, body: ByteBuffer(string: #"{"t":"\#(value)"}"#))
        #expect(throws: DependencyFailure.self, "\(value)") { try resolve([answer]).get() }
    }
    let fine = try resolve([ItemOutcome(status: 200, body: ByteBuffer(string: #"{"t":"a b"}"#))]).get()
    #expect(fine.path == "/api/a%20b/a%20b/admin")
}

@Test func referenceTextIsReadInOnePassAndBounded() throws {
    // Braces that open nothing stay literal text, however many there are.
    let braces = String(repeating: "{", count: 50_000) + "x"
    let items = try explicit("""
        {"requests":[{"id":"a","method":"GET","url":"/x"},{"id":"b","method":"GET","url":"/y","dependsOn":["a"],
                      "headers":{"X-Braces":"\(braces)","X-Ref":"{a:/v}"}}]}
        """)
    let resolveB = try #require(items[1].resolve)
    let request = try resolveB([ItemOutcome(status: 200, body: ByteBuffer(string: #"{"v":1}"#))]).get()
    #expect(request.headers.first { $0.name == "X-Braces" }?.value == braces)
    let many = (0..<33).map { _ in "{a:/v}" }.joined()
    let error = decodeError { () throws(BatchError) in
        try explicit(#"{"requests":[{"id":"a","method":"GET","url":"/x"},{"id":"b","method":"GET","url":"/\#(many)","dependsOn":["a"]}]}"#)
    }
    #expect(error?.description == "requests[1].url: more than 32 value references")
}

@Test func onlyTheItemsOwnHeadersHoldReferences() throws {
    let shared = BatchHeaders(inherited: [("X-Tenant", "{a:/t}")], requestID: "{a:/t}")
    let items = try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: """
        {"requests":[{"id":"a","method":"GET","url":"/x"},{"id":"b","method":"GET","url":"/y/{a:/t}","dependsOn":["a"]}]}
        """), basePath: "", maxItems: 10, headers: shared)
    let resolve = try #require(items[1].resolve)
    let request = try resolve([ItemOutcome(status: 200, body: ByteBuffer(string: #"{"t":"z"}"#))]).get()
    #expect(request.path == "/y/z")
    #expect(request.headers.first { $0.name == "X-Tenant" }?.value == "{a:/t}")
    #expect(request.allHeaders.first { $0.name == "x-request-id" }?.value == "{a:/t}.b")
}

// Found by the FuzzPaths fuzz target: dots in the template's text next to a placeholder made a
// dot segment with the value once an upstream decodes %2F: "/x/..{item}" with "/secret" was sent
// as /x/..%2Fsecret, which nginx resolves to /secret.
@Test func aValueCannotCompleteADotSegmentWithTheTemplatesText() throws {
    let template = try PathTemplate("/x/..{item}")
    guard case .failure(let error) = template.expand(.string("/secret"), at: "/ids/0") else {
        Issue.record("expanded")
        return
    }
    #expect(error.status == 400 && error.field == "/ids/0")
    #expect(template.expand(.string("a"), at: "/ids/0") == .success("/x/..a"))
}

@Test(arguments: ["/x/%2e%2e/{item}", "/x/..%2F{item}", "/x/%2E%5c{item}"])
func templatesWithEncodedDotSegmentsAreRefused(path: String) {
    #expect(throws: PathTemplate.SyntaxError.self) { try PathTemplate(path) }
}

// The same through a value reference: "/x/..{a:/v}" with "/secret" in the answer.
@Test func aReferencedValueCannotCompleteADotSegment() throws {
    let items = try explicit("""
        {"requests":[{"id":"a","method":"GET","url":"/users/1"},
                     {"id":"b","method":"GET","url":"/x/..{a:/v}","dependsOn":["a"]}]}
        """)
    let resolve = try #require(items[1].resolve)
    let answer = ItemOutcome(status: 200, body: ByteBuffer(string: #"{"v":"/secret"}"#))
    #expect(throws: DependencyFailure.self) { try resolve([answer]).get() }
    let harmless = ItemOutcome(status: 200, body: ByteBuffer(string: #"{"v":"s"}"#))
    #expect(try resolve([harmless]).get().path == "/api/x/..s")
}

/// A member name twice in one object means different things to different readers (first wins
/// in one, last in another): a filter in front of Sheaf could approve a GET that Sheaf sends as a
/// DELETE. Refused with a 400 naming the second one, in both forms and wherever it sits.
@Test func aMemberNameGivenTwiceIsRefusedNamingIt() throws {
    let explicit: [(String, String)] = [
        (#"{"requests":[{"method":"GET","url":"/a","method":"DELETE"}]}"#, "requests[0].method"),
        (#"{"requests":[{"url":"/a"}],"requests":[{"url":"/b"}]}"#, "requests"),
        (#"{"requests":[{"url":"/a","headers":{"x-a":"1","x-a":"2"}}]}"#, "requests[0].headers.x-a"),
        (#"{"requests":[{"url":"/a","body":{"a/b":1,"a/b":2}}]}"#, "requests[0].body.a/b"),
    ]
    for (body, field) in explicit {
        let error = decodeError { () throws(BatchError) in
            try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: body), basePath: "", maxItems: 10)
        }
        #expect(error?.status == 400, "\(body)")
        #expect(error?.field == field, "\(body): \(String(describing: error))")
        #expect(error?.description.contains("given twice") == true)
    }
    // Many members: still found (a set, not a scan per name), at the right place.
    let many = "{" + (0..<40).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + ",\"k7\":1}"
    let manyError = decodeError { () throws(BatchError) in
        try JSONBatchDecoder.decodeExplicit(ByteBuffer(string: #"{"requests":[{"url":"/a","body":"# + many + "}]}"),
                                            basePath: "", maxItems: 10)
    }
    #expect(manyError?.field == "requests[0].body.k7")
    let templated: [(String, String, String)] = [
        (#"{"ids":[1,2],"ids":[3,4,5]}"#, "/ids", "/u/{item}"),
        (#"{"users":[{"org":"a","id":1},{"org":"b","id":2,"id":3}]}"#, "/users/1/id", "/orgs/{org}/users/{id}"),
        (#"{"outer":{"users":[],"users":[{"org":"a","id":1}]}}"#, "/outer/users", "/orgs/{org}/users/{id}"),
    ]
    for (body, field, path) in templated {
        let items = field.hasPrefix("/ids") ? "/ids" : field.hasPrefix("/outer") ? "/outer/users" : "/users"
        let error = decodeError { () throws(BatchError) in
            try JSONBatchDecoder.decode(ByteBuffer(string: body), template: try! template(path, items: items), basePath: "", maxItems: 10)
        }
        #expect(error?.status == 400, "\(body)")
        #expect(error?.field == field, "\(body): \(String(describing: error))")
    }
    // The same name in different objects, and names off the path, are fine.
    let fine = try JSONBatchDecoder.decode(ByteBuffer(string: #"{"meta":{"a":1},"other":{"a":2},"users":[{"org":"a","id":1},{"org":"a","id":2}]}"#),
                                           template: try template("/orgs/{org}/users/{id}", items: "/users"), basePath: "", maxItems: 10)
    #expect(fine.count == 2)
}

/// Coalescing tells batch-field sets apart by content: templated items on one path with other
/// template headers make their own call, and a set built again with the same fields (a new
/// array) still matches the first.
@Test func coalescingComparesEachItemsBatchFields() throws {
    var builder = ItemBuilder(basePath: "", coalesce: true)
    let plain: [(name: String, value: String)] = [("accept", "application/json")]
    let other: [(name: String, value: String)] = [("accept", "text/plain")]
    builder.addTemplated(path: "/x", method: "GET", headers: plain)
    builder.addTemplated(path: "/x", method: "GET", headers: other)
    builder.addTemplated(path: "/x", method: "GET", headers: plain)
    builder.addTemplated(path: "/x", method: "GET", headers: other)
    let items = try builder.finish()
    #expect(items.map(\.sameAs) == [nil, nil, 0, 1])
}
