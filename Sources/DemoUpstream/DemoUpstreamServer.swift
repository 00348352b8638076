import Logging
import NIOCore
import Server
import ServiceLifecycle

/// The demo API on its own listener as a `Service`. `start` binds before the service group
/// runs, so `sheaf serve` knows the demo answers before Sheaf takes its first batch, and a port
/// that is taken stops start-up with a message instead of failing items later.
public final class DemoUpstreamServer: Service, @unchecked Sendable {
    private let channel: Channel

    private init(channel: Channel) {
        self.channel = channel
    }

    /// Binds `host:port` (HTTP/1.1 and h2c); throws `ListenError` when the address cannot be had.
    public static func start(host: String, port: Int, group: EventLoopGroup, logger: Logger) async throws -> DemoUpstreamServer {
        let channel: Channel
        do {
            channel = try await HTTPListener.bind(host: host, port: port, group: group, responder: DemoUpstream())
        } catch {
            throw ListenError(description: "cannot listen on \(host):\(port) for the demo upstream: \(error)")
        }
        logger.info("demo upstream listening", metadata: ["address": "\(host):\(port)", "protocols": "http/1.1, h2c"])
        return DemoUpstreamServer(channel: channel)
    }

    public func run() async throws {
        // Cancelled too when the group's other service fails (Sheaf's port is taken): the
        // listener must close then, or `sheaf serve` would wait on it forever.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await channel.closeFuture.get()
            } onGracefulShutdown: { [channel] in
                channel.close(promise: nil)
            }
        } onCancel: { [channel] in
            channel.close(promise: nil)
        }
    }
}
