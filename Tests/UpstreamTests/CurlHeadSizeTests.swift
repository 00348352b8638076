import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// An item whose head is over max_request_header_bytes gets the same 431 as on HTTP/2 and
    /// never reaches the upstream; the items around it still do.
    @Test func curlRefusesAnOversizedHeadUnsent() throws {
        let harness = try CurlHarness { $0.maxRequestHeaderBytes = 1000 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let big = UpstreamRequest(method: "GET", path: "/ok/big", headers: [("X-Big", String(repeating: "v", count: 2000))])
        let refused = harness.execute(big).settlements.error()
        #expect(refused?.kind == .requestHeadTooLarge)
        #expect(refused?.status == 431)
        #expect(refused?.attempts == 0)
        #expect(refused?.message == harness.transport.configuration.headTooLarge(big)?.message)
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
        #expect(harness.awaitRequests(1).map(\.target) == ["/ok"])
    }
}
