import CCurlShim
import NIOCore

/// One item on an HTTP/1.1 upstream: its easy handle's inputs and the response as libcurl
/// delivers it. Touched only on the transport's curl thread, except `cancel()`.
final class CurlExchange: UpstreamCall, @unchecked Sendable {
    let request: UpstreamRequest
    let deadline: NIODeadline
    /// Where the result goes (nil once it went), with the caller's tag for it.
    private var sink: UpstreamResultSink?
    private let tag: Int
    /// Unowned: whoever holds a call holds its transport too (the fan-out run, the resilience
    /// layer, `auto`), so `cancel()` and the reading calls always find it.
    unowned let transport: CurlTransport
    let maxBodyBytes: Int

    var easy: UnsafeMutableRawPointer?
    /// `easy`'s `sheaf_transfer` while the exchange has the handle.
    var transfer: UnsafeMutablePointer<sheaf_transfer>?
    var headerList: UnsafeMutablePointer<curl_slist>?
    var headers = HeaderFields()
    var body = ResponseBody()
    var truncated = false
    /// A HEAD with a body: it cannot go out under CURLOPT_NOBODY (curl then sends no body), and
    /// without it curl waits for the body the answer's Content-Length announces. So the header
    /// callback ends the transfer once the final answer's head is in (the connection closes).
    let endsAtHead: Bool
    /// True once the transfer was ended on purpose after the final answer's head.
    private(set) var stoppedAtHead = false
    /// The body passed `max_response_bytes` and the transfer was ended there (see `bodyBytes`).
    private(set) var cutAtCap = false
    /// Connections refused to this exchange before its request went out (they held bytes
    /// nobody asked for): `CurlTransport` gives up after a few.
    var connectionsRefused = 0
    /// Times the request went on the wire, over every transfer it took.
    var sends = 0
    /// The header block being read answers with 1xx: another head follows.
    private var interimHead = false
    /// The final answer's head has ended with its blank line: what curl passes on now is the
    /// trailer section, which is not merged into the headers (RFC 9110 §6.5.1).
    private(set) var headEnded = false
    /// The final head's Content-Length, to tell a second one that disagrees.
    private var contentLength: Int?
    /// The final head has a Transfer-Encoding field (with a Content-Length too, it is refused).
    private var sawTransferEncoding = false
    /// What an obs-fold line would go on with now: nothing (no field yet, or a line that was
    /// none), an ordinary field, or one curl framed the body with (refused).
    private var foldTarget = FoldTarget.none
    private enum FoldTarget {
        case none, field, framing(StaticString)
    }
    /// A status line came and the head it starts has not ended: an error now is the head's.
    var isReadingHead: Bool { sawStatusLine && !headEnded }
    private var sawStatusLine = false
    /// Why the answer is not one HTTP/1.1 allows, when the header callback ended the transfer
    /// for it; the item's 502 says this instead of curl's "Failed writing header".
    private(set) var refusal: String?
    /// `max_response_header_bytes`, and the answer's header lines so far by the same count
    /// (RFC 9113 §6.5.2: 32 bytes per field besides its bytes; interim heads and trailers too).
    let maxHeadBytes: Int
    private var headBytes = 0

    init(request: UpstreamRequest, deadline: NIODeadline, transport: CurlTransport, maxBodyBytes: Int,
         maxHeadBytes: Int = 64 << 10, sink: UpstreamResultSink, tag: Int) {
        self.request = request
        self.deadline = deadline
        self.transport = transport
        self.maxBodyBytes = maxBodyBytes
        self.maxHeadBytes = maxHeadBytes
        self.sink = sink
        self.tag = tag
        self.endsAtHead = request.method == "HEAD" && request.body != nil
    }

    var isSettled: Bool { sink == nil }

    /// Stamped with the sends counted (libcurl's own re-sends included); a failure that says it
    /// was never sent (attempts 0) keeps that unless a send did happen.
    func settle(_ result: consuming UpstreamResult) {
        guard let sink else { return }
        self.sink = nil
        transport.exchangeSettled()
        switch consume result {
        case .success(var response):
            response.attempts = max(1, sends)
            sink.deliver(.success(response), tag: tag)
        case .failure(var error):
            error.attempts = sends > 0 ? sends : min(error.attempts, 1)
            sink.deliver(.failure(error), tag: tag)
        }
    }

    func cancel() {
        transport.cancel(self)
    }

    func suspendReading() {
        transport.setReading(self, suspended: true)
    }

    func resumeReading() {
        transport.setReading(self, suspended: false)
    }

    // Curl thread only: the write callback pauses the transfer while `readingSuspended`.
    var readingSuspended = false
    /// curl holds the transfer paused (CURL_WRITEFUNC_PAUSE was returned) until `curl_easy_pause`.
    var paused = false

    /// libcurl's header callback: a status line starts a new header block (after 1xx), an empty
    /// line ends one. Returns false to end the transfer (see `endsAtHead`).
    func headerLine(_ line: UnsafeBufferPointer<UInt8>) -> Bool {
        var end = line.count
        while end > 0 && (line[end - 1] == 10 || line[end - 1] == 13) { end -= 1 }
        if end == 0 {
            if !interimHead && !headEnded && contentLength != nil && sawTransferEncoding {
                // How responses are split (RFC 9112 §6.3: "ought to be handled as an error").
                refusal = "both Content-Length and Transfer-Encoding"
                return false
            }
            if !interimHead { headEnded = true }
            if endsAtHead && !interimHead {
                stoppedAtHead = true
                return false
            }
            return true
        }
        headBytes += end + 32
        if headBytes > maxHeadBytes {
            refusal = transport.configuration.responseHeadTooLarge
            return false
        }
        let bytes = UnsafeBufferPointer(rebasing: line[0..<end])
        // After the final head, a trailer field: not the answer's header, whatever its name says,
        // nor a new head if it looks like a status line.
        guard !headEnded else { return true }
        // "HTTP/": a status line. Compared byte by byte: a generic `starts(with:)` cost about a
        // hundred instructions for each header line (issue 13).
        let looksLikeStatus = end > 5 && bytes[0] == 0x48 && bytes[1] == 0x54 && bytes[2] == 0x54 && bytes[3] == 0x50 && bytes[4] == 0x2F
        if looksLikeStatus || !sawStatusLine {
            // RFC 9112 §4: "HTTP/1.x", a space, three digits, then a space or the line's end.
            // libcurl takes looser lines ("HTTP/2 200", "http/1.1 200", "200x").
            guard looksLikeStatus, end >= 12, bytes[5] == 0x31, bytes[6] == 0x2E, bytes[7] == 0x30 || bytes[7] == 0x31,
                  bytes[8] == 32, end == 12 || bytes[12] == 32 else {
                let shown = bytes.prefix(40).map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "?" }
                refusal = "the status line \"\(String(shown))\" is not HTTP/1.1's"
                return false
            }
            sawStatusLine = true
            headers.removeAll()
            // Room for a usual answer's fields: growing from empty was four allocations per item.
            headers.reserveCapacity(256)
            contentLength = nil
            foldTarget = .none
            sawTransferEncoding = false
            if let refused = HTTPSyntax.statusOutsideRange(UnsafeBufferPointer(rebasing: bytes[9..<12])) {
                refusal = refused
                return false
            }
            // "HTTP/1.1 1xx ...": another head follows.
            interimHead = bytes[9] == 0x31
            // Sheaf never asks for an upgrade (Upgrade is hop-by-hop, not forwarded): a 101
            // answers nothing it sent, and what follows it is not HTTP/1.1.
            if bytes[9] == 0x31, bytes[10] == 0x30, bytes[11] == 0x31 {
                refusal = "101 Switching Protocols to a request that asked for no upgrade"
                return false
            }
            return true
        }
        // Optional white space around a value is not part of it (RFC 9110 §5.5).
        var valueEnd = end
        while valueEnd > 0 && HTTPSyntax.isBlank(bytes[valueEnd - 1]) { valueEnd -= 1 }
        if HTTPSyntax.isBlank(bytes[0]) {
            // obs-fold: the field before goes on. RFC 9112 §5.2 has a proxy join it with a space
            // (kept as its first line only, a value was cut). Not for the fields curl framed the
            // body with already: it read their first line only.
            var start = 0
            while start < valueEnd && HTTPSyntax.isBlank(bytes[start]) { start += 1 }
            guard valueEnd > start else { return true }
            switch foldTarget {
            case .none:
                return true
            case .field:
                headers.continueLastValue(UnsafeBufferPointer(rebasing: bytes[start..<valueEnd]))
                return true
            case .framing(let name):
                refusal = "a folded \(name)"
                return false
            }
        }
        guard let colon = bytes.firstIndex(of: 58) else {
            foldTarget = .none
            return true
        }
        // White space before the colon is removed, not the field (RFC 9112 §5.1).
        var nameEnd = colon
        while nameEnd > 0 && HTTPSyntax.isBlank(bytes[nameEnd - 1]) { nameEnd -= 1 }
        guard nameEnd > 0 else {
            foldTarget = .none
            return true
        }
        let name = UnsafeBufferPointer(rebasing: bytes[0..<nameEnd])
        foldTarget = .field
        var start = colon + 1
        while start < valueEnd && HTTPSyntax.isBlank(bytes[start]) { start += 1 }
        if nameEnd == 17, HTTPSyntax.isName(name, "transfer-encoding") {
            sawTransferEncoding = true
            foldTarget = .framing("Transfer-Encoding")
        } else if nameEnd == 14, HTTPSyntax.isName(name, "content-length") {
            // Two lengths that disagree: which bytes are this body and which the next answer is
            // anyone's guess (RFC 9112 §6.3); curl takes one. Refused, and the connection closes.
            let value = UnsafeBufferPointer(rebasing: bytes[start..<valueEnd])
            // RFC 9110 §8.6: 1*DIGIT. Past 18 digits curl cannot hold it and read to the close.
            var length = 0, digits = true
            for byte in value {
                digits = digits && byte >= 0x30 && byte <= 0x39
                length = length &* 10 &+ Int(byte &- 0x30)
            }
            guard digits, (1...18).contains(value.count) else {
                refusal = "Content-Length \(String(decoding: value.prefix(40), as: UTF8.self)) is not a length"
                return false
            }
            if let first = contentLength, first != length {
                refusal = "Content-Length \(first) and \(length) in one answer"
                return false
            }
            contentLength = length
            foldTarget = .framing("Content-Length")
        }
        // Control bytes in the value become spaces there (`HeaderFields.append`).
        headers.append(name: name, value: UnsafeBufferPointer(rebasing: bytes[start..<max(start, valueEnd)]), lowercasingName: true)
        return true
    }

    /// Returns false once the body passed `max_response_bytes`: the transfer ends there and the
    /// item is answered with what came, flagged truncated (`cutAtCap`), not read on to its end.
    func bodyBytes(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        if body.mustGrow(for: bytes.count) { body.makeRoom(declared: headers.contentLength, limit: maxBodyBytes) }
        if body.writeCapped(bytes, limit: maxBodyBytes) { return true }
        truncated = true
        cutAtCap = true
        return false
    }
}
