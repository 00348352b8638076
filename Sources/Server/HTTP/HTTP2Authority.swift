import NIOCore
import NIOHPACK
import NIOHTTP2

/// Gives a request head without `:authority` one, from its `host` field or empty, before
/// `HTTP2FramePayloadToHTTP1ServerCodec`, which requires it. RFC 9113 §8.3.1 lets a client leave
/// it out (no authority to convey, or a Host field instead): such a request was reset with
/// CANCEL and no status.
final class HTTP2AuthorityFiller: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .headers(var headers) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        if !headers.headers.contains(name: ":authority") {
            var filled = HPACKHeaders()
            filled.reserveCapacity(headers.headers.count + 1)
            // Pseudo-header fields first (RFC 9113 §8.3).
            filled.add(name: ":authority", value: headers.headers.first(name: "host") ?? "")
            filled.add(contentsOf: headers.headers)
            headers.headers = filled
        }
        context.fireChannelRead(wrapInboundOut(.headers(headers)))
        // Only the request head: trailers come later, and pass as they are.
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
