import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// Every method goes on the wire as itself, with the item's body when it has one: curl's
    /// POSTFIELDS would otherwise turn a GET into a POST, and NOBODY would drop a HEAD's body.
    @Test(arguments: [
        ("GET", "q=1"), ("GET", nil), ("HEAD", "h=1"), ("HEAD", nil), ("POST", "p=1"), ("POST", nil),
        ("PUT", "u=1"), ("DELETE", "d=1"), ("PATCH", nil), ("OPTIONS", ""),
    ] as [(String, String?)])
    func curlSendsEveryMethodAsItself(method: String, body: String?) throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let request = UpstreamRequest(method: method, path: "/ok", body: body.map { ByteBuffer(string: $0) })
        let response = harness.execute(request).settlements.response()
        #expect(response?.status == 200)
        // HEAD: the answer's Content-Length announces a body that never comes; curl must not wait for it.
        #expect(response.map { String(buffer: $0.body) } == (method == "HEAD" ? "" : "ok"))
        let received = try #require(harness.awaitRequests(1).first)
        #expect(received.method == method)
        #expect(received.target == "/ok")
        #expect(received.version == "HTTP/1.1")
        #expect(received.body == Array((body ?? "").utf8))
        #expect(received.values("content-length") == (body.map { [String($0.utf8.count)] } ?? []))
        #expect(received.values("transfer-encoding").isEmpty)
    }

    /// Handles are kept configured from one transfer to the next (no curl_easy_reset): with one
    /// connection, one handle carries every method and body in turn, and nothing of a transfer
    /// (its method, its body, HEAD's no-body setting) leaks into the next.
    @Test func aReusedHandleCarriesNothingOverFromTheTransferBefore() throws {
        let harness = try CurlHarness { $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let sequence: [(String, String?)] = [
            ("POST", "p=1"), ("GET", nil), ("HEAD", nil), ("GET", nil), ("PUT", "u=22"), ("DELETE", nil), ("HEAD", "h=1"),
            ("POST", nil), ("GET", "q=1"), ("HEAD", nil), ("OPTIONS", nil), ("GET", nil),
        ]
        for (index, (method, body)) in sequence.enumerated() {
            let request = UpstreamRequest(method: method, path: "/ok?i=\(index)", body: body.map { ByteBuffer(string: $0) })
            let response = harness.execute(request).settlements.response()
            #expect(response?.status == 200, "\(index) \(method)")
            #expect(response.map { String(buffer: $0.body) } == (method == "HEAD" ? "" : "ok"), "\(index) \(method)")
            let received = try #require(harness.awaitRequests(index + 1).last)
            #expect(received.method == method, "\(index)")
            #expect(received.target == "/ok?i=\(index)")
            #expect(received.body == Array((body ?? "").utf8), "\(index) \(method)")
            #expect(received.values("content-length") == (body.map { [String($0.utf8.count)] } ?? []), "\(index) \(method)")
        }
    }
}
