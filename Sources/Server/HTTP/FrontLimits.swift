import NIOCore
import NIOHTTP1

/// Bounds on a request head and on an HTTP/2 connection's SETTINGS, checked before any route
/// sees the request. Past them: `414` (url), `431` (header count or bytes), problem+json.
public struct FrontLimits: Sendable, Equatable {
    /// The request target (path and query).
    public var maxURLBytes = 8 << 10
    public var maxHeaders = 100
    /// Names plus values of all header fields.
    public var maxHeaderBytes = 32 << 10
    /// HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE a client gets for each stream's request body.
    public var http2InitialWindowSize = 1 << 20
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE (16 KiB to 16 MiB - 1).
    public var http2MaxFrameSize = 1 << 14
    /// Bytes per second a streamed request body must average once the client timeout of
    /// reading has passed (`min_body_rate`; 0: no minimum).
    public var minBodyRate = 256

    public init() {}

    /// What an HTTP/1.1 head may hold before NIO's parser stops reading it: past Sheaf's limits,
    /// a head up to this gets their `431` all the same.
    static let headReadCeiling = 80 << 10

    /// The SETTINGS_MAX_HEADER_LIST_SIZE HTTP/2 clients are told. NIOHTTP2's decoder takes it as
    /// its own bound once the client acknowledges it, and a field block past that bound ends the
    /// connection (COMPRESSION_ERROR), every stream on it. So it is not the limits' total (names,
    /// values and RFC 9113 §6.5.2's 32 bytes per field) but at least `headReadCeiling`: a head
    /// over the limits and under this gets its `431`, and the connection serves on, as RFC 9113
    /// §10.5.1 has it.
    var http2MaxHeaderListSize: Int {
        max(maxHeaderBytes + 32 * maxHeaders, Self.headReadCeiling)
    }

    /// The limit a head passes (its config key) and the problem to answer, or nil.
    func problem(_ head: HTTPRequestHead) -> (limit: String, response: SimpleResponse)? {
        if head.uri.utf8.count > maxURLBytes {
            return ("max_url_bytes", Problem.response(.uriTooLong,
                detail: "the request target is \(head.uri.utf8.count) bytes, more than max_url_bytes (\(maxURLBytes))", field: "url"))
        }
        if head.headers.count > maxHeaders {
            return ("max_headers", Problem.response(.requestHeaderFieldsTooLarge,
                detail: "the request has \(head.headers.count) header fields, more than max_headers (\(maxHeaders))", field: "headers"))
        }
        var bytes = 0
        for (name, value) in head.headers { bytes += name.utf8.count + value.utf8.count }
        if bytes > maxHeaderBytes {
            return ("max_header_bytes", Problem.response(.requestHeaderFieldsTooLarge,
                detail: "the request's header fields are \(bytes) bytes, more than max_header_bytes (\(maxHeaderBytes))", field: "headers"))
        }
        return nil
    }
}

/// Answers an HTTP/1.1 request NIO's parser cannot read: `431` for a head past the parser's own
/// bound (80 KiB, above Sheaf's configurable limits), `400` otherwise, as problem+json, then
/// closes. Like NIO's `HTTPServerProtocolErrorHandler`, it says nothing when a response has
/// already begun, because a second head in the middle of one would corrupt the stream; nor to
/// bytes after a request that closes the connection.
final class FrontProtocolErrorHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Never
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responding = false
    /// The request being answered closes the connection; what the client sends after it is ignored.
    private var closing = false

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Bytes read while the parser is in error come with the error it first hit.
        var underlying = error
        if case ByteToMessageDecoderError.dataReceivedInErrorState(let first, _) = error { underlying = first }
        if (underlying as? HTTPParserError) == .closedConnection || (closing && underlying is HTTPParserError) {
            // Bytes after a request that said `Connection: close` (RFC 9112 §9.6): no further
            // request is served on this connection, so they get no answer, a 400 included, and
            // they do not cut the answer still being written: the connection closes after it.
            // More of them may come before the parser's own error, which the pipelining handler
            // holds back until the answer ends.
            closing = true
            return
        }
        guard let parserError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if !responding {
            let response: SimpleResponse
            switch parserError {
            case .headerOverflow:
                response = Problem.response(.requestHeaderFieldsTooLarge, detail: "the request head is larger than this server reads (80 KiB)", field: "headers")
            default:
                response = Problem.response(.badRequest, detail: "the request is not valid HTTP/1.1: \(parserError)")
            }
            var headers = response.headers
            headers.add(name: "content-length", value: String(response.body.readableBytes))
            headers.add(name: "connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status != .continue:
            responding = true
        case .end:
            responding = false
        default:
            break
        }
        context.write(data, promise: promise)
    }
}
