import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import Upstream

@Suite(.serialized) struct AutoTransportTests {
    @Test func anHTTP1OnlyUpstreamIsDiscoveredAndEveryItemGoesThroughOnce() async throws {
        let server = try ScriptedHTTP1Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let configuration = UpstreamConfiguration(name: "legacy", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: server.port, basePath: ""),
                                                  protocol: .auto, connections: 2, timeout: .seconds(3))
        let transport = try AutoTransport(configuration: configuration, group: group, logger: Logger(label: "test"))
        let out = await runCalls(transport, (0..<6).map { i in i % 2 == 0 ? get("/ok?i=\(i)") : post("/status/201?i=\(i)") })
        #expect(out.allSettledOnce)
        #expect((0..<6).allSatisfy { out.status($0) == ($0 % 2 == 0 ? 200 : 201) })
        #expect((0..<6).allSatisfy { out.attempts($0) == 1 })  // the h2c probe sent no request
        #expect(transport.currentProtocol == .http1)
        // Every request reached the upstream once, over HTTP/1.1.
        // (The scripted server logs the two h2c prefaces it got as garbage "requests" too.)
        let requests = server.requests.filter { $0.version == "HTTP/1.1" }
        #expect(requests.count == 6)
        #expect(Set(requests.map(\.target)).count == 6)
        // Later items go straight to HTTP/1.1.
        let later = await runCalls(transport, [get("/ok?later")])
        #expect(later.status(0) == 200)
        await transport.shutdown()
        try server.stop()
        try await group.shutdownGracefully()
    }

    @Test func anH2cUpstreamStaysOnHTTP2() async throws {
        let server = try ScriptedHTTP2Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let transport = try AutoTransport(configuration: h2Configuration(port: server.port) { $0.protocol = .auto },
                                      group: group, logger: Logger(label: "test"))
        let out = await runCalls(transport, [get("/ok"), post("/ok")])
        #expect(out.allSettledOnce && out.status(0) == 200 && out.status(1) == 200)
        #expect(transport.currentProtocol == .h2c)
        #expect(server.record.withLockedValue { $0.requests.count } == 2)
        await transport.shutdown()
        await server.stop()
        try await group.shutdownGracefully()
    }

    @Test func cancellingDuringTheDiscoveryCancelsTheHTTP1Send() async throws {
        let server = try ScriptedHTTP1Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let configuration = UpstreamConfiguration(name: "legacy", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: server.port, basePath: ""),
                                                  protocol: .auto, timeout: .seconds(3))
        let transport = try AutoTransport(configuration: configuration, group: group, logger: Logger(label: "test"))
        let box = CallResults()
        let call = transport.execute(get("/silent")) { box.append($0) }
        call.cancel()
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(box.count == 1)
        if case .failure(let error)? = box.first { #expect(error.kind == .cancelled) } else { Issue.record("not cancelled") }
        await transport.shutdown()
        try server.stop()
        try await group.shutdownGracefully()
    }
}

/// Results of one call, from any thread.
final class CallResults: @unchecked Sendable {
    private let lock = NIOLock()
    private var results: [UpstreamResult] = []
    func append(_ result: UpstreamResult) { lock.withLock { results.append(result) } }
    var count: Int { lock.withLock { results.count } }
    var first: UpstreamResult? { lock.withLock { results.first } }
}
