import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// Reasons carry curl's own words, not a Swift optional's debug text.
    @Test func curlFailureReasonsReadPlainly() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let empty = harness.execute(UpstreamRequest(method: "GET", path: "/close")).settlements.error()
        #expect(empty?.kind == .unreachable)
        #expect(empty?.status == 502)
        #expect(empty?.message == "upstream legacy connection failed: Empty reply from server")
        let half = harness.execute(UpstreamRequest(method: "GET", path: "/half")).settlements.error()
        #expect(half?.kind == .unreachable)
        #expect(half?.message == "upstream legacy connection failed: transfer closed with 90 bytes remaining to read")
        // The upstream's own error status is an answer, not a failure.
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/status/503")).settlements.response()?.status == 503)
    }
}
