import CNGHTTP2
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// An h2c upstream that misbehaves on purpose, speaking raw frames (nghttp2's HPACK inflater
/// decodes the requests; responses are HPACK literals). Each request's path picks its fate:
///
/// - `/ok`, `/status/N`: an answer (body "ok"); `/slow/MS`: the answer after MS ms
/// - `/silent`: never answered
/// - `/refuse-once`, `/refuse`: RST_STREAM REFUSED_STREAM (the first time only, or always)
/// - `/reset/CODE`: RST_STREAM with that error code; `/reset-once`: INTERNAL_ERROR the first
///   time for each full path, then an answer
/// - `/early`, `/early-rst`: answered as soon as HEADERS arrive, before the body is read
///   (then, for `-rst`, RST_STREAM NO_ERROR as RFC 9113 §8.1 allows)
/// - `/partial-rst`: HEADERS 200 and part of a body, then RST_STREAM NO_ERROR without END_STREAM
///   (the answer never ended)
/// - `/close-once`: the connection is closed without an answer the first time; 404 afterwards.
///   The close lingers as nginx's does: FIN after what was written, the rest of the input read
///   and dropped. A close with unread input would be a TCP reset, which may destroy answers
///   already written to other streams, so their status would depend on timing.
/// - `/goaway`: (the first time) GOAWAY NO_ERROR whose last stream id is two streams back;
///   streams up to it are answered, later ones never are (the client must re-send them), then
///   the connection closes; afterwards an ordinary 200
/// - `/kill`: GOAWAY COMPRESSION_ERROR covering every stream so far, and silence (as nginx does
///   while it finishes what it started)
/// - `/short-body`, `/long-body`: `content-length: 10` and a body of 2 or 20 bytes (an answer
///   HTTP/2 forbids, RFC 9113 §8.1.1: the client resets the stream)
/// - `/calm`: GOAWAY ENHANCE_YOUR_CALM whose last stream id is this request's, and silence
///   (the connection stays open); later streams on it were never processed
/// - `/malformed`: a DATA frame on stream 0 (a connection error)
/// - `/nostatus`, `/upperheader`: an answer without `:status`, or with an upper-case header name
/// - `/trailers`: HEADERS 200 with `content-type: text/plain`, then, with no body, a trailer
///   block with END_STREAM naming `content-type`, `etag` and `location`
/// - `/stall-body`: HEADERS 200 and two bytes of body, then nothing more (the stream stays open)
/// - `/bighead/N`: a 200 whose head carries N fields of 1000 bytes each (`?one`: one field of
///   N bytes), in HEADERS and CONTINUATION frames of 16,000 bytes, and no body
/// - `/bytes/N`: N bytes of body, sent as the client's flow-control windows allow (the count
///   sent so far is in `Record.bodyBytesSent`)
///
/// Connection-wide behaviour comes from `Script`.
final class ScriptedHTTP2Server: @unchecked Sendable {
    struct Script: Sendable {
        /// SETTINGS entries sent after the preface (id, value).
        var settings: [(UInt16, UInt32)] = []
        /// Delay before the server's SETTINGS go out.
        var settingsDelay: TimeAmount = .zero
        /// Connections (0-based, in accept order) that go silent after sending their SETTINGS:
        /// no ACKs, no PING ACKs, no answers (a dead path that keeps TCP open).
        var silentConnections: Set<Int> = []
        /// Connections that fall silent (as above) once they have answered this many requests.
        var silentAfterAnswers: [Int: Int] = [:]
        /// Connections that never send SETTINGS at all.
        var mutedConnections: Set<Int> = []
        /// Answer the preface with an HTTP/1.1 response, as a server that does not speak h2c.
        var answerWithHTTP1 = false
        /// Close every connection as soon as it is accepted.
        var closeAtOnce = false
        /// Send GOAWAY NO_ERROR (last stream id = the last stream answered) this long after a
        /// connection's streams all finished, then close it.
        var goawayWhenIdleAfter: TimeAmount?
        /// A rapid-reset guard as NIO's (200 per 30 s): past this many RST_STREAMs from the
        /// client on one connection, GOAWAY ENHANCE_YOUR_CALM covering every stream, then close.
        var calmAfterResets: Int?

        /// A thousand streams at once and a rapid-reset guard that ends the connection past
        /// `calmAfterResets` RST_STREAMs: the upstream the reset budget is there for.
        static func guarded(calmAfterResets: Int) -> Script {
            var script = Script()
            script.settings = [(0x3, 1000)]
            script.calmAfterResets = calmAfterResets
            return script
        }
    }

    /// One request as the server decoded it.
    struct Request: Sendable {
        var connection: Int
        var stream: UInt32
        var method: String
        var path: String
        var headers: [(String, String)]
        var bodyBytes: Int
    }

    struct Record: Sendable {
        var connections = 0
        var requests: [Request] = []
        /// Requests the server processed (answered or started to answer), by path.
        var processed: [String] = []
        var headersBeforeSettings = 0
        var maxOpenStreams = 0
        var pingsReceived = 0
        var resets: [(UInt32, UInt32)] = []
        var bodyBytesSent = 0
    }

    let script: Script
    let record = NIOLockedValueBox(Record())
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var channel: Channel!
    fileprivate let onceDone = NIOLockedValueBox(Set<String>())

    var port: Int { channel.localAddress!.port! }

    init(_ script: Script = Script()) throws {
        self.script = script
        let server = self
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let index = server.record.withLockedValue { r -> Int in
                    r.connections += 1
                    return r.connections - 1
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ScriptedHTTP2Handler(server: server, index: index))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
    }

    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    fileprivate func firstTime(_ key: String) -> Bool {
        onceDone.withLockedValue { $0.insert(key).inserted }
    }
}

private final class ScriptedHTTP2Handler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: ScriptedHTTP2Server
    let index: Int
    var buffer = ByteBuffer()
    var sawPreface = false
    var settingsSent = false
    var inflater: OpaquePointer?
    var open: [UInt32: (path: String, method: String, body: Int, answered: Bool, complete: Bool)] = [:]
    var ackPending = false
    /// Flow control for what this server sends (RFC 9113 §6.9): the client's windows.
    var connectionWindow = 65_535
    var initialStreamWindow = 65_535
    var streamWindows: [UInt32: Int] = [:]
    /// Bodies still to send, by stream.
    var bodiesLeft: [UInt32: Int] = [:]
    var headerBlock: [UInt8] = []
    var headerStream: UInt32 = 0
    var headerEndStream = false
    var goawayLast: UInt32?
    var highestStream: UInt32 = 0
    var lastAnswered: UInt32 = 0
    var idleTimer: Scheduled<Void>?
    var context: ChannelHandlerContext!
    /// Output closed (`/close-once`): input is read and dropped until the client closes.
    var lingering = false
    /// RST_STREAMs the client sent on this connection (for `calmAfterResets`).
    var resetsReceived = 0

    init(server: ScriptedHTTP2Server, index: Int) {
        self.server = server
        self.index = index
        nghttp2_hd_inflate_new(&inflater)
    }

    deinit { nghttp2_hd_inflate_del(inflater) }

    var answers = 0
    var silent: Bool {
        server.script.silentConnections.contains(index) || server.script.silentAfterAnswers[index].map { answers >= $0 } ?? false
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        if server.script.closeAtOnce { context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        if !sawPreface {
            guard buffer.readableBytes >= 24 else { return }
            buffer.moveReaderIndex(forwardBy: 24)
            sawPreface = true
            if server.script.answerWithHTTP1 {
                let text = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).whenComplete { _ in context.close(promise: nil) }
                return
            }
            if server.script.mutedConnections.contains(index) { buffer.clear(); return }
            if server.script.settingsDelay == .zero {
                sendSettings()
            } else {
                context.eventLoop.scheduleTask(in: server.script.settingsDelay) { self.sendSettings() }
            }
        }
        if (silent && settingsSent) || lingering { buffer.clear(); return }
        while buffer.readableBytes >= 9 {
            let view = buffer.readableBytesView
            let start = view.startIndex
            let length = Int(view[start]) << 16 | Int(view[start + 1]) << 8 | Int(view[start + 2])
            guard buffer.readableBytes >= 9 + length else { return }
            let type = view[start + 3]
            let flags = view[start + 4]
            let stream = (UInt32(view[start + 5]) << 24 | UInt32(view[start + 6]) << 16 | UInt32(view[start + 7]) << 8 | UInt32(view[start + 8])) & 0x7fff_ffff
            buffer.moveReaderIndex(forwardBy: 9)
            let payload = buffer.readBytes(length: length) ?? []
            frame(type: type, flags: flags, stream: stream, payload: payload)
            if !context.channel.isActive || lingering { return }
        }
    }

    func sendSettings() {
        var payload: [UInt8] = []
        for (id, value) in server.script.settings {
            payload += [UInt8(id >> 8), UInt8(id & 0xff)] + be32(value)
        }
        write(type: 4, flags: 0, stream: 0, payload)
        settingsSent = true
        // The server preface is SETTINGS: an ACK of the client's must not precede it.
        if ackPending { write(type: 4, flags: 0x1, stream: 0, []) }
    }

    func frame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8]) {
        switch type {
        case 0x0:  // DATA
            guard var entry = open[stream] else { return }
            entry.body += payload.count
            open[stream] = entry
            if !payload.isEmpty && flags & 0x1 == 0 {
                // Read the body: give the window back (stream and connection). Nothing follows
                // the last DATA, so a client that waits for more bytes to report it waits forever.
                write(type: 8, flags: 0, stream: 0, be32(UInt32(payload.count)))
                write(type: 8, flags: 0, stream: stream, be32(UInt32(payload.count)))
            }
            if flags & 0x1 != 0 {
                open[stream]!.complete = true
                if open[stream]!.answered { open.removeValue(forKey: stream) } else { requestComplete(stream) }
            }
        case 0x1, 0x9:  // HEADERS, CONTINUATION
            var fragment = payload[...]
            if type == 0x1 {
                headerStream = stream
                headerEndStream = flags & 0x1 != 0
                if flags & 0x8 != 0 { let pad = Int(fragment.first!); fragment = fragment.dropFirst().dropLast(pad) }
                if flags & 0x20 != 0 { fragment = fragment.dropFirst(5) }
                headerBlock = []
            }
            headerBlock += fragment
            if flags & 0x4 != 0 { headersComplete(stream: headerStream, endStream: headerEndStream) }
        case 0x3:  // RST_STREAM
            let code = payload.count >= 4 ? UInt32(payload[0]) << 24 | UInt32(payload[1]) << 16 | UInt32(payload[2]) << 8 | UInt32(payload[3]) : 0
            server.record.withLockedValue { $0.resets.append((stream, code)) }
            open.removeValue(forKey: stream)
            resetsReceived += 1
            if let limit = server.script.calmAfterResets, resetsReceived == limit + 1 {
                write(type: 7, flags: 0, stream: 0, be32(highestStream) + be32(0xB) + Array("too many resets".utf8))
                context.close(promise: nil)
            }
        case 0x8:  // WINDOW_UPDATE
            guard payload.count >= 4 else { return }
            let increment = Int(UInt32(payload[0] & 0x7f) << 24 | UInt32(payload[1]) << 16 | UInt32(payload[2]) << 8 | UInt32(payload[3]))
            if stream == 0 { connectionWindow += increment } else { streamWindows[stream, default: initialStreamWindow] += increment }
            sendBodies()
        case 0x4:  // SETTINGS
            if flags & 0x1 == 0 {
                var i = 0
                while i + 6 <= payload.count {
                    let id = UInt16(payload[i]) << 8 | UInt16(payload[i + 1])
                    let value = Int(UInt32(payload[i + 2]) << 24 | UInt32(payload[i + 3]) << 16 | UInt32(payload[i + 4]) << 8 | UInt32(payload[i + 5]))
                    if id == 0x4 { initialStreamWindow = value }
                    i += 6
                }
                if settingsSent { write(type: 4, flags: 0x1, stream: 0, []) } else { ackPending = true }
            }
        case 0x6:  // PING
            server.record.withLockedValue { $0.pingsReceived += 1 }
            if flags & 0x1 == 0 { write(type: 6, flags: 0x1, stream: 0, payload) }
        default:
            break
        }
    }

    func headersComplete(stream: UInt32, endStream: Bool) {
        var fields: [(String, String)] = []
        headerBlock.withUnsafeMutableBufferPointer { raw in
            var input = raw.baseAddress!
            var remaining = raw.count
            while true {
                var nv = nghttp2_nv()
                var inflateFlags: Int32 = 0
                let used = nghttp2_hd_inflate_hd2(inflater, &nv, &inflateFlags, input, remaining, 1)
                if used < 0 { return }
                input += used
                remaining -= used
                if inflateFlags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) != 0 {
                    fields.append((String(decoding: UnsafeBufferPointer(start: nv.name, count: nv.namelen), as: UTF8.self),
                                   String(decoding: UnsafeBufferPointer(start: nv.value, count: nv.valuelen), as: UTF8.self)))
                }
                if inflateFlags & Int32(NGHTTP2_HD_INFLATE_FINAL.rawValue) != 0 {
                    nghttp2_hd_inflate_end_headers(inflater)
                    break
                }
                if inflateFlags & Int32(NGHTTP2_HD_INFLATE_EMIT.rawValue) == 0 && remaining == 0 { break }
            }
        }
        let fullPath = fields.first(where: { $0.0 == ":path" })?.1 ?? ""
        let path = fullPath.split(separator: "?", maxSplits: 1).first.map(String.init) ?? fullPath
        let method = fields.first(where: { $0.0 == ":method" })?.1 ?? ""
        highestStream = max(highestStream, stream)
        open[stream] = (fullPath, method, 0, false, endStream)
        let openCount = open.count
        let beforeSettings = !settingsSent
        server.record.withLockedValue {
            $0.requests.append(.init(connection: index, stream: stream, method: method, path: fullPath, headers: fields, bodyBytes: 0))
            $0.maxOpenStreams = max($0.maxOpenStreams, openCount)
            if beforeSettings { $0.headersBeforeSettings += 1 }
        }
        if goawayLast != nil { return }  // disowned: never processed
        switch path {
        case "/early":
            answer(stream, status: 200)
        case "/early-rst":
            answer(stream, status: 200)
            write(type: 3, flags: 0, stream: stream, be32(0))
            open.removeValue(forKey: stream)
        case "/kill":
            goawayLast = highestStream
            write(type: 7, flags: 0, stream: 0, be32(highestStream) + be32(0x9) + Array("too large header field".utf8))
        case "/calm":
            goawayLast = stream
            write(type: 7, flags: 0, stream: 0, be32(stream) + be32(0xB) + Array("calm down".utf8))
        case "/malformed":
            write(type: 0, flags: 0, stream: 0, [1, 2, 3])
        case "/goaway" where server.firstTime("goaway"):
            let last = stream > 4 ? stream - 4 : 0
            goawayLast = last
            write(type: 7, flags: 0, stream: 0, be32(last) + be32(0))
            for (id, _) in open where id <= last { answer(id, status: 200) }
            for (id, _) in open where id > last { open.removeValue(forKey: id) }
            closeWhenAnswered()
        default:
            if endStream { requestComplete(stream) }
        }
    }

    func requestComplete(_ stream: UInt32) {
        guard let entry = open[stream], !entry.answered else { return }
        // The query only makes a path unique (for the "-once" faults); it never picks the fate.
        let fullPath = entry.path
        let path = fullPath.split(separator: "?", maxSplits: 1).first.map(String.init) ?? fullPath
        if let last = goawayLast, stream > last { return }
        if path == "/ok" || path == "/goaway" || path.hasPrefix("/early") { answer(stream, status: 200) }
        else if path.hasPrefix("/status/") { answer(stream, status: String(path.dropFirst(8))) }
        else if path.hasPrefix("/slow/") {
            let ms = Int64(path.dropFirst(6)) ?? 100
            context.eventLoop.scheduleTask(in: .milliseconds(ms)) { self.answer(stream, status: 200) }
        } else if path == "/refuse" || (path == "/refuse-once" && server.firstTime("refuse:\(fullPath)")) {
            open.removeValue(forKey: stream)
            write(type: 3, flags: 0, stream: stream, be32(7))
        } else if path == "/refuse-once" {
            answer(stream, status: 200)
        } else if path.hasPrefix("/bytes/") {
            open[stream]!.answered = true
            answers += 1
            writeHead(stream, "content-type", "application/octet-stream")
            bodiesLeft[stream] = Int(path.dropFirst(7)) ?? 0
            sendBodies()
        } else if path == "/stall-body" {
            open[stream]!.answered = true
            writeHead(stream, "content-type", "text/plain")
            write(type: 0, flags: 0, stream: stream, Array("ab".utf8))
        } else if path.hasPrefix("/bighead/") {
            open[stream]!.answered = true
            answers += 1
            var block: [UInt8] = []
            literal(":status", "200", into: &block)
            let count = Int(path.dropFirst(9)) ?? 0
            if fullPath.hasSuffix("?one") {
                literal("x-big", String(repeating: "v", count: count), into: &block)  // one field of N bytes
            } else {
                for i in 0..<count { literal("x-f\(i)", String(repeating: "v", count: 1000), into: &block) }
            }
            var frames: [[UInt8]] = []
            var rest = block[...]
            repeat {
                frames.append(Array(rest.prefix(16_000)))
                rest = rest.dropFirst(16_000)
            } while !rest.isEmpty
            for (i, frame) in frames.enumerated() {
                let last: UInt8 = i == frames.count - 1 ? 0x4 : 0
                write(type: i == 0 ? 1 : 9, flags: (i == 0 ? 0x1 : 0) | last, stream: stream, frame)
            }
            open.removeValue(forKey: stream)
        } else if path == "/trailers" {
            open[stream]!.answered = true
            answers += 1
            writeHead(stream, "content-type", "text/plain")
            var trailers: [UInt8] = []
            literal("content-type", "application/json", into: &trailers)
            literal("etag", "\"forged\"", into: &trailers)
            literal("location", "/evil", into: &trailers)
            write(type: 1, flags: 0x5, stream: stream, trailers)
            open.removeValue(forKey: stream)
        } else if path == "/nostatus" || path == "/upperheader" {
            // Answers HTTP/2 forbids: no :status, or an upper-case header name.
            open[stream]!.answered = true
            var block: [UInt8] = []
            if path == "/upperheader" { literal(":status", "200", into: &block) }
            literal(path == "/upperheader" ? "X-Bad" : "content-type", "text/plain", into: &block)
            write(type: 1, flags: 0x5, stream: stream, block)
            open.removeValue(forKey: stream)
        } else if path == "/reset-once" {
            if server.firstTime("reset:\(fullPath)") {
                open.removeValue(forKey: stream)
                write(type: 3, flags: 0, stream: stream, be32(2))
            } else {
                answer(stream, status: 200)
            }
        } else if path == "/short-body" || path == "/long-body" {
            open[stream]!.answered = true
            writeHead(stream, "content-length", "10")
            write(type: 0, flags: 0x1, stream: stream, Array((path == "/short-body" ? "ok" : "twenty bytes of body").utf8))
            open.removeValue(forKey: stream)
        } else if path == "/partial-rst" {
            open[stream]!.answered = true
            writeHead(stream, "content-type", "application/json")
            write(type: 0, flags: 0, stream: stream, Array("{\"partial\":".utf8))
            write(type: 3, flags: 0, stream: stream, be32(0))
            open.removeValue(forKey: stream)
        } else if path.hasPrefix("/reset/") {
            open.removeValue(forKey: stream)
            write(type: 3, flags: 0, stream: stream, be32(UInt32(path.dropFirst(7)) ?? 2))
        } else if path == "/close-once" {
            if server.firstTime("close:\(fullPath)") {
                lingering = true
                context.close(mode: .output, promise: nil)
            } else {
                answer(stream, status: 404)
            }
        }
        // "/silent", "/kill", "/goaway" after it: nothing.
    }

    /// HEADERS 200 with one more field, leaving the stream open: a body or trailers follow.
    func writeHead(_ stream: UInt32, _ name: String, _ value: String) {
        var block: [UInt8] = []
        literal(":status", "200", into: &block)
        literal(name, value, into: &block)
        write(type: 1, flags: 0x4, stream: stream, block)
    }

    func answer(_ stream: UInt32, status: Int) {
        answer(stream, status: String(status))
    }

    /// `status` as it goes in `:status` (`099` stays three digits).
    func answer(_ stream: UInt32, status: String) {
        guard let entry = open[stream], !entry.answered, context.channel.isActive else { return }
        open[stream]!.answered = true
        answers += 1
        let complete = entry.complete
        server.record.withLockedValue { $0.processed.append(entry.path) }
        var block: [UInt8] = []
        literal(":status", status, into: &block)
        literal("content-type", "text/plain", into: &block)
        write(type: 1, flags: 0x4, stream: stream, block)
        write(type: 0, flags: 0x1, stream: stream, Array("ok".utf8))
        // A conforming server answering early still reads the rest of the body (RFC 9113 §8.1).
        if complete { open.removeValue(forKey: stream) }
        lastAnswered = max(lastAnswered, stream)
        if goawayLast != nil { closeWhenAnswered() }
        scheduleIdleGoaway()
    }

    /// Sends what the windows allow of every pending body, in 16 KiB DATA frames.
    func sendBodies() {
        for (stream, left) in bodiesLeft.sorted(by: { $0.key < $1.key }) {
            var left = left
            var window = streamWindows[stream, default: initialStreamWindow]
            while left > 0 && window > 0 && connectionWindow > 0 {
                let n = min(16_384, left, window, connectionWindow)
                left -= n
                window -= n
                connectionWindow -= n
                write(type: 0, flags: left == 0 ? 0x1 : 0, stream: stream, [UInt8](repeating: 0x61, count: n))
                server.record.withLockedValue { $0.bodyBytesSent += n }
            }
            streamWindows[stream] = window
            if left == 0 {
                bodiesLeft.removeValue(forKey: stream)
                open.removeValue(forKey: stream)
            } else {
                bodiesLeft[stream] = left
            }
        }
    }

    func closeWhenAnswered() {
        guard let last = goawayLast, !open.keys.contains(where: { $0 <= last }) else { return }
        let context = self.context!
        context.eventLoop.scheduleTask(in: .milliseconds(20)) { context.close(promise: nil) }
    }

    func scheduleIdleGoaway() {
        guard let after = server.script.goawayWhenIdleAfter, open.isEmpty else { return }
        idleTimer?.cancel()
        idleTimer = context.eventLoop.scheduleTask(in: after) {
            guard self.open.isEmpty, self.context.channel.isActive else { return }
            self.goawayLast = self.highestStream
            self.write(type: 7, flags: 0, stream: 0, self.be32(self.highestStream) + self.be32(0))
            self.context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    // MARK: encoding

    func be32(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    func write(type: UInt8, flags: UInt8, stream: UInt32, _ payload: [UInt8]) {
        guard context.channel.isActive, !lingering else { return }
        var out = context.channel.allocator.buffer(capacity: 9 + payload.count)
        out.writeBytes([UInt8(payload.count >> 16 & 0xff), UInt8(payload.count >> 8 & 0xff), UInt8(payload.count & 0xff), type, flags])
        out.writeBytes(be32(stream))
        out.writeBytes(payload)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), no Huffman.
    func literal(_ name: String, _ value: String, into out: inout [UInt8]) {
        out.append(0)
        integer(name.utf8.count, prefix: 7, into: &out)
        out += name.utf8
        integer(value.utf8.count, prefix: 7, into: &out)
        out += value.utf8
    }

    func integer(_ value: Int, prefix: Int, into out: inout [UInt8]) {
        let max = (1 << prefix) - 1
        if value < max {
            out.append(UInt8(value))
            return
        }
        out.append(UInt8(max))
        var rest = value - max
        while rest >= 128 {
            out.append(UInt8(rest % 128 + 128))
            rest /= 128
        }
        out.append(UInt8(rest))
    }
}
