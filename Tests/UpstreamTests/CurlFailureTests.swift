import Foundation
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

    /// Bytes an upstream sends on an idle keep-alive connection answer nothing Sheaf asked: the
    /// next item must not take them for its answer (it would report another request's status
    /// and body, perhaps another client's). It goes out on a fresh connection instead, and the
    /// upstream receives it.
    @Test(arguments: ["/stale-after/50", "/idle-408/50"])
    func bytesOnAnIdleConnectionAreNobodysAnswer(first: String) throws {
        let harness = try CurlHarness { $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        #expect(harness.execute(UpstreamRequest(method: "GET", path: first)).settlements.response()?.status == 200)
        usleep(250_000)  // the unsolicited bytes are in by now
        let next = harness.execute(UpstreamRequest(method: "GET", path: "/ok?next")).settlements.response()
        #expect(next?.status == 200)
        #expect(next.map { String(buffer: $0.body) } == "ok")
        let requests = harness.awaitRequests(2)
        #expect(requests.map(\.target) == [first, "/ok?next"])
    }

    /// Answers HTTP/1.1 forbids are 502s that say why, never the upstream's status: two
    /// Content-Length values that disagree (which body is it? RFC 9112 §6.3), and a 101 to a
    /// request that asked for no upgrade.
    @Test func anAnswerHTTP1ForbidsIsA502NamingIt() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let lengths = harness.execute(UpstreamRequest(method: "GET", path: "/two-lengths")).settlements.error()
        #expect(lengths?.status == 502)
        #expect(lengths?.message.contains("Content-Length") == true, "\(lengths?.message ?? "")")
        let switching = harness.execute(UpstreamRequest(method: "GET", path: "/switching")).settlements.error()
        #expect(switching?.status == 502)
        #expect(switching?.message.contains("101") == true, "\(switching?.message ?? "")")
        let huge = harness.execute(UpstreamRequest(method: "GET", path: "/huge-length")).settlements.error()
        #expect(huge?.status == 502)
        #expect(huge?.message.contains("is not a length") == true, "\(huge?.message ?? "")")
        // The connection after either is not reused wrongly: the next item gets its own answer.
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }
}
