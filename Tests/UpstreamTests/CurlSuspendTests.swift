import Foundation
import NIOCore
import Testing
import Upstream

extension CurlTransportTests {
    /// A suspended call stops taking its body (the transfer is paused, the socket's buffers fill,
    /// the upstream waits); once resumed it completes with the whole body.
    @Test func curlSuspendedReadingHoldsTheTransferUntilResumed() throws {
        let harness = try CurlHarness { $0.maxResponseBodyBytes = 16 << 20 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        let size = 8 << 20
        let (call, settlements) = harness.execute(UpstreamRequest(method: "GET", path: "/bytes/\(size)"))
        call.suspendReading()
        #expect(settlements.first(within: .milliseconds(500)) == nil, "the transfer completed while suspended")
        call.resumeReading()
        let response = settlements.response(within: .seconds(3))
        #expect(response?.status == 200)
        #expect(response?.body.readableBytes == size)
    }
}
