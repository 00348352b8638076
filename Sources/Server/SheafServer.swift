import Config
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Upstream

/// The running proxy as one `Service`: upstream transports and the front listener. Stops on
/// graceful shutdown (SIGTERM / SIGINT). The demo upstream is not part of it (module
/// DemoUpstream): `sheaf serve` runs it beside this service when the config asks for one.
public final class SheafServer: Service, @unchecked Sendable {
    private let configuration: SheafConfiguration
    private let group: EventLoopGroup
    private let logger: Logger
    public let metrics = SheafMetrics()

    public init(configuration: SheafConfiguration, group: EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        // Before anything starts: files that changed since `sheaf check` fail here, not per connection.
        let tls: NIOSSLContext?
        do {
            tls = try configuration.tls?.makeServerContext()
        } catch {
            throw ListenError(description: "cannot listen on \(configuration.listen) with TLS: \(error)")
        }
        var transports: [String: UpstreamTransport] = [:]
        let events = metrics.upstreamEvents
        for upstream in configuration.upstreams {
            transports[upstream.name] = try TransportFactory.make(upstream, group: group, logger: logger, events: events)
        }
        metrics.watch(transports)
        let service = SheafService(configuration: configuration, transports: transports, metrics: metrics, logger: logger)
        let listen = configuration.listen
        let channel: Channel
        let front = FrontConnections(maxPerClient: configuration.maxConnectionsPerClient) { [metrics] in
            metrics.connectionRefused()
        }
        do {
            channel = try await HTTPListener.bind(host: listen.host, port: listen.port, group: group,
                                                  clientTimeout: configuration.clientTimeout, connections: front,
                                                  maxStreams: configuration.maxStreamsPerConnection,
                                                  outputBudget: configuration.maxBufferedOutput,
                                                  tls: tls, responder: service)
        } catch {
            for transport in transports.values { await transport.shutdown() }
            throw ListenError(description: "cannot listen on \(listen): \(error)")
        }
        let bound = channel.localAddress?.port ?? listen.port
        logger.info("sheaf listening", metadata: [
            "address": "\(listen.host):\(bound)", "routes": "\(configuration.routes.count)",
            "upstreams": "\(configuration.upstreams.count)",
            "protocols": "\(tls == nil ? "http/1.1, h2c" : "h2, http/1.1 over TLS")",
        ])
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            // Stop taking work: /readyz 503, the listener closed, keep-alive connections told
            // (Connection: close on HTTP/1.1, GOAWAY on h2c) and closed once what they serve ends.
            service.startDraining()
            front.drain()
            channel.close(promise: nil)
        }
        // Drain: the listener is closed; let batches in flight finish before the transports go.
        let deadline = NIODeadline.now() + configuration.drainTimeout
        if service.activeBatches > 0 {
            logger.info("draining", metadata: ["batches": "\(service.activeBatches)"])
        }
        while service.activeBatches > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        logger.info("shutting down", metadata: ["unfinished batches": "\(service.activeBatches)"])
        // Every call still running settles 503 here, so every unfinished 207 can end.
        for transport in transports.values { await transport.shutdown() }
        // Let those 207s' last bytes reach their clients before the event loops stop.
        let flushDeadline = NIODeadline.now() + .seconds(2)
        while (service.activeBatches > 0 || front.count > 0) && NIODeadline.now() < flushDeadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        front.closeAll()
    }
}

/// A listener could not be bound (address in use, no permission, ...).
public struct ListenError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}
