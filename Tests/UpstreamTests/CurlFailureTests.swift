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

    /// RFC 9110 §15: a status outside 100–599 is not HTTP's; the item is a 502 that names it.
    @Test func aStatusOutsideHTTPsRangeIsA502NamingIt() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        for code in ["999", "600"] {
            let error = harness.execute(UpstreamRequest(method: "GET", path: "/status/\(code)")).settlements.error()
            #expect(error?.status == 502, "\(code)")
            #expect(error?.message.contains("status \(code) is outside 100–599") == true, "\(error?.message ?? "")")
        }
        // Below 100 libcurl refuses the status line itself, before the header callback.
        let low = harness.execute(UpstreamRequest(method: "GET", path: "/status/099")).settlements.error()
        #expect(low?.status == 502 && low?.message.contains("Unsupported response code") == true, "\(low?.message ?? "")")
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }

    /// Content-Length beside Transfer-Encoding is how responses are split (RFC 9112 §6.3 says to
    /// handle it as an error): a 502, not an item reporting a length its body does not have.
    @Test func bothContentLengthAndTransferEncodingIsA502() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let error = harness.execute(UpstreamRequest(method: "GET", path: "/cl-te")).settlements.error()
        #expect(error?.status == 502)
        #expect(error?.message.contains("both Content-Length and Transfer-Encoding") == true, "\(error?.message ?? "")")
        #expect(harness.execute(UpstreamRequest(method: "GET", path: "/ok")).settlements.response()?.status == 200)
    }

    /// A folded Transfer-Encoding frames the body one way for libcurl (its first line) and
    /// another for the headers reported: refused, as a folded Content-Length is.
    @Test func aFoldedTransferEncodingIsA502() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let error = harness.execute(UpstreamRequest(method: "GET", path: "/folded-te")).settlements.error()
        #expect(error?.status == 502)
        #expect(error?.message.contains("a folded Transfer-Encoding") == true, "\(error?.message ?? "")")
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

    /// A connection that closes inside the head leaves an answer HTTP/1.1 calls incomplete
    /// (RFC 9112 §8): libcurl returned it as whole, and the item reported the upstream's 201.
    @Test func aHeadCutBeforeItsEndIsA502() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        for method in ["GET", "POST"] {
            let error = harness.execute(UpstreamRequest(method: method, path: "/head-cut")).settlements.error()
            #expect(error?.status == 502, "\(method)")
            #expect(error?.message.contains("closed the connection before the response head ended") == true, "\(error?.message ?? "")")
        }
    }

    /// A status line must be `HTTP/1.x`, three digits, then a space or its end (RFC 9112 §4);
    /// libcurl takes looser ones.
    @Test func aLooseStatusLineIsA502() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        for variant in 0..<3 {
            let error = harness.execute(UpstreamRequest(method: "GET", path: "/loose/\(variant)")).settlements.error()
            #expect(error?.status == 502, "variant \(variant)")
            #expect(error?.message.contains("sent an invalid HTTP/1.1 response") == true, "\(error?.message ?? "")")
        }
    }

    /// A header field past what libcurl reads (100 KiB) is named for what it is, not as libcurl's
    /// "Out of memory".
    @Test func aHeadPastWhatLibcurlReadsIsA502NamingIt() throws {
        let harness = try CurlHarness()
        defer { #expect(throws: Never.self) { try harness.close() } }
        let error = harness.execute(UpstreamRequest(method: "GET", path: "/huge-header")).settlements.error()
        #expect(error?.status == 502)
        #expect(error?.message.contains("a header line longer than libcurl reads (100 KiB)") == true, "\(error?.message ?? "")")
    }
}
