import Config
import FanOut
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Tracing
import UnixSignals
import Upstream

/// The running proxy as one `Service`: upstream transports and the front listener. Stops on
/// graceful shutdown (SIGTERM / SIGINT); reloads its configuration file on SIGHUP. The demo
/// upstream is not part of it (module DemoUpstream): `sheaf serve` runs it beside this service
/// when the config asks for one.
public final class SheafServer: Service, @unchecked Sendable {
    private let initial: SheafConfiguration
    private let configPath: String?
    private let group: EventLoopGroup
    private let logger: Logger
    public let metrics = SheafMetrics()
    private let accessLog: AccessLog
    /// Running batches across generations, for `max_batches`.
    private let admission = BatchAdmission()
    /// `max_items_in_flight`, shared by the generations that have the same limit.
    private let budgets = NIOLockedValueBox<[Int: ItemBudget]>([:])
    private let tracer: (any Tracer)?

    /// One configuration's worth of serving state. Batches keep the generation they started in,
    /// so a reload never changes the routes or pools under a running batch.
    private final class Generation: @unchecked Sendable {
        let configuration: SheafConfiguration
        let service: SheafService
        let transports: [String: UpstreamTransport]
        /// The TLS files each upstream's transport was built from, to notice a renewal.
        let tlsFiles: [String: [Data?]]

        init(configuration: SheafConfiguration, service: SheafService, transports: [String: UpstreamTransport]) {
            self.configuration = configuration
            self.service = service
            self.transports = transports
            var files: [String: [Data?]] = [:]
            for upstream in configuration.upstreams { files[upstream.name] = Self.tlsFiles(of: upstream) }
            self.tlsFiles = files
        }

        static func tlsFiles(of upstream: UpstreamConfiguration) -> [Data?] {
            [upstream.caFile, upstream.clientCertificate, upstream.clientKey].map { path in
                path.flatMap { FileManager.default.contents(atPath: $0) }
            }
        }
    }

    /// Guarded by `lock`.
    private struct Running {
        var current: Generation
        /// Replaced generations whose batches are still running.
        var retiring: [Generation] = []
        var stopping = false
        let responder: CurrentService
        let settings: NIOLockedValueBox<FrontSettings>
        let front: FrontConnections
    }

    private let lock = NIOLock()
    private var running: Running?

    /// `configPath`: the file SIGHUP reloads; nil: SIGHUP is not handled. `tracer`: where spans
    /// go when `tracing` is configured (the caller runs its exporter).
    public init(configuration: SheafConfiguration, configPath: String? = nil, group: EventLoopGroup, logger: Logger,
                tracer: (any Tracer)? = nil) {
        self.initial = configuration
        self.tracer = tracer
        self.configPath = configPath
        self.group = group
        self.logger = logger
        let metrics = metrics
        accessLog = AccessLog(configuration.accessLog, onDropped: { metrics.accessLogDropped() },
                              onError: { [logger] message in logger.error("\(message)") })
    }

    public func run() async throws {
        let configuration = initial
        // Before anything starts: files that changed since `sheaf check` fail here, not per connection.
        let tls: NIOSSLContext?
        let generation: Generation
        do {
            tls = try configuration.tls?.makeServerContext()
        } catch {
            throw ListenError(description: "cannot listen on \(configuration.listen) with TLS: \(error)")
        }
        generation = try await makeGeneration(configuration, reusing: [:])
        metrics.watch(generation.transports)
        let listen = configuration.listen
        let front = FrontConnections(maxPerClient: configuration.maxConnectionsPerClient) { [metrics] in
            metrics.connectionRefused()
        }
        let settings = NIOLockedValueBox(Self.frontSettings(configuration, tls: tls))
        let responder = CurrentService(generation.service)
        let channel: Channel
        do {
            channel = try await HTTPListener.bind(host: listen.host, port: listen.port, group: group, connections: front,
                                                  settings: settings, responder: responder)
        } catch {
            for transport in generation.transports.values { await transport.shutdown() }
            throw ListenError(description: "cannot listen on \(listen): \(error)")
        }
        lock.withLock { running = Running(current: generation, responder: responder, settings: settings, front: front) }
        let bound = channel.localAddress?.port ?? listen.port
        logger.info("sheaf listening", metadata: [
            "address": "\(listen.host):\(bound)", "routes": "\(configuration.routes.count)",
            "upstreams": "\(configuration.upstreams.count)",
            "protocols": "\(tls == nil ? "http/1.1, h2c" : "h2, http/1.1 over TLS")",
        ])
        // Reloads run one after another, each to its end, on this task.
        let reloads = Task { [self] in
            guard configPath != nil else { return }
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                await reload()
            }
        }
        // logrotate moved the access log away: write to a new file under its name.
        let reopens = Task { [accessLog] in
            for await _ in await UnixSignalsSequence(trapping: .sigusr1) {
                accessLog.reopen()
            }
        }
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: { [self] in
            // Stop taking work: /readyz 503, the listener closed, keep-alive connections told
            // (Connection: close on HTTP/1.1, GOAWAY on h2c) and closed once what they serve ends.
            lock.withLock {
                running?.stopping = true
                running?.current.service.startDraining()
            }
            front.drain()
            channel.close(promise: nil)
        }
        reloads.cancel()
        reopens.cancel()
        // Drain: the listener is closed; let batches in flight finish before the transports go.
        let drainTimeout = lock.withLock { running?.current.configuration.drainTimeout } ?? configuration.drainTimeout
        let deadline = NIODeadline.now() + drainTimeout
        if activeBatches > 0 {
            logger.info("draining", metadata: ["batches": "\(runningBatches)"])
        }
        while activeBatches > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        logger.info("shutting down", metadata: ["unfinished batches": "\(runningBatches)"])
        // Every call still running settles 503 here, so every unfinished 207 can end.
        for transport in liveTransports() { await transport.shutdown() }
        // Let those 207s' last bytes reach their clients before the event loops stop.
        let flushDeadline = NIODeadline.now() + .seconds(2)
        while (activeBatches > 0 || front.count > 0) && NIODeadline.now() < flushDeadline {
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        front.closeAll()
        accessLog.flush()
    }

    /// Batches running on any generation, the current one and those a reload replaced (with
    /// bodies being read and heads being decided: what shutdown waits for).
    private var activeBatches: Int { sumOverGenerations(\.activeBatches) }

    /// `activeBatches` as the logs count them: each running batch once.
    private var runningBatches: Int { sumOverGenerations(\.runningBatches) }

    private func sumOverGenerations(_ count: (SheafService) -> Int) -> Int {
        lock.withLock {
            guard let running else { return 0 }
            return ([running.current] + running.retiring).reduce(0) { $0 + count($1.service) }
        }
    }

    /// Every transport some generation still holds, each once.
    private func liveTransports() -> [UpstreamTransport] {
        lock.withLock {
            guard let running else { return [] }
            var seen = Set<ObjectIdentifier>()
            return ([running.current] + running.retiring).flatMap { $0.transports.values }.filter {
                seen.insert(ObjectIdentifier($0)).inserted
            }
        }
    }

    /// One budget per limit: a reload that keeps `max_items_in_flight` keeps counting in it.
    private func budget(_ limit: Int) -> ItemBudget? {
        guard limit > 0 else { return nil }
        return budgets.withLockedValue { budgets in
            if let known = budgets[limit] { return known }
            let budget = ItemBudget(limit: limit)
            budgets[limit] = budget
            return budget
        }
    }

    private static func frontSettings(_ configuration: SheafConfiguration, tls: NIOSSLContext?) -> FrontSettings {
        var settings = FrontSettings(clientTimeout: configuration.clientTimeout, maxStreams: configuration.maxStreamsPerConnection,
                                     outputBudget: configuration.maxBufferedOutput, tls: tls)
        settings.limits.maxURLBytes = configuration.maxURLBytes
        settings.limits.maxHeaders = configuration.maxHeaders
        settings.limits.maxHeaderBytes = configuration.maxHeaderBytes
        settings.limits.http2InitialWindowSize = configuration.http2InitialWindowSize
        settings.limits.http2MaxFrameSize = configuration.http2MaxFrameSize
        settings.limits.minBodyRate = configuration.minBodyRate
        return settings
    }

    /// A service for `configuration`, on the transports in `reusing` where given, on new ones
    /// otherwise. On failure, the new transports built so far are shut down.
    private func makeGeneration(_ configuration: SheafConfiguration,
                                reusing: [String: UpstreamTransport]) async throws -> Generation {
        var transports: [String: UpstreamTransport] = [:]
        var built: [UpstreamTransport] = []
        do {
            for upstream in configuration.upstreams {
                if let kept = reusing[upstream.name] {
                    transports[upstream.name] = kept
                } else {
                    let transport = try TransportFactory.make(upstream, group: group, logger: logger, events: metrics.upstreamEvents)
                    built.append(transport)
                    transports[upstream.name] = transport
                }
            }
            let service = try SheafService(configuration: configuration, transports: transports, metrics: metrics, logger: logger,
                                           accessLog: accessLog, tracer: tracer, admission: admission,
                                           itemBudget: budget(configuration.maxItemsInFlight))
            return Generation(configuration: configuration, service: service, transports: transports)
        } catch {
            for transport in built { await transport.shutdown() }
            throw error
        }
    }

    /// Reads the configuration file again and, if it is valid and applicable, serves new requests
    /// with it; otherwise logs why and keeps the running configuration.
    func reload() async {
        guard let configPath else { return }
        guard let (old, settings) = lock.withLock({ () -> (Generation, NIOLockedValueBox<FrontSettings>)? in
            guard let running, !running.stopping else { return nil }
            return (running.current, running.settings)
        }) else { return }
        logger.info("reloading configuration", metadata: ["file": "\(configPath)"])
        let new: SheafConfiguration
        do {
            new = try ConfigLoader.load(path: configPath)
        } catch {
            logger.error("configuration reload refused; keeping the running configuration\n\(error.description)")
            metrics.reloadRefused(outcome: "invalid")
            return
        }
        let plan: ReloadPlan
        do {
            plan = try ReloadPlan.make(from: old.configuration, to: new) { name in
                guard let upstream = new.upstream(named: name) else { return false }
                return Generation.tlsFiles(of: upstream) != old.tlsFiles[name] ?? []
            }
        } catch {
            refuse(error.description)
            return
        }
        let generation: Generation
        let tls: NIOSSLContext?
        do {
            // Read again even when the paths are the same: this is how a renewed certificate arrives.
            tls = try new.tls?.makeServerContext()
        } catch {
            refuse("cannot load the front TLS files: \(error)")
            return
        }
        do {
            var reusing: [String: UpstreamTransport] = [:]
            for name in plan.kept { reusing[name] = old.transports[name] }
            generation = try await makeGeneration(new, reusing: reusing)
        } catch {
            refuse("\(error)")
            return
        }
        let swapped = lock.withLock { () -> Bool in
            guard var now = running, !now.stopping else { return false }
            now.retiring.append(now.current)
            now.current = generation
            now.responder.replace(with: generation.service)
            now.front.setMaxPerClient(new.maxConnectionsPerClient)
            running = now
            return true
        }
        guard swapped else {
            // Shutdown began meanwhile: the new pools never served.
            for name in plan.started { await generation.transports[name]?.shutdown() }
            return
        }
        settings.withLockedValue { $0 = Self.frontSettings(new, tls: tls) }
        accessLog.configure(new.accessLog)
        metrics.watch(generation.transports)
        metrics.configurationLoaded(reload: true)
        logger.info("configuration reloaded", metadata: [
            "routes": "\(new.routes.count)", "upstreams kept": "\(plan.kept.joined(separator: ","))",
            "upstreams started": "\(plan.started.joined(separator: ","))",
            "upstreams retiring": "\(plan.retired.joined(separator: ","))",
        ])
        Task { await retire(old) }
    }

    private func refuse(_ reason: String) {
        logger.error("configuration reload refused; keeping the running configuration: \(reason)")
        metrics.reloadRefused(outcome: "failed")
    }

    /// Once the batches of a replaced generation have ended, closes the pools no live
    /// generation uses any more (removed or changed upstreams).
    private func retire(_ old: Generation) async {
        while old.service.activeBatches > 0 {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        let closing = lock.withLock { () -> [(String, UpstreamTransport)] in
            guard var now = running, !now.stopping else { return [] }  // shutdown closes everything itself
            now.retiring.removeAll { $0 === old }
            running = now
            let live = Set(([now.current] + now.retiring).flatMap { $0.transports.values.map(ObjectIdentifier.init) })
            return old.transports.filter { !live.contains(ObjectIdentifier($0.value)) }.sorted { $0.key < $1.key }
        }
        for (name, transport) in closing {
            await transport.shutdown()
            logger.info("upstream pool retired", metadata: ["upstream": "\(name)"])
        }
    }
}

/// The listener's responder across reloads: each request is decided by the service current when
/// its head arrives, and stays with it to the end of its 207.
final class CurrentService: HTTPResponder, @unchecked Sendable {
    private let current: NIOLockedValueBox<SheafService>

    init(_ service: SheafService) {
        current = NIOLockedValueBox(service)
    }

    func replace(with service: SheafService) {
        current.withLockedValue { $0 = service }
    }

    func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision {
        // Entered under the lock a reload swaps under: once swapped, nothing enters the old one.
        let service = current.withLockedValue { service -> SheafService in
            service.enter()
            return service
        }
        defer { service.leave() }
        return service.decide(head, from: client)
    }

    func refused(_ head: HTTPRequestHead, _ response: SimpleResponse, limit: String, from client: ClientConnection) {
        current.withLockedValue { $0 }.refused(head, response, limit: limit, from: client)
    }

    func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        current.withLockedValue { $0 }.tooLarge(head, limit: limit, from: client)
    }
}

/// A listener could not be bound (address in use, no permission, ...).
public struct ListenError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}
