import CFuzzerDriver
import FuzzSupport
import Logging
import NIOCore
import NIOEmbedded
@testable import Upstream

/// libFuzzer entry point for the HTTP/2 upstream engine: the input is what the upstream sends,
/// fed to nghttp2 through `HTTP2Connection` on an `EmbeddedChannel` standing in for the socket,
/// while three items (a GET, a POST whose body is larger than a window, another GET) wait on
/// the slot. The first byte is the size of the pieces the bytes arrive in (0: all at once).
/// Checked besides crashes: once the connection is gone, every item was settled exactly once
/// and the gauges are back to zero (README: every item leaves with exactly one status).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let piece = data[0] == 0 ? Int.max : Int(data[0])
    let input = UnsafeBufferPointer(start: data + 1, count: size - 1)

    let loop = EmbeddedEventLoop()
    var configuration = UpstreamConfiguration(name: "fuzz", endpoint: UpstreamEndpoint(scheme: "http", host: "upstream", port: 80, basePath: ""))
    configuration.maxResponseBodyBytes = 100  // small, so that truncation runs too
    var logger = Logger(label: "fuzz")
    logger.logLevel = .critical
    let slot = HTTP2Slot(configuration: configuration, eventLoop: loop, logger: logger)
    var channel: EmbeddedChannel?
    slot.attach = { connection in
        guard channel == nil else {
            // Items re-sent after the fed connection ended: their new connection fails, as a
            // refused TCP connect would (later, from the event loop).
            loop.execute { slot.connectionFailedToConnect(connection, error: ChannelError.connectTimeout(.zero)) }
            return
        }
        let embedded = EmbeddedChannel(handler: HTTP2ConnectionHandler(connection: connection), loop: loop)
        channel = embedded
        _ = embedded.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: 80))
    }

    let outcomes = Outcomes()
    let requests = [
        UpstreamRequest(method: "GET", path: "/a", headers: [("accept", "application/json")]),
        UpstreamRequest(method: "POST", path: "/b", headers: [("content-type", "text/plain")],
                        body: ByteBuffer(repeating: UInt8(ascii: "b"), count: 70_000)),
        UpstreamRequest(method: "GET", path: "/c"),
    ]
    for (index, request) in requests.enumerated() {
        slot.enqueue(HTTP2Exchange(request: request, deadline: .now() + .seconds(60), slot: slot,
                                   sink: ClosureSink { _ in outcomes.settled(index) }, tag: index))
    }
    var offset = 0
    while offset < input.count, let live = channel, live.isActive {
        let count = min(piece, input.count - offset)
        _ = try? live.writeInbound(ByteBuffer(bytes: UnsafeBufferPointer(rebasing: input[offset..<offset + count])))
        offset += count
        loop.run()
        while (try? live.readOutbound(as: ByteBuffer.self)) ?? nil != nil {}
    }
    _ = try? channel?.finish()
    loop.run()

    check(outcomes.counts == [1, 1, 1], "items settled \(outcomes.counts) times")
    check(slot.gauges.streams.load(ordering: .relaxed) == 0, "streams gauge at \(slot.gauges.streams.load(ordering: .relaxed))")
    check(slot.gauges.connections.load(ordering: .relaxed) == 0, "connections gauge at \(slot.gauges.connections.load(ordering: .relaxed))")
    slot.attach = nil
    try? loop.syncShutdownGracefully()
    return 0
}

/// How often each item's completion ran. Only touched on the embedded loop's (this) thread.
final class Outcomes: @unchecked Sendable {
    var counts = [0, 0, 0]
    func settled(_ index: Int) { counts[index] += 1 }
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzHTTP2`.
@_cdecl("FuzzHTTP2_main")
public func fuzzHTTP2Main(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzHTTP2)
}
