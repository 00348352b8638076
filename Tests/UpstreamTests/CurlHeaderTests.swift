import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// A body goes out with the Content-Type the item has, or none, as on HTTP/2: curl would
    /// label a POSTFIELDS body application/x-www-form-urlencoded on its own.
    @Test func curlSendsNoContentTypeUnlessTheItemHasOne() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let bare = UpstreamRequest(method: "POST", path: "/ok", body: ByteBuffer(string: "a=1"))
        let typed = UpstreamRequest(method: "PUT", path: "/ok", headers: [("Content-Type", "application/json")],
                                    body: ByteBuffer(string: "{}"))
        #expect(harness.execute(bare).settlements.response()?.status == 200)
        #expect(harness.execute(typed).settlements.response()?.status == 200)
        let received = harness.awaitRequests(2)
        #expect(received.first?.values("content-type") == [])
        #expect(received.last?.values("content-type") == ["application/json"])
    }

    /// A header with an empty value goes out empty: in curl's header list "Name:" means "do not
    /// send Name", so the engine must write it as "Name;".
    @Test func curlSendsHeadersWithEmptyValues() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let request = UpstreamRequest(method: "GET", path: "/ok", headers: [("X-Empty", ""), ("X-Full", "v"), ("Accept", "")])
        #expect(harness.execute(request).settlements.response()?.status == 200)
        let received = try #require(harness.awaitRequests(1).first)
        #expect(received.values("x-empty") == [""])
        #expect(received.values("x-full") == ["v"])
        #expect(received.values("accept") == [""])
    }
}

extension CurlTransportTests {
    /// Every field goes out as the item has it, shared fields first, a repeated name in its
    /// order, values of every length whole (the engine lays the list out in one block of its own).
    @Test func curlSendsEveryFieldWholeAndInOrder() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let long = String(repeating: "v", count: 3000)
        let shared = [("X-Shared", "s1"), ("X-Multi", "first"), ("X-Long", long)]
        let requests = (0..<3).map { index in
            UpstreamRequest(method: "GET", path: "/ok?q=\(index)",
                            headers: [("X-Multi", "second \(index)"), ("x-odd", String(repeating: "ab", count: index)), ("X-Id", "id-\(index)")],
                            batchHeaders: shared)
        }
        for request in requests { #expect(harness.execute(request).settlements.response()?.status == 200) }
        let received = harness.awaitRequests(3)
        #expect(received.count == 3)
        for (index, request) in received.enumerated() {
            #expect(request.target == "/ok?q=\(index)")
            let names = request.headers.map { $0.name.lowercased() }
            #expect(names.firstIndex(of: "x-shared")! < names.firstIndex(of: "x-id")!)
            #expect(request.values("x-shared") == ["s1"])
            #expect(request.values("x-multi") == ["first", "second \(index)"])
            #expect(request.values("x-long") == [long])
            #expect(request.values("x-odd") == [String(repeating: "ab", count: index)])
            #expect(request.values("x-id") == ["id-\(index)"])
            #expect(request.values("accept") == [])
        }
    }
}

extension CurlTransportTests {
    /// Fields after the body (a chunked answer's trailer section) are not headers: RFC 9110
    /// §6.5.1 forbids merging them, and an upstream could otherwise set the ETag, Location or
    /// Content-Type the 207 reports after its body. HTTP/2 drops them too.
    @Test func trailerFieldsAreNotReportedAsHeaders() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let response = try #require(harness.execute(UpstreamRequest(method: "GET", path: "/trailers")).settlements.response())
        #expect(response.status == 200)
        #expect(String(buffer: response.body) == "ok")
        #expect(response.headers.map(\.name) == ["content-type", "transfer-encoding", "trailer"])
        #expect(response.headers.first(name: "content-type") == "text/plain")
        #expect(response.headers.first(name: "etag") == nil && response.headers.first(name: "location") == nil)
        // A trailer line that looks like a status line does not start a new head either.
        let disguised = try #require(harness.execute(UpstreamRequest(method: "GET", path: "/trailer-status")).settlements.response())
        #expect(disguised.status == 200)
        #expect(disguised.headers.map(\.name) == ["content-type", "transfer-encoding"])
        #expect(disguised.headers.first(name: "etag") == nil)
    }

    /// An obs-fold (a line that starts with a space or tab) continues the field before it:
    /// RFC 9112 §5.2 has a proxy join it with a space, not keep the first line only.
    @Test func aFoldedFieldIsReportedWhole() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let response = try #require(harness.execute(UpstreamRequest(method: "GET", path: "/folded")).settlements.response())
        #expect(response.status == 200)
        #expect(response.headers.first(name: "x-long") == "first second third")
        #expect(response.headers.first(name: "content-type") == "text/plain")
        #expect(response.headers.first(name: "etag") == "\"e1\"")
        #expect(String(buffer: response.body) == "ok")
        // A fold of Content-Length would change how the body is framed: refused.
        let framing = harness.execute(UpstreamRequest(method: "GET", path: "/folded-length")).settlements.error()
        #expect(framing?.status == 502)
        #expect(framing?.message.contains("folded Content-Length") == true, "\(framing?.message ?? "")")
    }

    /// White space before a field's colon is removed, not the field (RFC 9112 §5.1), and control
    /// bytes in a value become spaces (RFC 9110 §5.5: CR and NUL must not pass): the 207 carries
    /// them to clients that would read a CR as a line's end.
    @Test func aFieldsNameLosesTrailingSpaceAndItsValueItsControls() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let response = try #require(harness.execute(UpstreamRequest(method: "GET", path: "/space-colon")).settlements.response())
        #expect(response.headers.first(name: "etag") == "\"e\"")
        #expect(response.headers.first(name: "x-ctl") == "a b c d")
    }
}

extension CurlTransportTests {
    /// An answer's head is capped by `max_response_header_bytes`, as on HTTP/2 (RFC 9113 §6.5.2
    /// count: 32 bytes per field besides its name and value): past it the item is a 502 naming the key.
    @Test func aResponseHeadOverTheCapIsA502NamingTheKey() throws {
        let harness = try CurlHarness { $0.maxResponseHeaderBytes = 64 << 10 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let over = harness.execute(UpstreamRequest(method: "GET", path: "/many-headers/100")).settlements.error()
        #expect(over?.message.contains("max_response_header_bytes, 65536 bytes") == true, "\(over?.message ?? "")")
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/many-headers/10")).settlements.response()?.status == 200)
    }
}

extension CurlTransportTests {
    /// A body past `max_response_bytes` is cut there: the item is answered at once, flagged
    /// truncated, instead of reading on until the body ends or the item times out as a 504.
    @Test func aBodyPastTheCapIsAnsweredAtTheCapNotReadToItsEnd() throws {
        let harness = try CurlHarness { $0.maxResponseBodyBytes = 64 << 10; $0.timeout = .seconds(3) }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let start = ContinuousClock.now
        let response = harness.execute(UpstreamRequest(method: "GET", path: "/endless")).settlements.response()
        #expect(ContinuousClock.now - start < .seconds(1))
        #expect(response?.status == 200 && response?.bodyTruncated == true && response?.body.readableBytes == 64 << 10)
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }
}

extension CurlTransportTests {
    /// An answer whose head came but whose body did not end in time is a 504 that says so.
    @Test func aBodyThatDoesNotEndInTimeIsA504ThatSaysTheAnswerBegan() throws {
        let harness = try CurlHarness { $0.timeout = .milliseconds(300) }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let stalled = harness.execute(UpstreamRequest(method: "GET", path: "/stall-body")).settlements.error()
        #expect(stalled?.message == "upstream legacy began its answer but did not finish it within 300ms", "\(stalled?.message ?? "")")
        let silent = harness.execute(UpstreamRequest(method: "GET", path: "/silent")).settlements.error()
        #expect(silent?.message == "upstream legacy did not answer within 300ms", "\(silent?.message ?? "")")
    }

    /// An item that timed out waiting for one of the upstream's connections says so.
    @Test func anItemThatNeverGotAConnectionSaysItWaited() throws {
        let harness = try CurlHarness { $0.timeout = .milliseconds(300); $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let first = harness.execute(UpstreamRequest(method: "GET", path: "/silent"))
        let second = harness.execute(UpstreamRequest(method: "GET", path: "/ok?2"))
        #expect(first.settlements.error()?.message == "upstream legacy did not answer within 300ms")
        let waited = second.settlements.error()?.message ?? ""
        #expect(waited == "upstream legacy did not answer within 300ms (waiting for a connection: all 1 were busy)", "\(waited)")
    }
}

extension CurlTransportTests {
    /// Trailer fields are not reported, however long: libcurl 7.88 keeps 4 KiB of them and fails
    /// the transfer past that ("Out of memory in chunked-encoding"), after the body's last chunk.
    @Test func aLongTrailerSectionDoesNotCostTheAnswer() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let settled = harness.execute(UpstreamRequest(method: "GET", path: "/big-trailer")).settlements
        let response = settled.response()
        #expect(response?.status == 200 && response.map { String(buffer: $0.body) } == "ok", "\(settled.error()?.message ?? "")")
        #expect(response?.headers.first(name: "x-t") == nil)
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }
}

