import NIOCore
import NIOPosix

/// Binds a TCP listener that speaks HTTP/1.1 and h2c on the same port.
public enum HTTPListener {
    public static func bind(host: String, port: Int, group: EventLoopGroup,
                            makeHandler: @escaping @Sendable () -> ChannelHandler) async throws -> Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ProtocolSniffer(makeHandler: makeHandler))
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}
