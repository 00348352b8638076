import NIOCore

/// Sits right behind `NIOSSLServerHandler` and flushes after every 64 KiB written.
///
/// NIOSSL encrypts all the writes of one flush into a single socket write and completes their
/// promises together, once the last byte is out. An HTTP/2 connection flushes whatever the
/// client's window allows at once (httpx opens 16 MiB), so a client reading slowly but steadily
/// would see no write complete for seconds, and the response writer, which hears of progress
/// only through those promises, would cut it at `client_timeout` as stalled. Flushing every
/// 64 KiB gives promises over TLS the granularity they have on a plain socket.
final class TLSFlushSlicer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    static let slice = 64 << 10
    private var unflushed = 0

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        unflushed += unwrapOutboundIn(data).readableBytes
        context.write(data, promise: promise)
        if unflushed >= Self.slice {
            unflushed = 0
            context.flush()
        }
    }

    func flush(context: ChannelHandlerContext) {
        unflushed = 0
        context.flush()
    }
}
