import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// What each new front connection is set up with. A reload replaces it: connections accepted
/// from then on get the new values (a renewed certificate, a new timeout), established ones keep
/// theirs. Whether the listener speaks TLS at all is fixed at bind.
public struct FrontSettings: Sendable {
    /// A connection silent and serving nothing this long is closed, and a request whose body has
    /// not fully arrived this long after its head gets 408.
    public var clientTimeout: TimeAmount
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    public var maxStreams: Int
    /// Unsent encoded bytes a connection may have before its batches stop reading upstream bodies.
    public var outputBudget: Int
    /// When set, every connection starts with a TLS handshake; cleartext is not served.
    public var tls: NIOSSLContext?
    public var limits = FrontLimits()

    public init(clientTimeout: TimeAmount = .seconds(60), maxStreams: Int = 256, outputBudget: Int = 4 << 20,
                tls: NIOSSLContext? = nil) {
        self.clientTimeout = clientTimeout
        self.maxStreams = maxStreams
        self.outputBudget = outputBudget
        self.tls = tls
    }
}

/// Binds a TCP listener that speaks HTTP/1.1 and h2c on the same port, or, given a TLS context,
/// TLS only, with HTTP/2 or HTTP/1.1 chosen by ALPN.
public enum HTTPListener {
    /// `connections`: when given, tracks the accepted connections so that its `drain()` reaches them.
    public static func bind(host: String, port: Int, group: EventLoopGroup, clientTimeout: TimeAmount = .seconds(60),
                            connections: FrontConnections? = nil, maxStreams: Int = 256, outputBudget: Int = 4 << 20,
                            tls: NIOSSLContext? = nil, responder: HTTPResponder) async throws -> Channel {
        let settings = FrontSettings(clientTimeout: clientTimeout, maxStreams: maxStreams, outputBudget: outputBudget, tls: tls)
        return try await bind(host: host, port: port, group: group, connections: connections,
                              settings: NIOLockedValueBox(settings), responder: responder)
    }

    /// `settings` is read as each connection is accepted, so replacing its value reconfigures the
    /// listener for new connections. Its `tls` must stay present, or absent, as it was at bind.
    public static func bind(host: String, port: Int, group: EventLoopGroup, connections: FrontConnections? = nil,
                            settings: NIOLockedValueBox<FrontSettings>, responder: HTTPResponder) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try connections?.admit(channel)
                    let now = settings.withLockedValue { $0 }
                    let clientTimeout = now.clientTimeout
                    let activity = ConnectionActivity(outputBudget: now.outputBudget)
                    let secure = now.tls != nil
                    let limits = now.limits
                    let pipeline = FrontPipeline(clientTimeout: clientTimeout, activity: activity, maxStreams: now.maxStreams,
                                                 limits: limits) { onHTTP2Stream in
                        HTTPRequestHandler(responder: responder, activity: activity, clientTimeout: clientTimeout,
                                           onHTTP2Stream: onHTTP2Stream, secure: secure, limits: limits)
                    }
                    let sync = channel.pipeline.syncOperations
                    if let tls = now.tls {
                        // TLS first: the idle timer behind it sees only decrypted traffic, so a
                        // handshake that stalls or trickles is cut after clientTimeout like a
                        // silent connection, and closes from the handlers send close_notify.
                        try sync.addHandlers([NIOSSLServerHandler(context: tls), TLSFlushSlicer()])
                    }
                    try sync.addHandlers([IdleStateHandler(allTimeout: clientTimeout), IdleConnectionCloser(activity: activity)])
                    try sync.addHandler(secure ? TLSProtocolRouter(pipeline) as ChannelHandler : ProtocolSniffer(pipeline))
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}
