import Foundation
import Logging
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
        harness.transport.beginShutdown()
        for (index, call) in open.enumerated() {
            let error = call.error(within: .seconds(1))
            #expect(error?.kind == .shuttingDown, "call \(index)")
            #expect(error?.status == 503)
            #expect(error?.message == "Sheaf shut down before the item finished")
        }
        // The /ok and the first /silent: the others never had the connection.
        #expect(harness.server.requests.count == 2)
    }

    /// Once shutdown() is called nothing may reach the multi handle, which the curl thread cleans
    /// up on its way out: execute() settles at once with the 503 (never sent), and cancel() does
    /// nothing, so a call in flight at shutdown gets the 503, not "cancelled", exactly once.
    @Test func curlCallsAfterShutdownSettleAtOnce() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let inFlight = harness.execute(UpstreamRequest(method: "GET", path: "/silent"))
        harness.awaitRequests(1)
        harness.transport.beginShutdown()
        inFlight.call.cancel()
        let error = inFlight.settlements.error(within: .seconds(1))
        #expect(error?.kind == .shuttingDown)
        #expect(error?.message == "Sheaf shut down before the item finished")
        // The curl thread settles its calls last thing before it cleans up and ends.
        usleep(20_000)
        let late = harness.execute(UpstreamRequest(method: "GET", path: "/ok"))
        #expect(late.settlements.count == 1, "execute() after shutdown() did not settle at once")
        let refused = late.settlements.error(within: .zero)
        #expect(refused?.kind == .shuttingDown)
        #expect(refused?.attempts == 0)
        late.call.cancel()
        inFlight.call.cancel()
        harness.transport.beginShutdown()
        #expect(harness.server.requests.map(\.target) == ["/silent"])
    }
}

extension CurlTransportTests {
    /// A transport that was shut down and let go is freed: its curl thread lets go of it when
    /// it ends (a reload drops the old generation's transports; a kept cycle leaked each one).
    @Test func aShutDownCurlTransportIsFreed() async throws {
        weak var released: CurlTransport?
        do {
            let endpoint = UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: 9, basePath: "")
            let transport = CurlTransport(configuration: UpstreamConfiguration(name: "gone", endpoint: endpoint, protocol: .http1),
                                          logger: Logger(label: "test"))
            released = transport
            await transport.shutdown()
        }
        for _ in 0..<200 where released != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(released == nil)
    }
}
