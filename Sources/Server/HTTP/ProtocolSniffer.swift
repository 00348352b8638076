import NIOCore
import NIOHTTP1
import NIOHTTP2

/// Serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port: it looks at the first
/// bytes of a connection, and if they are the HTTP/2 client preface it installs the HTTP/2
/// handlers (one child channel per stream, translated to HTTP/1-style parts), otherwise the
/// HTTP/1.1 handlers. Either way the same `HTTPRequestHandler` ends up serving requests.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    private var buffered: ByteBuffer?
    /// Makes the request handler; its argument says whether it serves an HTTP/2 stream.
    private let makeHandler: @Sendable (_ onHTTP2Stream: Bool) -> ChannelHandler
    private let clientTimeout: TimeAmount
    private let activity: ConnectionActivity
    private var deadline: Scheduled<Void>?

    private let maxStreams: Int

    init(clientTimeout: TimeAmount, activity: ConnectionActivity, maxStreams: Int = 256, makeHandler: @escaping @Sendable (_ onHTTP2Stream: Bool) -> ChannelHandler) {
        self.clientTimeout = clientTimeout
        self.activity = activity
        self.maxStreams = maxStreams
        self.makeHandler = makeHandler
    }

    /// The first bytes must tell the protocol within the client timeout, however slowly they
    /// trickle (each byte restarts the connection's idle timer; this one it does not).
    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: clientTimeout) {
            loopBound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    /// Draining before the protocol is known: nothing is running here, close.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var existing = buffered {
            existing.writeBuffer(&incoming)
            buffered = existing
        } else {
            buffered = incoming
        }
        guard let bytes = buffered else { return }
        let count = min(bytes.readableBytes, Self.preface.count)
        let prefix = bytes.getBytes(at: bytes.readerIndex, length: count) ?? []
        let isHTTP2 = prefix.elementsEqual(Self.preface[0..<count])
        if isHTTP2 && count < Self.preface.count { return }  // could still be HTTP/2: wait for more
        do {
            if isHTTP2 {
                try configureHTTP2(context)
            } else {
                try context.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
                try context.pipeline.syncOperations.addHandler(makeHandler(false))
            }
        } catch {
            context.close(promise: nil)
            return
        }
        buffered = nil
        context.fireChannelRead(wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func configureHTTP2(_ context: ChannelHandlerContext) throws {
        let makeHandler = self.makeHandler
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: 1 << 20),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 64 << 10),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = 1 << 20
        defer {
            try? context.pipeline.syncOperations.addHandler(HTTP2FrontConnectionGuard(activity: activity, clientTimeout: clientTimeout))
        }
        _ = try context.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: stream
        ) { streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                try streamChannel.pipeline.syncOperations.addHandlers([
                    HTTP2FramePayloadToHTTP1ServerCodec(), makeHandler(true),
                ])
            }
        }
    }
}
