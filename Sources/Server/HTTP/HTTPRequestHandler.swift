import NIOCore
import NIOHTTP1
import NIOHTTP2
import Upstream

/// What a responder decides from a request head alone.
public enum HeadDecision: Sendable {
    /// Answer now (404, 405, 413, metrics, ...); the request body is read and dropped.
    case respond(SimpleResponse)
    /// Read the body up to `maxBodyBytes` (more: 413), then call `handler` with it.
    case collect(maxBodyBytes: Int, handler: @Sendable (HTTPRequestHead, ByteBuffer, ResponseWriter) -> Void)
    /// Read the body as it arrives: `open` gets the head, the response writer (the response may
    /// begin before the body ends) and a way to resume reading, and returns the body's sink.
    /// A declared Content-Length above `maxBodyBytes` is a 413 at once; the sink counts the rest.
    case stream(maxBodyBytes: Int, open: @Sendable (HTTPRequestHead, ResponseWriter, BodyReading) -> RequestBodySink)
}

/// Takes a streamed request body part by part, on the connection's event loop.
public protocol RequestBodySink: AnyObject {
    /// One part; false: read nothing more until `BodyReading.resume`.
    func body(_ part: ByteBuffer) -> Bool
    /// The body is complete.
    func end()
    /// No byte of the body came for the client timeout while it was being read (`detail` nil),
    /// or it came slower than `min_body_rate` (`detail` says so).
    func timedOut(_ detail: String?)
    /// The client went away before the body ended.
    func clientGone()
}

/// Lets a body sink turn reading back on, from any thread.
public final class BodyReading: Sendable {
    private let resumer: @Sendable () -> Void

    init(_ resumer: @escaping @Sendable () -> Void) {
        self.resumer = resumer
    }

    public func resume() {
        resumer()
    }
}

/// A complete, small response.
public struct SimpleResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    /// Close the HTTP/1.1 connection after this response (the request body was not read whole).
    public var close: Bool

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer(), close: Bool = false) {
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close
    }
}

/// Routes request heads to decisions; implemented by Sheaf's batch service and the demo upstream.
public protocol HTTPResponder: Sendable {
    /// `client`: the connection the request came on (for forwarding headers).
    func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision
    /// A request refused for its head alone (`414`, `431`), for the responder's metrics and log.
    func refused(_ head: HTTPRequestHead, _ response: SimpleResponse, limit: String, from client: ClientConnection)
    /// The answer when a body is larger than allowed.
    func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse
}

extension HTTPResponder {
    public func refused(_ head: HTTPRequestHead, _ response: SimpleResponse, limit: String, from client: ClientConnection) {}
}

/// Serves one HTTP/1.1 connection (requests one after another) or one HTTP/2 stream, with
/// HTTP/1-style parts either way.
final class HTTPRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case collecting(HTTPRequestHead, limit: Int, body: ByteBuffer, handler: @Sendable (HTTPRequestHead, ByteBuffer, ResponseWriter) -> Void)
        case discarding(SimpleResponse, keepAlive: Bool)
        case responding(ResponseWriter)
        /// The body is being read into `sink` while the response may already be going out.
        case streaming(ResponseWriter, RequestBodySink)
        /// Answered before the body was read; reading (and dropping) a bounded rest so the
        /// client sees the answer instead of a reset, then closing.
        case lingering(dropped: Int)
        /// An answer ready while the client takes none of those before it (the socket not
        /// writable): sent when it is. NIO's pipelining handler serves no later request, and
        /// reads no more, until this one's end is written, so unread answers cannot pile up.
        case held(SimpleResponse, keepAlive: Bool, stall: Scheduled<Void>)
        case closing
    }

    /// A body the answer does not need is read and dropped up to this size; beyond, or chunked,
    /// the answer goes out at once and the connection closes.
    static let discardLimit = 64 << 10

    private let responder: HTTPResponder
    private let activity: ConnectionActivity
    private let clientTimeout: TimeAmount
    private var state = State.idle
    private var counted = false
    private var bodyTimer: Scheduled<Void>?
    private var bodyRate = BodyRate()
    private var headTimer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    /// Serving one stream of an HTTP/2 connection (its channel's parent is the connection),
    /// rather than an HTTP/1.1 connection (whose parent is the listener).
    private let onHTTP2Stream: Bool
    /// The connection is TLS.
    private let secure: Bool

    private let limits: FrontLimits

    init(responder: HTTPResponder, activity: ConnectionActivity, clientTimeout: TimeAmount, onHTTP2Stream: Bool = false,
         secure: Bool = false, limits: FrontLimits = FrontLimits()) {
        self.limits = limits
        self.responder = responder
        self.secure = secure
        self.activity = activity
        self.clientTimeout = clientTimeout
        self.onHTTP2Stream = onHTTP2Stream
    }

    private func begin(_ context: ChannelHandlerContext) {
        if !counted {
            counted = true
            activity.started()
        }
        // A body that trickles in (or never comes) must not hold the connection forever.
        bodyTimer = context.eventLoop.scheduleTask(in: clientTimeout) { [weak self] in
            guard let self else { return }
            switch self.state {
            case .streaming(_, let sink):
                sink.timedOut(nil)
            case .collecting:
                self.reject(context, Problem.response(.requestTimeout, detail: "the request body did not arrive within \(self.clientTimeout.nanoseconds / 1_000_000_000)s", field: "body"))
            case .discarding(let response, _):
                self.reject(context, response)
            default:
                break
            }
        }
    }

    private func done() {
        bodyTimer?.cancel()
        bodyTimer = nil
        if counted {
            counted = false
            activity.finished()
        }
        // An HTTP/2 stream serves one request; only an HTTP/1.1 connection waits for the next.
        if !onHTTP2Stream { armHeadTimer() }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        armHeadTimer()
    }

    func channelActive(context: ChannelHandlerContext) {
        armHeadTimer()
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        headTimer?.cancel()
        bodyTimer?.cancel()
        self.context = nil
    }

    /// The next request head must arrive within the client timeout, however its bytes trickle in
    /// (the connection idle timer restarts on every byte, this one does not).
    private func armHeadTimer() {
        headTimer?.cancel()
        headTimer = nil
        guard let context, context.channel.isActive else { return }
        if case .closing = state { return }
        headTimer = context.eventLoop.scheduleTask(in: clientTimeout) { [weak self] in
            guard let self, case .idle = self.state else { return }
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(var head):
            if !onHTTP2Stream { Self.toOriginForm(&head) }
            switch state {
            case .lingering, .closing: return  // answered and closing: nothing more is served
            default: break
            }
            headTimer?.cancel()
            headTimer = nil
            begin(context)
            let decision: HeadDecision
            if let (limit, refused) = limits.problem(head) {
                responder.refused(head, refused, limit: limit, from: client(context))
                decision = .respond(refused)
            } else {
                decision = responder.decide(head, from: client(context))
            }
            switch decision {
            case .respond(let response):
                var response = response
                if head.method == .HEAD {
                    // Same headers (Content-Length included) as GET would get, no body.
                    response.headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
                    response.body = ByteBuffer()
                }
                let declared = head.headers.first(name: "content-length").flatMap(Int.init)
                // Any transfer coding: a body of unknown length (and one Sheaf may not read at all, 501).
                let coded = head.headers.contains(name: "transfer-encoding")
                if head.headers.contains(name: "expect") || coded || (declared ?? 0) > Self.discardLimit {
                    // The answer does not depend on the body: do not wait for one that may be
                    // large, slow or (after Expect: 100-continue) never sent. Answer and close.
                    reject(context, response)
                    return
                }
                state = .discarding(response, keepAlive: Self.keepAlive(head))
            case .collect(let limit, let handler):
                guard acceptBody(context, head, limit: limit) else { return }
                state = .collecting(head, limit: limit, body: context.channel.allocator.buffer(capacity: 0), handler: handler)
            case .stream(let limit, let open):
                guard acceptBody(context, head, limit: limit) else { return }
                let keepAlive = Self.keepAlive(afterWriterFor: head)
                let writer = makeWriter(context, head, keepAlive: keepAlive) { [weak self] in
                    guard let self else { return }
                    if case .streaming = self.state {
                        // Answered before the body ended (refused, or its 207 cut short): the rest
                        // of the body is not read, so the connection (or stream) cannot go on.
                        self.closeAfterAnswer(context)
                    } else {
                        self.answered(context, keepAlive: keepAlive)
                    }
                    self.done()
                }
                let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
                let reading = BodyReading {
                    handler.eventLoop.execute { handler.value.resumeReading() }
                }
                bodyRate = BodyRate(started: .now())
                state = .streaming(writer, open(head, writer, reading))
            }
        case .body(var part):
            if case .streaming(_, let sink) = state {
                if let slow = bodyRate.received(part.readableBytes, now: .now(), grace: clientTimeout, minimum: limits.minBodyRate) {
                    sink.timedOut(slow)
                    return
                }
                if !sink.body(part) {
                    bodyRate.paused(at: .now())
                    // Backpressure: the batch has enough items waiting; TCP (or HTTP/2 flow
                    // control) holds the rest of the body at the client until it asks again.
                    bodyTimer?.cancel()
                    bodyTimer = nil
                    context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
                } else {
                    armBodyTimer(context)
                }
                return
            }
            if case .lingering(let dropped) = state {
                state = .lingering(dropped: dropped + part.readableBytes)
                if dropped + part.readableBytes > Self.discardLimit { context.close(promise: nil) }
                return
            }
            guard case .collecting(let head, let limit, var body, let handler) = state else { return }
            state = .idle  // let `body` be uniquely referenced while it grows
            if body.readableBytes + part.readableBytes > limit {
                reject(context, responder.tooLarge(head, limit: limit, from: client(context)))
                return
            }
            body.writeBuffer(&part)
            state = .collecting(head, limit: limit, body: body, handler: handler)
        case .end:
            bodyTimer?.cancel()
            bodyTimer = nil
            switch state {
            case .discarding(let response, let keepAlive):
                let keepAlive = keepAlive && !response.close
                guard context.channel.isWritable else {
                    // Cut as a stalled 207 is: no byte taken for client_timeout.
                    let stall = context.eventLoop.scheduleTask(in: clientTimeout) { [weak self] in
                        guard let self, case .held = self.state else { return }
                        self.state = .closing
                        context.close(promise: nil)
                    }
                    state = .held(response, keepAlive: keepAlive, stall: stall)
                    return
                }
                state = .idle
                send(context, response, keepAlive: keepAlive)
            case .collecting(let head, _, let body, let handler):
                let keepAlive = Self.keepAlive(afterWriterFor: head)
                let writer = makeWriter(context, head, keepAlive: keepAlive) { [weak self] in
                    self?.answered(context, keepAlive: keepAlive)
                    self?.done()
                }
                state = .responding(writer)
                handler(head, body, writer)
            case .streaming(let writer, let sink):
                state = .responding(writer)
                sink.end()
            default:
                break
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .held(_, _, let stall) = state { stall.cancel() }
        if case .responding(let writer) = state { writer.clientWentAway() }
        if case .streaming(let writer, let sink) = state {
            writer.clientWentAway()
            sink.clientGone()
        }
        state = .closing
        done()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        switch state {
        case .responding(let writer), .streaming(let writer, _): writer.writabilityChanged(context.channel.isWritable)
        case .held(let response, let keepAlive, let stall) where context.channel.isWritable:
            stall.cancel()
            state = .idle
            send(context, response, keepAlive: keepAlive)
        default: break
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// A body is wanted: refused at once (413) when its declared length is over `limit`;
    /// otherwise a client that waits for `100 Continue` is told to send it.
    private func acceptBody(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, limit: Int) -> Bool {
        if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > limit {
            reject(context, responder.tooLarge(head, limit: limit, from: client(context)))
            return false
        }
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        return true
    }

    private func makeWriter(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, keepAlive: Bool,
                            done: @escaping () -> Void) -> ResponseWriter {
        let connection = onHTTP2Stream ? (context.channel.parent ?? context.channel) : context.channel
        return ResponseWriter(context: context, keepAlive: keepAlive, version: onHTTP2Stream ? .http1_1 : head.version,
                              stallTimeout: clientTimeout, connection: connection, budget: activity.budget, onDone: done)
    }

    /// A streamed body's sink wants more: read again, with the body timer running again.
    private func resumeReading() {
        guard case .streaming = state, let context, context.channel.isActive else { return }
        bodyRate.resumed(at: .now())
        armBodyTimer(context)
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.read()
    }

    /// While a streamed body is read, the client timeout counts from its last byte: a big body
    /// may take long, but it must keep coming.
    private func armBodyTimer(_ context: ChannelHandlerContext) {
        bodyTimer?.cancel()
        bodyTimer = context.eventLoop.scheduleTask(in: clientTimeout) { [weak self] in
            guard let self, case .streaming(_, let sink) = self.state else { return }
            sink.timedOut(nil)
        }
    }

    private func client(_ context: ChannelHandlerContext) -> ClientConnection {
        let connection = onHTTP2Stream ? (context.channel.parent ?? context.channel) : context.channel
        return ClientConnection(address: connection.remoteAddress, secure: secure)
    }

    /// Answers, then closes: the request's body is not read whole (see `closeAfterAnswer`).
    private func reject(_ context: ChannelHandlerContext, _ response: SimpleResponse) {
        var response = response
        response.close = true
        // Nothing more is served; once the answer is out, `closeAfterAnswer` lingers on HTTP/1.1.
        state = .closing
        send(context, response, keepAlive: false)
    }

    private func send(_ context: ChannelHandlerContext, _ response: SimpleResponse, keepAlive: Bool) {
        var headers = response.headers
        if !headers.contains(name: "content-length") {
            headers.add(name: "content-length", value: String(response.body.readableBytes))
        }
        if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
        if response.body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        let written = context.writeAndFlushPromise()
        done()
        // Before the end is written, which lets the pipelining handler pass on the next request:
        // a pipelined request after this one is not served (RFC 9112 §9.6).
        if !keepAlive, case .idle = state { state = .closing }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        if !keepAlive {
            written.futureResult.whenComplete { [weak self] _ in self?.closeAfterAnswer(context) }
        }
    }

    /// RFC 9112 §3.2.2: a target in absolute-form (`http://host/path?query`) is served as its
    /// origin form (`/path?query`), and its authority replaces any Host field.
    static func toOriginForm(_ head: inout HTTPRequestHead) {
        let uri = head.uri.utf8
        guard let first = uri.first, first != UInt8(ascii: "/"), let separator = head.uri.range(of: "://") else { return }
        let scheme = head.uri[..<separator.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return }
        let rest = head.uri[separator.upperBound...]
        let pathStart = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = String(rest[..<pathStart])
        let target = rest[pathStart...]
        head.uri = target.first == "/" ? String(target) : "/" + target
        if !authority.isEmpty { head.headers.replaceOrAdd(name: "host", value: authority) }
    }

    /// Whether the connection goes on after this request's answer. `Connection` is read as a
    /// list of tokens with blanks around each (`close<TAB>` closes too, which NIO's own check
    /// missed, and served the requests after it).
    static func keepAlive(_ head: HTTPRequestHead) -> Bool {
        let options = HTTPSyntax.connectionOptions(head.headers)
        if options.contains("close") { return false }
        if head.version == .http1_0 { return options.contains("keep-alive") }
        return head.isKeepAlive
    }

    /// Whether the connection goes on after an answer through a `ResponseWriter` (a batch's, whose
    /// 207 has no length when it starts): never for HTTP/1.0, where such a body ends with the close.
    static func keepAlive(afterWriterFor head: HTTPRequestHead) -> Bool {
        head.version != .http1_0 && keepAlive(head)
    }

    /// A response has ended: the next request may come, or, without keep-alive, the connection closes.
    private func answered(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            state = .idle
        } else {
            closeAfterAnswer(context)
        }
    }

    /// Closes once an answer is out. An HTTP/2 stream just ends. HTTP/1.1 half-closes and
    /// lingers, reading and dropping what still arrives (bounded in bytes, and closed for good
    /// 2 s later): closing with unread bytes would send a reset, which can make the client lose
    /// the answer's tail (a request body not read, bytes after a `Connection: close` request).
    private func closeAfterAnswer(_ context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        if onHTTP2Stream {
            state = .closing
            // The answer is whole: a client still sending its body is asked to stop, without
            // error (RFC 9113 §8.1). Closing the stream channel as it is would reset the stream
            // with CANCEL, and curl and httpx then throw the whole answer away.
            guard let codec = try? context.pipeline.syncOperations.context(handlerType: HTTP2FramePayloadToHTTP1ServerCodec.self) else {
                context.close(promise: nil)
                return
            }
            codec.writeAndFlush(NIOAny(HTTP2Frame.FramePayload.rstStream(.noError))).whenComplete { _ in
                context.close(promise: nil)
            }
            return
        }
        if case .lingering = state { return }
        state = .lingering(dropped: 0)
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.read()
        context.close(mode: .output, promise: nil)
        let deadline = context.eventLoop.scheduleTask(in: .seconds(2)) { context.close(promise: nil) }
        context.channel.closeFuture.whenComplete { _ in deadline.cancel() }
    }
}

extension ChannelHandlerContext {
    fileprivate func writeAndFlushPromise() -> EventLoopPromise<Void> { eventLoop.makePromise() }
}
