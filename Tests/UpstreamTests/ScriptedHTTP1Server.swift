import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// An HTTP/1.1 upstream in the test process, on 127.0.0.1 and a free port, that records every
/// request as it came (request line, headers as sent, body bytes) and answers by path:
///
/// - `/ok`: 200 with the body `ok` (headers only for HEAD);
/// - `/status/N`: status N (its digits as given) with an empty body;
/// - `/silent`: reads the request and never answers, keeping the connection open;
/// - `/close`: closes the connection without answering;
/// - `/slow/MS`: `/ok`'s answer after MS milliseconds;
/// - `/half`: promises 100 body bytes, sends 10, then closes;
/// - `/busy-once/RA`: the first time for each full target (query included), 503 with
///   `Retry-After: RA`; afterwards `/ok`'s answer;
/// - `/busy/RA`: always 503 with `Retry-After: RA`;
/// - `/stale-after/MS`: `/ok`'s answer, then MS ms later an answer nobody asked for (`299`,
///   body `stale`) on the idle keep-alive connection;
/// - `/idle-408/MS`: `/ok`'s answer, then MS ms later `408` with `Connection: close`, and the
///   connection closes (what servers send when a keep-alive connection idles too long);
/// - `/two-lengths`: two `Content-Length` fields that disagree (5 and 7), then 7 bytes;
/// - `/huge-length`: a Content-Length of 30 digits, then 5 bytes and close;
/// - `/switching`: `101 Switching Protocols` to a request that asked for no upgrade, then close;
/// - `/trailers`: 200, `Content-Type: text/plain`, a chunked body `ok`, then the trailer fields
///   `Content-Type`, `ETag`, `Location` and `Content-Length`;
/// - `/folded`: 200 with `Content-Type`, then an `X-Long` field that goes on over two obs-fold lines, then `ETag`;
/// - `/folded-length`: 200 whose `Content-Length: 2` goes on in an obs-fold line;
/// - `/cl-te`: 200 with both `Content-Length: 5` and `Transfer-Encoding: chunked`, then a chunked `ok`;
/// - `/trailer-status`: `/trailers`' answer whose trailer section starts with a status line,
///   `HTTP/1.1 999 X: y` (a field to libcurl), then `ETag`;
/// - `/folded-te`: 200 whose `Transfer-Encoding: gzip` goes on in an obs-fold line ` chunked`, then close;
/// - `/fold-first`: 200 whose first header line is an obs-fold (` X-A: 1`), before any field;
/// - `/head-cut`: `201` and an `ETag` line, then the connection closes before the head's blank line;
/// - `/loose/N`: status line variant N: `HTTP/1.1 200x OK`, `HTTP/2 200 OK`, `http/1.1 200 OK`;
/// - `/space-colon`: 200 with `ETag : "e"` (white space before the colon) and `X-Ctl` holding CR, ESC and DEL;
/// - `/huge-header`: 200 with a 200,000-byte `X-Big` field;
/// - `/big-trailer`: 200, a chunked body `ok`, then a 5000-byte trailer field `X-T`;
/// - `/stall-body`: 200 with `Content-Length: 10` and two bytes of body, then nothing more;
/// - `/endless`: 200, chunked, then a 16 KiB chunk every 2 ms while the connection is open (10 s at most);
/// - `/many-headers/N`: 200 with N fields of 1000 bytes each (`X-F0`, `X-F1`, ...), body `ok`;
/// - anything else: 404.
///
/// The parser is its own (no NIOHTTP1) so that the tests see exactly what the engine put on the
/// wire: one request head per `\r\n\r\n`, a body only as long as its `Content-Length`.
final class ScriptedHTTP1Server: Sendable {
    /// One request as it arrived.
    struct Request: Sendable {
        var method: String
        var target: String
        var version: String
        /// In arrival order, names as sent.
        var headers: [(name: String, value: String)]
        var body: [UInt8]

        /// Values of every header named `name`, compared case-insensitively.
        func values(_ name: String) -> [String] {
            headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
        }
    }

    let port: Int
    private let group: MultiThreadedEventLoopGroup
    private let log = RequestLog()
    /// Targets answered once already (the `-once` faults).
    fileprivate let seen = NIOLockedValueBox<Set<String>>([])
    private let stopped = NIOLockedValueBox(false)

    init() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let log = self.log
        let seen = self.seen
        let channel: Channel
        do {
            channel = try ServerBootstrap(group: group)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(ScriptedConnection(log: log, seen: seen))
                    }
                }
                .bind(host: "127.0.0.1", port: 0).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        self.group = group
        self.port = channel.localAddress?.port ?? 0
    }

    /// Requests received so far, in arrival order.
    var requests: [Request] { log.requests.withLockedValue { $0 } }

    /// Closes the listener and every connection and ends the server's thread; idempotent.
    func stop() throws {
        let first = stopped.withLockedValue { wasStopped in
            defer { wasStopped = true }
            return !wasStopped
        }
        if first { try group.syncShutdownGracefully() }
    }

    /// What the connections write to and the tests read from.
    fileprivate final class RequestLog: Sendable {
        let requests = NIOLockedValueBox<[Request]>([])
    }
}

/// One accepted connection: gathers bytes until a whole request is in, then answers it.
private final class ScriptedConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let log: ScriptedHTTP1Server.RequestLog
    private let seen: NIOLockedValueBox<Set<String>>
    private var pending: [UInt8] = []
    /// Set once an answer means to stop reading this connection (`/silent`, `/close`, `/half`).
    private var done = false

    init(log: ScriptedHTTP1Server.RequestLog, seen: NIOLockedValueBox<Set<String>>) {
        self.log = log
        self.seen = seen
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        pending += buffer.readBytes(length: buffer.readableBytes) ?? []
        while !done, let request = takeRequest() {
            log.requests.withLockedValue { $0.append(request) }
            answer(request, context: context)
        }
    }

    /// The first whole request in `pending`, removed from it; nil while more bytes are needed.
    private func takeRequest() -> ScriptedHTTP1Server.Request? {
        let terminator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let headEnd = pending.firstRange(of: terminator) else { return nil }
        let lines = String(decoding: pending[..<headEnd.lowerBound], as: UTF8.self)
            .split(separator: "\r\n", omittingEmptySubsequences: false)
        let requestLine = lines.first.map { $0.split(separator: " ").map(String.init) } ?? []
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let value = line[line.index(after: colon)...].trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            headers.append((String(line[..<colon]), String(value)))
        }
        let length = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        guard pending.count - headEnd.upperBound >= length else { return nil }
        let body = Array(pending[headEnd.upperBound..<headEnd.upperBound + length])
        pending.removeFirst(headEnd.upperBound + length)
        return ScriptedHTTP1Server.Request(
            method: requestLine.count > 0 ? requestLine[0] : "", target: requestLine.count > 1 ? requestLine[1] : "",
            version: requestLine.count > 2 ? requestLine[2] : "", headers: headers, body: body)
    }

    private func answer(_ request: ScriptedHTTP1Server.Request, context: ChannelHandlerContext) {
        // A query only makes a target unique (property tests); it never picks the answer.
        let path = request.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.target
        let parts = path.split(separator: "/").map(String.init)
        let isHead = request.method == "HEAD"
        switch (parts.first ?? "", parts.count) {
        case ("ok", 1):
            send(status: 200, body: "ok", headOnly: isHead, context: context)
        case ("status", 2) where Int(parts[1]) != nil:
            // The digits as the path gives them: `/status/099` sends `099`, not `99`.
            write("HTTP/1.1 \(parts[1]) Scripted\r\nContent-Length: 0\r\n\r\n", context: context)
        case ("slow", 2) where Int(parts[1]) != nil:
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(Int64(parts[1])!)) {
                let (connection, context) = bound.value
                connection.send(status: 200, body: "ok", headOnly: isHead, context: context)
            }
        case ("bytes", 2) where Int(parts[1]) != nil:
            // After a moment, so that a test can suspend the call before the body comes.
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(50)) {
                let (connection, context) = bound.value
                connection.send(status: 200, body: String(repeating: "a", count: Int(parts[1])!), headOnly: isHead, context: context)
            }
        case ("big-trailer", 1):
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
                  + String(repeating: "t", count: 5000) + "\r\n\r\n", context: context)
        case ("stall-body", 1):
            write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", context: context)
        case ("endless", 1):
            write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", context: context)
            let chunk = "4000\r\n" + String(repeating: "e", count: 0x4000) + "\r\n"
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            for i in 1...5000 {
                context.eventLoop.scheduleTask(in: .milliseconds(Int64(2 * i))) {
                    let (connection, context) = bound.value
                    if context.channel.isActive { connection.write(chunk, context: context) }
                }
            }
        case ("busy-once", 2) where seen.withLockedValue({ $0.insert(request.target).inserted }):
            write("HTTP/1.1 503 Busy\r\nRetry-After: \(parts[1])\r\nContent-Length: 0\r\n\r\n", context: context)
        case ("busy-once", 2):
            send(status: 200, body: "ok", headOnly: isHead, context: context)
        case ("busy", 2):
            write("HTTP/1.1 503 Busy\r\nRetry-After: \(parts[1])\r\nContent-Length: 0\r\n\r\n", context: context)
        case ("stale-after", 2) where Int(parts[1]) != nil, ("idle-408", 2) where Int(parts[1]) != nil:
            send(status: 200, body: "ok", headOnly: isHead, context: context)
            let closes = parts[0] == "idle-408"
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(Int64(parts[1])!)) {
                let (connection, context) = bound.value
                if closes {
                    connection.write("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", context: context)
                    context.close(promise: nil)
                } else {
                    connection.write("HTTP/1.1 299 Stale\r\nContent-Length: 5\r\n\r\nstale", context: context)
                }
            }
        case ("trailers", 1):
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: ETag\r\n\r\n"
                  + "2\r\nok\r\n0\r\nContent-Type: application/json\r\nETag: \"forged\"\r\nLocation: /evil\r\n"
                  + "Content-Length: 9\r\n\r\n", context: context)
        case ("folded", 1):
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Long: first \r\n  second\r\n\tthird \r\nETag: \"e1\"\r\nContent-Length: 2\r\n\r\nok", context: context)
        case ("folded-length", 1):
            write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n 0\r\n\r\nok", context: context)
        case ("trailer-status", 1):
            write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + "2\r\nok\r\n0\r\nHTTP/1.1 999 X: y\r\nETag: \"forged\"\r\n\r\n", context: context)
        case ("folded-te", 1):
            writeThenClose("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", context: context)
        case ("fold-first", 1):
            write("HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok", context: context)
        case ("head-cut", 1):
            writeThenClose("HTTP/1.1 201 Created\r\nETag: \"v1\"\r\n", context: context)
        case ("loose", 2):
            let line = ["HTTP/1.1 200x OK", "HTTP/2 200 OK", "http/1.1 200 OK"][Int(parts[1]) ?? 0]
            writeThenClose(line + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", context: context)
        case ("space-colon", 1):
            write("HTTP/1.1 200 OK\r\nETag : \"e\"\r\nX-Ctl: a\rb\u{1B}c\u{7F}d\r\nContent-Length: 2\r\n\r\nok", context: context)
        case ("many-headers", 2):
            let fields = (0..<(Int(parts[1]) ?? 0)).map { "X-F\($0): " + String(repeating: "v", count: 1000) + "\r\n" }.joined()
            write("HTTP/1.1 200 OK\r\n" + fields + "Content-Length: 2\r\n\r\nok", context: context)
        case ("huge-header", 1):
            write("HTTP/1.1 200 OK\r\nX-Big: " + String(repeating: "a", count: 200_000) + "\r\nContent-Length: 2\r\n\r\nok", context: context)
        case ("cl-te", 1):
            write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", context: context)
        case ("two-lengths", 1):
            write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello12", context: context)
        case ("huge-length", 1):
            writeThenClose("HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999999999999999\r\n\r\nhello", context: context)
        case ("switching", 1):
            writeThenClose("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", context: context)
        case ("silent", 1):
            done = true
        case ("close", 1):
            done = true
            context.close(promise: nil)
        case ("not-http", 1):
            // What an HTTP/2-only server's first bytes look like to an HTTP/1.1 client: no status line.
            writeThenClose("\u{0}\u{0}\u{12}\u{4}\u{0}\u{0}\u{0}\u{0}\u{0}", context: context)
        case ("half", 1):
            writeThenClose("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", context: context)
        default:
            send(status: 404, body: "", headOnly: isHead, context: context)
        }
    }

    /// `text`, then the connection closes; nothing more is read from it.
    private func writeThenClose(_ text: String, context: ChannelHandlerContext) {
        done = true
        write(text, context: context)
        context.close(promise: nil)
    }

    private func send(status: Int, body: String, headOnly: Bool, context: ChannelHandlerContext) {
        write("HTTP/1.1 \(status) Scripted\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + (headOnly ? "" : body),
              context: context)
    }

    private func write(_ text: String, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: text)), promise: nil)
    }
}
