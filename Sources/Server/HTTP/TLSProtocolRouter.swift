import NIOCore
import NIOTLS

/// Serves a TLS port by the protocol the handshake agreed on with ALPN: `h2` gets the HTTP/2
/// handlers, `http/1.1` (or a client that offered no ALPN) the HTTP/1.1 ones; `FrontPipeline`
/// builds either, exactly as for the cleartext sniffer.
///
/// NIO's `ApplicationProtocolNegotiationHandler` routes by ALPN too, but a connection still in
/// its handshake when Sheaf drains must close, like one the sniffer has not classified yet, and
/// that handler only forwards the drain event, to handlers that are not there yet. The pipeline is built synchronously inside
/// the handshake event, before `NIOSSLServerHandler` decodes the first application bytes, so
/// there is nothing to buffer.
///
/// No timer here: `NIOSSLServerHandler` sits before the idle handler, so handshake bytes do not
/// count as activity and a handshake that stalls or trickles is closed after `client_timeout`.
final class TLSProtocolRouter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let pipeline: FrontPipeline

    init(_ pipeline: FrontPipeline) {
        self.pipeline = pipeline
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case TLSUserEvent.handshakeCompleted(let negotiated):
            do {
                try pipeline.configure(negotiated == "h2" ? .http2 : .http1, context.pipeline.syncOperations)
            } catch {
                context.close(promise: nil)
                return
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        case is ChannelShouldQuiesceEvent:
            // Draining before the protocol is known: nothing is running here.
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }
}
