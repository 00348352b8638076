import NIOCore
import NIOPosix
import NIOSSL

/// Binds a TCP listener that speaks HTTP/1.1 and h2c on the same port, or, given a TLS context,
/// TLS only, with HTTP/2 or HTTP/1.1 chosen by ALPN.
public enum HTTPListener {
    /// `clientTimeout`: a connection silent and serving nothing this long is closed, and a request
    /// whose body has not fully arrived this long after its head gets 408.
    /// `connections`: when given, tracks the accepted connections so that its `drain()` reaches them.
    /// `maxStreams`: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. `outputBudget`: unsent encoded bytes a
    /// connection may have before its batches stop reading upstream bodies.
    /// `tls`: when given, every connection starts with a TLS handshake; cleartext is not served.
    public static func bind(host: String, port: Int, group: EventLoopGroup, clientTimeout: TimeAmount = .seconds(60),
                            connections: FrontConnections? = nil, maxStreams: Int = 256, outputBudget: Int = 4 << 20,
                            tls: NIOSSLContext? = nil, responder: HTTPResponder) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try connections?.admit(channel)
                    let activity = ConnectionActivity(outputBudget: outputBudget)
                    let pipeline = FrontPipeline(clientTimeout: clientTimeout, activity: activity, maxStreams: maxStreams) { onHTTP2Stream in
                        HTTPRequestHandler(responder: responder, activity: activity, clientTimeout: clientTimeout,
                                           onHTTP2Stream: onHTTP2Stream, secure: tls != nil)
                    }
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        // TLS first: the idle timer behind it sees only decrypted traffic, so a
                        // handshake that stalls or trickles is cut after clientTimeout like a
                        // silent connection, and closes from the handlers send close_notify.
                        try sync.addHandlers([NIOSSLServerHandler(context: tls), TLSFlushSlicer()])
                    }
                    try sync.addHandlers([IdleStateHandler(allTimeout: clientTimeout), IdleConnectionCloser(activity: activity)])
                    try sync.addHandler(tls == nil ? ProtocolSniffer(pipeline) as ChannelHandler : TLSProtocolRouter(pipeline))
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}
