import NIOCore

/// Serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port: it looks at the first
/// bytes of a connection, and if they are the HTTP/2 client preface it installs the HTTP/2
/// handlers (one child channel per stream, translated to HTTP/1-style parts), otherwise the
/// HTTP/1.1 handlers; `FrontPipeline` builds either.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    private var buffered: ByteBuffer?
    private let pipeline: FrontPipeline
    private var deadline: Scheduled<Void>?

    init(_ pipeline: FrontPipeline) {
        self.pipeline = pipeline
    }

    /// The first bytes must tell the protocol within the client timeout, however slowly they
    /// trickle (each byte restarts the connection's idle timer; this one it does not).
    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: pipeline.clientTimeout) {
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
            try pipeline.configure(isHTTP2 ? .http2 : .http1, context.pipeline.syncOperations)
        } catch {
            context.close(promise: nil)
            return
        }
        buffered = nil
        context.fireChannelRead(wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
