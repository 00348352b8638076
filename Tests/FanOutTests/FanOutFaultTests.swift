import Dispatch
import FanOut
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import Upstream

/// Waits for `onFinish`, but never longer than `seconds`: a run that loses an item must fail the
/// test, not hang it. Returns false on timeout.
func waitForFinish(seconds: Double, _ start: (@escaping @Sendable () -> Void) -> Void) async -> Bool {
    let finished = NIOLockedValueBox(false)
    start { finished.withLockedValue { $0 = true } }
    let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
    while DispatchTime.now().uptimeNanoseconds < deadline {
        if finished.withLockedValue({ $0 }) { return true }
        try? await Task.sleep(nanoseconds: 5_000_000)
    }
    return finished.withLockedValue { $0 }
}

/// A transport that cancels the batch from inside its own `execute` (as a departing client
/// would, on another thread, while the launch loop is still starting claimed items).
final class CancellingTransport: UpstreamTransport, @unchecked Sendable {
    let configuration = UpstreamConfiguration(name: "cancelling", endpoint: UpstreamEndpoint(scheme: "http", host: "x", port: 1, basePath: ""))
    let inner = FakeTransport(hold: true)
    let cancelAt: Int
    let calls = NIOLockedValueBox(0)
    var run: FanOutRun?

    init(cancelAt: Int) { self.cancelAt = cancelAt }

    func execute(_ request: UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        let n = calls.withLockedValue { $0 += 1; return $0 }
        let call = inner.execute(request, completion: completion)
        if n == cancelAt { run?.cancel(status: 499, reason: "client gone") }
        return call
    }
    func shutdown() {}
}

@Test func itemsClaimedButNotStartedAreNotSentAfterACancel() async {
    let transport = CancellingTransport(cancelAt: 3)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = (0..<10).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/\($0)")) }
    let finished = await waitForFinish(seconds: 5) { done in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 10, onResult: { index, _, outcome, _ in
            results.withLockedValue { $0[index] = outcome }
        }, onFinish: done)
        transport.run = run
        run.start()
    }
    #expect(finished)
    #expect(transport.calls.withLockedValue { $0 } == 3)
    let final = results.withLockedValue { $0 }
    #expect(final.count == 10)
    #expect(final.values.allSatisfy { $0.status == 499 && $0.reason == "client gone" })
    // The call that was being started when the cancel came is cancelled on the wire too.
    #expect(transport.inner.held.withLockedValue { $0.allSatisfy { $0.0.cancelled.withLockedValue { $0 } } })
}

/// A transport that loses some calls: never answers them, until they are cancelled (then it
/// settles them as cancelled at once, as the real engines do on their own loop).
final class LosingTransport: UpstreamTransport, @unchecked Sendable {
    final class Call: UpstreamCall, @unchecked Sendable {
        var onCancel: (() -> Void)?
        func cancel() { onCancel?() }
    }
    let configuration: UpstreamConfiguration
    init(timeout: TimeAmount) {
        var configuration = UpstreamConfiguration(name: "lossy", endpoint: UpstreamEndpoint(scheme: "http", host: "x", port: 1, basePath: ""))
        configuration.timeout = timeout
        self.configuration = configuration
    }
    func execute(_ request: UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        let call = Call()
        if !request.path.hasSuffix("/lost") {
            DispatchQueue.global().async { completion(.success(UpstreamResponse(status: 200, headers: [], body: ByteBuffer()))) }
        } else {
            call.onCancel = { completion(.failure(UpstreamError(.cancelled, "cancelled"))) }
        }
        return call
    }
    func shutdown() {}
}

@Test func theWatchdogTurnsALostItemInto502() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let transport = LosingTransport(timeout: .milliseconds(100))
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = (0..<6).map { i in
        BatchItem(id: "\(i)", href: "/\(i)", request: UpstreamRequest(method: "GET", path: i % 3 == 1 ? "/lost" : "/ok"))
    }
    let finished = await waitForFinish(seconds: 3) { done in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 6,
                              watchdog: .init(eventLoop: group.next(), grace: .milliseconds(100)),
                              onResult: { index, _, outcome, _ in results.withLockedValue { $0[index] = outcome } },
                              onFinish: done)
        run.start()
    }
    try await group.shutdownGracefully()
    #expect(finished)
    let final = results.withLockedValue { $0 }
    #expect(final.count == 6)
    for i in 0..<6 {
        if i % 3 == 1 {
            #expect(final[i]?.status == 502)
            #expect(final[i]?.reason?.contains("item lost by the transport") == true)
        } else {
            #expect(final[i]?.status == 200)
        }
    }
}

@Test func suspendingReadingHoldsInFlightCallsAndStartsNothingNew() async {
    let transport = FakeTransport(hold: true)
    let batch = (0..<10).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/\($0)")) }
    let results = NIOLockedValueBox(0)
    let run = FanOutRun(items: batch, transport: transport, concurrency: 4, onResult: { _, _, _, _ in
        results.withLockedValue { $0 += 1 }
    }, onFinish: {})
    run.start()
    run.suspendReading()
    let held = transport.held.withLockedValue { $0 }
    #expect(held.count == 4)
    #expect(held.allSatisfy { $0.0.suspended.withLockedValue { $0 } })
    // One call finishes anyway (its body had already arrived): nothing new starts.
    held[0].1(.success(UpstreamResponse(status: 200, headers: [], body: ByteBuffer())))
    #expect(transport.state.withLockedValue { $0.calls } == 4)
    run.pause()   // the socket is unwritable too
    run.resumeReading()
    #expect(held.dropFirst().allSatisfy { !$0.0.suspended.withLockedValue { $0 } })  // the live ones
    #expect(transport.state.withLockedValue { $0.calls } == 4)  // still paused for writability
    run.resume()
    #expect(transport.state.withLockedValue { $0.calls } == 5)
    run.cancel(status: 499, reason: "done")
}
