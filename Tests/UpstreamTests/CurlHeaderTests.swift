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
}
