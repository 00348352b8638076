import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing
import Upstream

/// The HTTP/1.1 engine against `ScriptedHTTP1Server`. Serialized: several tests measure time
/// against a deadline, and two cores shared with other tests would blur it.
@Suite(.serialized) struct CurlTransportTests {}

/// Every settlement of one call, each with the time since the call was handed over.
final class Settlements: @unchecked Sendable {
    private let lock = NIOLock()
    private var results: [(result: UpstreamResult, after: TimeAmount)] = []
    private let arrived = DispatchSemaphore(value: 0)
    private let handedOver = NIODeadline.now()

    fileprivate func record(_ result: UpstreamResult) {
        let after = NIODeadline.now() - handedOver
        lock.withLock { results.append((result, after)) }
        arrived.signal()
    }

    /// Settlements so far; a correct transport never makes this more than one.
    var count: Int { lock.withLock { results.count } }

    /// The first settlement, waiting for it at most `timeout`; nil if none came.
    func first(within timeout: TimeAmount = .seconds(2)) -> (result: UpstreamResult, after: TimeAmount)? {
        guard lock.withLock({ results.isEmpty }) else { return lock.withLock { results[0] } }
        guard arrived.wait(timeout: .now() + .nanoseconds(Int(timeout.nanoseconds))) == .success else { return nil }
        arrived.signal()  // leave the signal for the next caller
        return lock.withLock { results[0] }
    }

    /// The first settlement's error; records an issue when it succeeded or never came.
    func error(within timeout: TimeAmount = .seconds(2), sourceLocation: SourceLocation = #_sourceLocation) -> UpstreamError? {
        guard let result = settled(within: timeout, sourceLocation) else { return nil }
        guard case .failure(let error) = result else {
            Issue.record("expected a failure, got a response", sourceLocation: sourceLocation)
            return nil
        }
        return error
    }

    /// The first settlement's response; records an issue when it failed or never came.
    func response(within timeout: TimeAmount = .seconds(2), sourceLocation: SourceLocation = #_sourceLocation) -> UpstreamResponse? {
        do {
            return try settled(within: timeout, sourceLocation)?.get()
        } catch {
            Issue.record("expected a response, got \(error.kind): \(error.message)", sourceLocation: sourceLocation)
            return nil
        }
    }

    private func settled(within timeout: TimeAmount, _ sourceLocation: SourceLocation) -> UpstreamResult? {
        guard let first = first(within: timeout) else {
            Issue.record("the call did not settle within \(timeout.configText)", sourceLocation: sourceLocation)
            return nil
        }
        return first.result
    }
}

/// A `CurlTransport` in front of a fresh `ScriptedHTTP1Server`, torn down by `close()`.
final class CurlHarness {
    let server: ScriptedHTTP1Server
    let transport: CurlTransport
    private var calls: [Settlements] = []

    init(_ adjust: (inout UpstreamConfiguration) -> Void = { _ in }) throws {
        server = try ScriptedHTTP1Server()
        var configuration = UpstreamConfiguration(
            name: "legacy", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: server.port, basePath: ""),
            protocol: .http1, connections: 2, timeout: .seconds(2), connectTimeout: .seconds(1))
        adjust(&configuration)
        transport = CurlTransport(configuration: configuration, logger: .init(label: "curl-tests"))
    }

    /// Hands `request` to the transport; the call and what it settled with.
    @discardableResult
    func execute(_ request: UpstreamRequest) -> (call: UpstreamCall, settlements: Settlements) {
        let settlements = Settlements()
        calls.append(settlements)
        let call = transport.execute(request) { settlements.record($0) }
        return (call, settlements)
    }

    /// Waits at most `timeout` for the server to have received `count` requests; its requests.
    @discardableResult
    func awaitRequests(_ count: Int, within timeout: TimeAmount = .seconds(2)) -> [ScriptedHTTP1Server.Request] {
        let deadline = NIODeadline.now() + timeout
        while server.requests.count < count && NIODeadline.now() < deadline { usleep(2_000) }
        let requests = server.requests
        #expect(requests.count >= count, "the server received \(requests.count) of \(count) requests")
        return requests
    }

    /// Shuts the transport down, stops the server, and checks that every call settled exactly once.
    func close() throws {
        transport.beginShutdown()
        for call in calls { _ = call.first(within: .seconds(2)) }
        // Room for a stray second settlement to show up before counting.
        usleep(20_000)
        for call in calls { #expect(call.count == 1, "a call settled \(call.count) times") }
        try server.stop()
    }
}
