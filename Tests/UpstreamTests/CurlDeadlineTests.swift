import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// The deadline runs from hand-over, also for items queued behind the connection limit.
    /// One connection, a 300ms timeout, and a first item that holds the connection until its
    /// deadline (`/silent`) or just before it (`/slow/250`, whose answer hands the connection to
    /// the next item): the two items queued behind it get their 504 at 300ms all the same, not
    /// when a connection's clock would have run out for them.
    @Test(arguments: ["/silent", "/slow/250"])
    func curlTimesOutQueuedItemsAtTheirDeadline(first: String) throws {
        let harness = try CurlHarness {
            $0.connections = 1
            $0.timeout = .milliseconds(300)
        }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let calls = [first, "/silent", "/silent"].map { harness.execute(UpstreamRequest(method: "GET", path: $0)).settlements }
        for (index, call) in calls.enumerated() {
            let settled = try #require(call.first(within: .seconds(2)), "item \(index) never settled")
            let milliseconds = settled.after.nanoseconds / 1_000_000
            switch settled.result {
            case .success(let response):
                #expect(index == 0 && first != "/silent", "item \(index) got a response")
                #expect(response.status == 200)
            case .failure(let error):
                #expect(error.kind == .timeout, "item \(index): \(error.message)")
                #expect(error.status == 504)
                // Items that never left the queue say what they waited for.
                let sent = index == 0 || (index == 1 && first != "/silent")
                #expect(error.message == "upstream legacy did not answer within 300ms" + (sent ? "" : " (waiting for a connection: all 1 were busy)"),
                        "item \(index): \(error.message)")
                #expect(settled.after >= .milliseconds(300), "item \(index) timed out after \(milliseconds)ms")
                #expect(settled.after < .milliseconds(400), "item \(index) timed out after \(milliseconds)ms")
            }
        }
    }
}
