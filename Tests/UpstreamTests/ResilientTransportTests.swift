import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import Upstream

/// Retries, the retry budget, the circuit breaker and `max_queued` against scripted upstreams.
@Suite(.serialized) struct ResilientTransportTests {
    func configuration(port: Int, protocol: UpstreamProtocol = .http1, connections: Int = 2,
                       _ tweak: (inout UpstreamConfiguration) -> Void = { _ in }) -> UpstreamConfiguration {
        var c = UpstreamConfiguration(name: "flaky", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: port, basePath: ""),
                                      protocol: `protocol`, connections: connections, timeout: .seconds(3))
        c.retry.attempts = 3
        c.retry.backoff = .milliseconds(1)
        tweak(&c)
        return c
    }

    /// A transport as `TransportFactory` builds it, the scripted HTTP/1.1 server, and teardown.
    func withHTTP1(_ tweak: (inout UpstreamConfiguration) -> Void = { _ in },
                   _ body: (UpstreamTransport, ScriptedHTTP1Server) async throws -> Void) async throws {
        let server = try ScriptedHTTP1Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let transport = try TransportFactory.make(configuration(port: server.port, tweak), group: group, logger: Logger(label: "test"))
        try await body(transport, server)
        await transport.shutdown()
        try server.stop()
        try await group.shutdownGracefully()
    }

    @Test func a503WithRetryAfterZeroThenAnAnswerSucceedsOnTheSecondAttempt() async throws {
        try await withHTTP1 { transport, server in
            let out = await runCalls(transport, [get("/busy-once/0")])
            #expect(out.allSettledOnce && out.status(0) == 200 && out.attempts(0) == 2)
            // The policy's retry is not a re-send of an unprocessed request (resends_total).
            #expect(out.resends(0) == 0)
            #expect(server.requests.count == 2)
        }
    }

    /// The engine's own re-sends (libcurl's, after a kept connection died unanswered) and the
    /// policy's retries share one bound: at most max(4, retry.attempts) sends in all. Each try
    /// re-sent as if it were the first, and one item went out 8 times with `attempts: 3`.
    @Test func reSendsAndRetriesTogetherStayWithinFourSends() async throws {
        try await withHTTP1({ $0.connections = 8 }) { transport, server in
            for round in 0..<3 {
                // Eight kept connections, each of which dies at the next request on it.
                let warm = await runCalls(transport, (0..<8).map { get("/slow/50?warm\(round)-\($0)") })
                #expect(warm.allSettledOnce)
                let out = await runCalls(transport, [get("/close?r\(round)")])
                let sent = server.requests.filter { $0.target == "/close?r\(round)" }.count
                #expect(out.allSettledOnce && out.status(0) == 502)
                #expect(sent <= 4 && out.attempts(0) == sent, "sent \(sent), attempts \(out.attempts(0))")
            }
        }
    }

    @Test func aPostIsRetriedOnlyWithAnIdempotencyKey() async throws {
        try await withHTTP1 { transport, server in
            var keyed = post("/busy-once/0?keyed")
            keyed.headers.append((name: "Idempotency-Key", value: "k-1"))
            let out = await runCalls(transport, [post("/busy-once/0?plain"), keyed])
            #expect(out.allSettledOnce)
            #expect(out.status(0) == 503 && out.attempts(0) == 1)
            #expect(out.status(1) == 200 && out.attempts(1) == 2)
            #expect(server.requests.filter { $0.target.hasSuffix("plain") }.count == 1)
            #expect(server.requests.filter { $0.target.hasSuffix("keyed") }.count == 2)
        }
    }

    @Test func aRetryAfterLongerThanMaxBackoffIsNotWaitedFor() async throws {
        try await withHTTP1 { transport, server in
            let out = await runCalls(transport, [get("/busy/3600")])
            #expect(out.allSettledOnce && out.status(0) == 503 && out.attempts(0) == 1)
            #expect(server.requests.count == 1)
        }
    }

    /// A Retry-After the item could wait for, but not its batch: the route's `deadline` comes
    /// first, so the upstream's 503 stands (it became the deadline's 504, the 503 lost).
    @Test func aRetryAfterPastTheBatchDeadlineIsNotWaitedFor() async throws {
        try await withHTTP1({ $0.retry.maxBackoff = .seconds(5) }) { transport, server in
            var request = get("/busy/1")
            request.batchDeadline = .now() + .milliseconds(500)
            let out = await runCalls(transport, [request])
            #expect(out.allSettledOnce && out.status(0) == 503 && out.attempts(0) == 1)
            #expect(server.requests.count == 1)
            // Without a batch deadline, the same answer is waited for and sent again.
            let waited = await runCalls(transport, [get("/busy-once/1")])
            #expect(waited.status(0) == 200 && waited.attempts(0) == 2)
        }
    }

    @Test func theBudgetCapsRetriesDuringATotalOutage() async throws {
        try await withHTTP1({ $0.retry.budget = 0.2; $0.retry.minRetries = 3; $0.connections = 8 }) { transport, server in
            let out = await runCalls(transport, (0..<100).map { get("/status/503?i=\($0)") }, within: 10)
            #expect(out.allSettledOnce)
            #expect((0..<100).allSatisfy { out.status($0) == 503 })
            // 100 first attempts + 20 % of them + 3: at most 123 requests reach the upstream.
            #expect(server.requests.count >= 100 && server.requests.count <= 123, "\(server.requests.count) requests")
        }
    }

    @Test func anOutageOpensTheCircuitWhichFailsFastAndRecoveryClosesIt() async throws {
        try await withHTTP1({
            $0.retry.attempts = 1
            var breaker = CircuitBreakerConfiguration()
            breaker.minRequests = 10
            // Long enough that a loaded machine still checks the open state inside it.
            breaker.openFor = .seconds(1)
            $0.circuitBreaker = breaker
        }) { transport, server in
            let resilient = try #require(transport as? ResilientTransport)
            let outage = await runCalls(transport, (0..<12).map { get("/status/503?i=\($0)") })
            #expect((0..<12).allSatisfy { outage.status($0) == 503 })
            #expect(resilient.circuitState == .open)
            let seen = server.requests.count
            let fast = await runCalls(transport, (0..<10).map { get("/ok?fast=\($0)") })
            #expect((0..<10).allSatisfy { fast.status($0) == 503 && fast.attempts($0) == 0 })
            #expect(fast.reason(0) == "circuit open for upstream flaky; not sent")
            #expect(server.requests.count == seen, "the upstream saw calls while the circuit was open")
            try await Task.sleep(nanoseconds: 1_050_000_000)
            let probes = await runCalls(transport, (0..<3).map { get("/ok?probe=\($0)") })
            #expect((0..<3).allSatisfy { probes.status($0) == 200 })
            #expect(resilient.circuitState == .closed)
            let after = await runCalls(transport, (0..<5).map { get("/ok?after=\($0)") })
            #expect((0..<5).allSatisfy { after.status($0) == 200 })
        }
    }

    /// An HTTP/1.1 transport with a circuit breaker that an outage has opened and whose
    /// `openFor` has passed: its next items are probes.
    func withHalfOpenCircuit(_ body: (UpstreamTransport, ResilientTransport) async throws -> Void) async throws {
        try await withHTTP1({
            var breaker = CircuitBreakerConfiguration()
            breaker.minRequests = 4
            breaker.openFor = .milliseconds(300)
            $0.circuitBreaker = breaker
            $0.retry.maxBackoff = .seconds(5)
        }) { transport, _ in
            let resilient = try #require(transport as? ResilientTransport)
            _ = await runCalls(transport, (0..<6).map { get("/status/500?i=\($0)") })
            #expect(resilient.circuitState == .open)
            try await Task.sleep(nanoseconds: 350_000_000)
            try await body(transport, resilient)
        }
    }

    /// A half-open circuit closes after three probe items succeed, not after three attempts of
    /// one: a probe answered 429 and retried counted each retry as another probe's success.
    @Test func oneProbeRetriedIsOneProbe() async throws {
        try await withHalfOpenCircuit { transport, resilient in
            let probe = await runCalls(transport, [get("/status/429?probe")])
            #expect(probe.status(0) == 429 && probe.attempts(0) == 3)
            #expect(resilient.circuitState == .halfOpen)
        }
    }

    /// A probe that ends without an outcome of its own (cancelled in its backoff) gives its place
    /// back: a leaked place left the circuit half-open and turning every item away for good.
    @Test func aProbeCancelledInItsBackoffGivesItsPlaceBack() async throws {
        try await withHalfOpenCircuit { transport, resilient in
            let probe = transport.execute(get("/busy/1?probe")) { _ in }
            try await Task.sleep(nanoseconds: 300_000_000)  // its 503 is in; the retry waits 1 s
            probe.cancel()
            try await Task.sleep(nanoseconds: 50_000_000)
            let next = await runCalls(transport, (0..<3).map { get("/ok?probe=\($0)") })
            #expect((0..<3).allSatisfy { next.status($0) == 200 }, "\((0..<3).map { next.reason($0) })")
            #expect(resilient.circuitState == .closed)
        }
    }

    /// A retry is counted when it goes: one cancelled during its backoff (the client left)
    /// never reached the upstream, and sheaf_upstream_retries_total counted it all the same.
    @Test func aRetryCancelledInItsBackoffIsNotCounted() async throws {
        let server = try ScriptedHTTP1Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let retries = NIOLockedValueBox(0)
        var events = UpstreamEvents()
        events.retry = { _, _ in retries.withLockedValue { $0 += 1 } }
        let transport = try TransportFactory.make(configuration(port: server.port) { $0.retry.maxBackoff = .seconds(5) },
                                                  group: group, logger: Logger(label: "test"), events: events)
        let settled = NIOLockedValueBox<UpstreamResult?>(nil)
        let call = transport.execute(get("/busy/1")) { result in settled.withLockedValue { $0 = result } }
        try await Task.sleep(nanoseconds: 300_000_000)  // the 503 is in; the retry waits 1 s
        call.cancel()
        try await Task.sleep(nanoseconds: 1_200_000_000)
        #expect(server.requests.count == 1)
        #expect(retries.withLockedValue { $0 } == 0)
        #expect(settled.withLockedValue { $0 } != nil)
        await transport.shutdown()
        try server.stop()
        try await group.shutdownGracefully()
    }

    /// Silent calls cut as `FanOutRun` cuts them: all at once through `transport.cancel`, a
    /// moment after `deadline` (the batch's, nil: the client left before any deadline).
    /// `batchAge`: how long the batch had run when these calls were handed over.
    func cut(_ transport: UpstreamTransport, _ count: Int, tag: String, deadline: TimeAmount?,
             batchAge: TimeAmount = .zero) async throws {
        let batchDeadline = NIODeadline.now() + (deadline ?? .seconds(60))
        let batchStarted = NIODeadline.now() - batchAge
        let calls = (0..<count).map { i -> UpstreamCall in
            var request = get("/silent?\(tag)=\(i)")
            request.batchDeadline = batchDeadline
            request.batchStarted = batchStarted
            return transport.execute(request) { _ in }
        }
        try await Task.sleep(nanoseconds: UInt64((deadline ?? .milliseconds(300)).nanoseconds) + 100_000_000)
        transport.cancel(calls)
        try await Task.sleep(nanoseconds: 100_000_000)
    }

    /// A call on the wire that the batch's deadline cuts is the upstream not answering in the
    /// time the client allowed: it counts against the circuit, as a route timeout counts in
    /// Envoy's outlier detection. Before, a silent upstream behind a `deadline` shorter than its
    /// `timeout` never opened it. A call cut while it waited for a connection, or cancelled
    /// before any deadline (its client left), or handed over late in its batch, says nothing of
    /// the upstream.
    @Test(arguments: [UpstreamProtocol.http1, .h2c])
    func deadlineCutsOnTheWireCountAgainstTheCircuit(_ engine: UpstreamProtocol) async throws {
        let server: any Sendable
        let port: Int
        if engine == .h2c {
            let h2 = try ScriptedHTTP2Server()
            (server, port) = (h2, h2.port)
        } else {
            let h1 = try ScriptedHTTP1Server()
            (server, port) = (h1, h1.port)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let transport = try TransportFactory.make(configuration(port: port, protocol: engine, connections: 2) {
            $0.retry.attempts = 1
            var breaker = CircuitBreakerConfiguration()
            breaker.minRequests = 4
            breaker.openFor = .seconds(5)
            $0.circuitBreaker = breaker
        }, group: group, logger: Logger(label: "test"))
        let resilient = try #require(transport as? ResilientTransport)
        try await cut(transport, 6, tag: "left", deadline: nil)
        #expect(resilient.circuitState == .closed)
        // Handed over late in their batch (700 ms into a 1 s deadline): the last wave of a batch
        // too big for its deadline, cut soon after it went. A client could otherwise open the
        // circuit of a healthy upstream with one oversized batch.
        try await cut(transport, 6, tag: "late", deadline: .milliseconds(300), batchAge: .milliseconds(700))
        #expect(resilient.circuitState == .closed)
        if engine == .http1 {
            // Two connections: two calls on the wire, four waiting. Two failures are under min_requests.
            try await cut(transport, 6, tag: "queued", deadline: .milliseconds(300))
            #expect(resilient.circuitState == .closed)
            try await cut(transport, 2, tag: "more", deadline: .milliseconds(300))
        } else {
            try await cut(transport, 4, tag: "cut", deadline: .milliseconds(300))
        }
        #expect(resilient.circuitState == .open)
        let fast = await runCalls(transport, [get("/ok?fast")])
        #expect(fast.status(0) == 503 && fast.reason(0) == "circuit open for upstream flaky; not sent")
        await transport.shutdown()
        if let h2 = server as? ScriptedHTTP2Server { await h2.stop() }
        if let h1 = server as? ScriptedHTTP1Server { try h1.stop() }
        try await group.shutdownGracefully()
    }

    @Test func maxQueuedFailsTheExcessFastOnHTTP1() async throws {
        try await withHTTP1({ $0.retry.attempts = 1; $0.connections = 1; $0.maxQueued = 2 }) { transport, server in
            let out = await runCalls(transport, (0..<5).map { get("/slow/300?i=\($0)") })
            #expect(out.allSettledOnce)
            let statuses = (0..<5).map { out.status($0) }
            #expect(statuses.filter { $0 == 200 }.count == 3 && statuses.filter { $0 == 503 }.count == 2, "\(statuses)")
            #expect((0..<5).contains { out.reason($0).contains("has max_queued (2) items waiting") })
        }
    }

    @Test func maxQueuedFailsTheExcessFastOnHTTP2() async throws {
        var script = ScriptedHTTP2Server.Script()
        script.settings = [(0x3, 1)]  // SETTINGS_MAX_CONCURRENT_STREAMS = 1
        try await withH2(script, tweak: { $0.maxQueued = 2 }) { transport, _ in
            // One item holds the only stream; of the next four, two wait and two are refused.
            let first = NIOLockedValueBox<Int?>(nil)
            _ = transport.execute(get("/slow/400?first")) { result in first.withLockedValue { $0 = (try? result.get())?.status } }
            try await Task.sleep(nanoseconds: 150_000_000)
            let out = await runCalls(transport, (0..<4).map { get("/slow/100?i=\($0)") })
            #expect(out.allSettledOnce)
            let statuses = (0..<4).map { out.status($0) }
            #expect(statuses.filter { $0 == 200 }.count == 2 && statuses.filter { $0 == 503 }.count == 2, "\(statuses)")
            #expect(first.withLockedValue { $0 } == 200)
        }
    }

    @Test func aStreamResetIsRetriedForAGetOverHTTP2() async throws {
        let server = try ScriptedHTTP2Server()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let transport = try TransportFactory.make(configuration(port: server.port, protocol: .h2c), group: group, logger: Logger(label: "test"))
        let out = await runCalls(transport, [get("/reset-once"), post("/reset-once?post")])
        #expect(out.allSettledOnce)
        #expect(out.status(0) == 200 && out.attempts(0) == 2 && out.resends(0) == 0)
        #expect(out.status(1) == 502 && out.attempts(1) == 1)  // a POST that may have arrived is not sent again
        // Under the policy too, the engine's re-send of a refused stream is a re-send.
        let mixed = await runCalls(transport, [get("/refuse-once?mixed")])
        #expect(mixed.status(0) == 200 && mixed.attempts(0) == 2 && mixed.resends(0) == 1)
        await transport.shutdown()
        await server.stop()
        try await group.shutdownGracefully()
    }
}
