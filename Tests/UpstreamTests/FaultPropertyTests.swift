import Logging
import NIOCore
import NIOPosix
import PropertyBased
import Testing
import Upstream

/// A fault an item may meet on the scripted upstream, and the status it must end with.
enum ItemFault: CaseIterable, Sendable {
    case ok, notFound, unavailable, silent, reset, refusedOnce, refusedAlways, earlyAnswer, closedOnce

    func path(_ i: Int) -> String {
        switch self {
        case .ok: return "/ok?i=\(i)"
        case .notFound: return "/status/404?i=\(i)"
        case .unavailable: return "/status/503?i=\(i)"
        case .silent: return "/silent?i=\(i)"
        case .reset: return "/reset/2?i=\(i)"
        case .refusedOnce: return "/refuse-once?i=\(i)"
        case .refusedAlways: return "/refuse?i=\(i)"
        case .earlyAnswer: return "/early?i=\(i)"
        case .closedOnce: return "/close-once?i=\(i)"
        }
    }

    var expectedStatus: Int {
        switch self {
        case .ok, .refusedOnce, .earlyAnswer: return 200
        case .notFound, .closedOnce: return 404
        case .unavailable: return 503
        case .silent: return 504
        case .reset, .refusedAlways: return 502
        }
    }
}

@Test func everyItemSettlesOnceWithItsFaultsStatusOverHTTP2() async throws {
    let server = try ScriptedHTTP2Server()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    // Long enough that an answered item never runs into it on a loaded machine (at 400 ms one
    // did, about once in ten runs); a silent item still shows the 504.
    let timeout = TimeAmount.seconds(1)
    let transport = HTTP2Transport(configuration: h2Configuration(port: server.port, timeout: timeout, connections: 2),
                                   group: group, logger: Logger(label: "test"))
    var batchNumber = 0
    await propertyCheck(count: 12, input: Gen.element(of: ItemFault.allCases).compactMap { $0 }.array(of: 1...40)) { generated in
        batchNumber += 1
        // One dropped connection per batch: an item caught under four of them in a row has
        // used its sends and fails 502 by design, which would make the expected status depend on timing.
        var faults = generated
        if let first = faults.firstIndex(of: .closedOnce) {
            for i in faults.indices where i > first && faults[i] == .closedOnce { faults[i] = .ok }
        }
        let requests = faults.enumerated().map { i, fault in
            fault == .earlyAnswer
                ? UpstreamRequest(method: "PUT", path: fault.path(batchNumber * 1000 + i), body: ByteBuffer(repeating: 1, count: 100_000))
                : get(fault.path(batchNumber * 1000 + i))
        }
        await expectEachItemOnce(transport, requests, expected: faults.map { ($0.expectedStatus, "\($0)") }, timeout: 1)
    }
    await transport.shutdown()
    await server.stop()
    try await group.shutdownGracefully()
}

/// A fault the scripted HTTP/1.1 upstream can play, and the status it must end with.
enum HTTP1Fault: CaseIterable, Sendable {
    case ok, notFound, unavailable, slow, silent, closed, halfBody

    func path(_ i: Int) -> String {
        switch self {
        case .ok: return "/ok?i=\(i)"
        case .notFound: return "/status/404?i=\(i)"
        case .unavailable: return "/status/503?i=\(i)"
        case .slow: return "/slow/50?i=\(i)"
        case .silent: return "/silent?i=\(i)"
        case .closed: return "/close?i=\(i)"
        case .halfBody: return "/half?i=\(i)"
        }
    }

    var expectedStatus: Int {
        switch self {
        case .ok, .slow: return 200
        case .notFound: return 404
        case .unavailable: return 503
        case .silent: return 504
        case .closed, .halfBody: return 502
        }
    }
}

@Test func everyItemSettlesOnceWithItsFaultsStatusOverHTTP1() async throws {
    let server = try ScriptedHTTP1Server()
    var configuration = UpstreamConfiguration(name: "scripted1", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: server.port, basePath: ""),
                                              protocol: .http1, connections: 32, timeout: .milliseconds(400))
    configuration.connectTimeout = .seconds(1)
    let transport = CurlTransport(configuration: configuration, logger: Logger(label: "test"))
    var batchNumber = 0
    await propertyCheck(count: 10, input: Gen.element(of: HTTP1Fault.allCases).compactMap { $0 }.array(of: 1...24)) { faults in
        batchNumber += 1
        let requests = faults.enumerated().map { i, fault in get(fault.path(batchNumber * 1000 + i)) }
        // More connections than items: an item's timeout runs from hand-over, so one queued
        // behind silent ones would time out too, and its status would depend on the order.
        await expectEachItemOnce(transport, requests, expected: faults.map { ($0.expectedStatus, "\($0)") }, timeout: 0.4)
    }
    await transport.shutdown()
    try server.stop()
}

/// The property both engines must keep: each item settles exactly once, with the status its
/// fault calls for, and the batch ends within the item timeout plus one second.
func expectEachItemOnce(_ transport: UpstreamTransport, _ requests: [UpstreamRequest],
                        expected: [(status: Int, fault: String)], timeout: Double) async {
    let out = await runCalls(transport, requests, within: timeout + 1)
    #expect(out.allSettledOnce, "\(expected.map(\.fault))")
    for (i, item) in expected.enumerated() {
        #expect(out.status(i) == item.status, "item \(i) \(item.fault): \(out.reason(i))")
    }
    #expect(out.seconds < timeout + 1)
}
