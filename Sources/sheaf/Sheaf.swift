import ArgumentParser
import Config
import DemoUpstream
import Foundation
import Logging
import NIOCore
import NIOPosix
import Server
import ServiceLifecycle
import Telemetry
import Tracing

@main
struct Sheaf: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sheaf",
        abstract: "A batch fan-out proxy: one bulk request in, one 207 Multi-Status out.",
        version: "0.1.0",
        subcommands: [Serve.self, Check.self, DemoUpstreamCommand.self],
        defaultSubcommand: Serve.self
    )
}

struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrap(label: String) -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy.")

    @Option(name: .shortAndLong, help: "The configuration file.")
    var config: String = "config.yaml"

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = logging.bootstrap(label: "sheaf")
        let configuration: SheafConfiguration
        do {
            configuration = try ConfigLoader.load(path: config)
        } catch {
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(1)
        }
        // Services stop in reverse order: the server drains first, then the exporter sends its last spans.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var tracer: (any Tracer)?
        if let tracing = configuration.tracing {
            do {
                let backend = try Telemetry.makeTracer(tracing)
                tracer = backend.tracer
                services.append(.init(service: backend.service))
            } catch {
                FileHandle.standardError.write(Data("cannot set up tracing: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        if let demo = configuration.demoUpstream {
            // First in the group, so it is shut down last: the demo answers while Sheaf drains.
            do {
                services.insert(.init(service: try await DemoUpstreamServer.start(
                    host: demo.host, port: demo.port, group: group, logger: logger)), at: 0)
            } catch {
                logger.error("sheaf stopped: \(error)")
                try? await group.shutdownGracefully()
                throw ExitCode(1)
            }
        }
        let server = SheafServer(configuration: configuration, configPath: config, group: group, logger: logger, tracer: tracer)
        services.append(.init(service: server))
        let serviceGroup = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("sheaf stopped: \(error)")
            try? await group.shutdownGracefully()
            throw ExitCode(1)
        }
        try? await group.shutdownGracefully()
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration file; print every problem as FILE:LINE:COLUMN: message.")

    @Option(name: .shortAndLong, help: "The configuration file.")
    var config: String = "config.yaml"

    func run() throws {
        do {
            let configuration = try ConfigLoader.load(path: config)
            print("\(config): OK: \(configuration.upstreams.count) upstream(s), \(configuration.routes.count) route(s), listening on \(configuration.listen)")
        } catch {
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(1)
        }
    }
}

struct DemoUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-upstream",
        abstract: "Run the demo single-item API (HTTP/1.1 and h2c on one port).")

    @Option(name: .long, help: "HOST:PORT to listen on.")
    var listen: String = "127.0.0.1:9090"

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = logging.bootstrap(label: "sheaf-demo")
        guard let address = HostPort.parse(listen) else {
            throw ValidationError("--listen must be HOST:PORT, got \"\(listen)\"")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let server: DemoUpstreamServer
        do {
            server = try await DemoUpstreamServer.start(host: address.host, port: address.port, group: group, logger: logger)
        } catch {
            logger.error("\(error)")
            try? await group.shutdownGracefully()
            throw ExitCode(1)
        }
        let services = ServiceGroup(configuration: .init(
            services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await services.run()
        try? await group.shutdownGracefully()
    }
}
