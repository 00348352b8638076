import NIOCore
import NIOHTTP1
import NIOHTTP2

/// The protocol a front connection turned out to speak.
enum FrontProtocol {
    case http1
    case http2
}

/// The one place that sets up what serves a front connection once its protocol is known, for
/// both ways of knowing it: `ProtocolSniffer` on a cleartext port (the h2c preface or not) and
/// `TLSProtocolRouter` on a TLS port (ALPN `h2`, or `http/1.1` / none). Either way the same
/// `HTTPRequestHandler` serves each request, and h2 gets the same settings and guard as h2c.
struct FrontPipeline {
    let clientTimeout: TimeAmount
    let activity: ConnectionActivity
    /// SETTINGS_MAX_CONCURRENT_STREAMS of an HTTP/2 connection.
    let maxStreams: Int
    /// Head limits, and the rest of the HTTP/2 SETTINGS.
    var limits = FrontLimits()
    /// Makes the request handler; its argument says whether it serves an HTTP/2 stream.
    let makeHandler: @Sendable (_ onHTTP2Stream: Bool) -> ChannelHandler

    /// Adds the handlers at the end of the pipeline; the caller then passes on what it read.
    func configure(_ proto: FrontProtocol, _ pipeline: ChannelPipeline.SynchronousOperations) throws {
        switch proto {
        case .http1:
            try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: false)
            try pipeline.addHandler(FrontProtocolErrorHandler())
            try pipeline.addHandler(makeHandler(false))
        case .http2:
            try configureHTTP2(pipeline)
        }
    }

    private func configureHTTP2(_ pipeline: ChannelPipeline.SynchronousOperations) throws {
        let makeHandler = self.makeHandler
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: limits.http2InitialWindowSize),
            HTTP2Setting(parameter: .maxFrameSize, value: limits.http2MaxFrameSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: limits.http2MaxHeaderListSize),
        ]
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = limits.http2InitialWindowSize
        _ = try pipeline.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: stream
        ) { streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                try streamChannel.pipeline.syncOperations.addHandlers([
                    HTTP2AuthorityFiller(), HTTP2FramePayloadToHTTP1ServerCodec(), makeHandler(true),
                ])
            }
        }
        try pipeline.addHandler(HTTP2FrontConnectionGuard(activity: activity, clientTimeout: clientTimeout))
    }
}
