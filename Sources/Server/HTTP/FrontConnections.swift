import NIOConcurrencyHelpers
import NIOCore

/// Every client connection the listener has accepted and not yet closed, so that a drain can
/// reach them: `drain()` closes the listener and sends each connection
/// `ChannelShouldQuiesceEvent` (NIO's HTTP/1.1 pipeline then answers with `Connection: close`
/// and closes after the response in progress; the h2c guard sends GOAWAY; a connection still
/// sniffing its protocol closes).
public final class FrontConnections: @unchecked Sendable {
    private let lock = NIOLock()
    private var open: [ObjectIdentifier: Channel] = [:]
    private var listener: Channel?

    public init() {}

    /// Connections open right now.
    public var count: Int { lock.withLock { open.count } }

    /// Tracks accepted connections; goes first in the listener's server channel pipeline.
    func makeServerChannelHandler(listener: Channel) -> ChannelHandler {
        lock.withLock { self.listener = listener }
        return Tracker(connections: self)
    }

    fileprivate func accepted(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        lock.withLock { open[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in
            _ = lock.withLock { open.removeValue(forKey: id) }
        }
    }

    /// Stops accepting and asks every connection to finish what it serves and close.
    public func drain() {
        let (listener, channels) = lock.withLock { (self.listener, Array(open.values)) }
        listener?.close(promise: nil)
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    /// Closes whatever is still open (after the drain's time is up).
    public func closeAll() {
        for channel in lock.withLock({ Array(open.values) }) { channel.close(promise: nil) }
    }

    private final class Tracker: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = Channel
        let connections: FrontConnections
        init(connections: FrontConnections) { self.connections = connections }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            connections.accepted(unwrapInboundIn(data))
            context.fireChannelRead(data)
        }
    }
}
