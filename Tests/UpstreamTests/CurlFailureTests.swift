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
        // No status line at all (an HTTP/2-only server, say): libcurl's "Received HTTP/0.9 when
        // not allowed" said nothing an operator could act on.
        let notHTTP = harness.execute(UpstreamRequest(method: "GET", path: "/not-http")).settlements.error()
        #expect(notHTTP?.status == 502)
        #expect(notHTTP?.message == "upstream legacy did not answer in HTTP/1.x (no status line; an upstream that speaks only HTTP/2 needs protocol: h2c, h2 or auto)")
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

    /// libcurl sends a request again by itself when a reused keep-alive connection closes
    /// without a byte of answer (up to five times, whatever the method). A POST may have been
    /// processed by then: it goes once and its 502 says why it was not sent again. A GET goes
    /// again, and `attempts` counts every send.
    @Test func aReusedConnectionThatDiesUnansweredResendsOnlyWhatMayGoTwice() throws {
        let harness = try CurlHarness { $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
        let post = harness.execute(UpstreamRequest(method: "POST", path: "/close", body: ByteBuffer(string: "pay"))).settlements.error()
        #expect(post?.status == 502)
        #expect(post?.message == "upstream legacy closed the connection before answering; a POST is not sent again (the upstream may have processed it)")
        #expect(post?.attempts == 1)
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok?again")).settlements.response()?.status == 200)
        let get = harness.execute(UpstreamRequest(method: "GET", path: "/close?get")).settlements.error()
        #expect(get?.status == 502)
        #expect(get?.attempts == 2)
        #expect(get?.resends == 1)
        let requests = harness.awaitRequests(5)
        #expect(requests.map(\.target) == ["/ok", "/close", "/ok?again", "/close?get", "/close?get"])
    }

    /// A head whose first line is a fold, on an easy handle a transfer used before: libcurl
    /// 7.88 kept a pointer to that transfer's last stored header (freed since) and appended the
    /// fold to it (curl#11101), which corrupted the heap and crashed Sheaf a request or two later.
    /// Each answer now ends, a 502 naming it, and the transfers after it are served.
    @Test func aHeadThatStartsWithAFoldIsA502AndHarmsNoLaterTransfer() throws {
        let harness = try CurlHarness { $0.connections = 1 }
        defer { #expect(throws: Never.self) { try harness.close() } }
        for round in 0..<8 {
            #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok?r=\(round)")).settlements.response()?.status == 200)
            let folded = harness.execute(UpstreamRequest(method: "GET", path: "/fold-first?r=\(round)")).settlements.error()
            #expect(folded?.status == 502)
            #expect(folded?.message.contains("sent an invalid HTTP/1.1 response") == true, "\(folded?.message ?? "")")
        }
    }

    /// Answers HTTP/1.1 forbids, each a 502 whose reason names what was wrong, never the
    /// upstream's status, and the connection after it is not reused wrongly (the next item gets
    /// its own answer):
    /// - two Content-Length values that disagree (which body is it? RFC 9112 §6.3), or one that
    ///   is not a length;
    /// - a 101 to a request that asked for no upgrade;
    /// - a status outside 100–599 (RFC 9110 §15; below 100 libcurl refuses the line itself);
    /// - Content-Length beside Transfer-Encoding, how responses are split (RFC 9112 §6.3);
    /// - a folded Transfer-Encoding, whose first line alone libcurl frames the body by;
    /// - a connection closed inside the head (RFC 9112 §8), which libcurl took for whole: the
    ///   item reported the status the head began with, for a POST too;
    /// - a status line other than `HTTP/1.x SP 3DIGIT` (RFC 9112 §4), which libcurl takes;
    /// - a header line past libcurl's 100 KiB, which it calls "Out of memory".
    @Test(arguments: [
        ("/two-lengths", "Content-Length 5 and 7"), ("/huge-length", "is not a length"), ("/switching", "101"),
        ("/status/999", "status 999 is outside 100–599"), ("/status/600", "status 600 is outside 100–599"),
        ("/status/099", "Unsupported response code"),
        ("/cl-te", "both Content-Length and Transfer-Encoding"), ("/folded-te", "a folded Transfer-Encoding"),
        ("/head-cut", "closed the connection before the response head ended"),
        ("/loose/0", "is not HTTP/1.1's"), ("/loose/1", "is not HTTP/1.1's"), ("/loose/2", "is not HTTP/1.1's"),
        ("/huge-header", "a header line longer than libcurl reads (100 KiB)"),
    ])
    func anAnswerHTTP1ForbidsIsA502NamingWhy(path: String, reason: String) throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        for method in path == "/head-cut" ? ["GET", "POST"] : ["GET"] {
            let error = harness.execute(UpstreamRequest(method: method, path: path)).settlements.error()
            #expect(error?.status == 502, "\(method) \(path)")
            #expect(error?.message.contains(reason) == true, "\(error?.message ?? "")")
        }
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }
}
