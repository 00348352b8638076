import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// shutdown() settles every call still open with the 503, whether its request is on the
    /// wire, queued behind the connection limit, or just handed over; calls that already
    /// settled are left alone.
    @Test func curlShutdownSettlesEveryOpenCall() throws {
        let harness = try CurlHarness { $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
        var open = (0..<3).map { _ in harness.execute(UpstreamRequest(method: "GET", path: "/silent")).settlements }
        harness.awaitRequests(2)
        open.append(harness.execute(UpstreamRequest(method: "GET", path: "/silent")).settlements)
        harness.transport.shutdown()
        for (index, call) in open.enumerated() {
            let error = call.error(within: .seconds(1))
            #expect(error?.kind == .shuttingDown, "call \(index)")
            #expect(error?.status == 503)
            #expect(error?.message == "Sheaf is shutting down")
        }
    }

}
