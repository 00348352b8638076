import Logging
import NIOConcurrencyHelpers
import NIOCore

/// HTTP/2 upstream transport: `connections` slots, each owning one libnghttp2 client session
/// on one NIO channel (replaced when the upstream sends GOAWAY or the connection drops).
/// Items are spread round-robin over the slots; each slot queues what exceeds the upstream's
/// SETTINGS_MAX_CONCURRENT_STREAMS.
public final class HTTP2Transport: UpstreamTransport, @unchecked Sendable {
    public let configuration: UpstreamConfiguration
    private let slots: [HTTP2Slot]
    private let next = NIOLockedValueBox(0)

    private let engineGauges: UpstreamGauges

    public convenience init(configuration: UpstreamConfiguration, group: EventLoopGroup, logger: Logger, events: UpstreamEvents = .none) {
        self.init(configuration: configuration, group: group, logger: logger, tls: nil, events: events)
    }

    /// `tls`: for an `https://` upstream (`protocol: h2`), the TLS every connection does.
    init(configuration: UpstreamConfiguration, group: EventLoopGroup, logger: Logger, tls: UpstreamTLS?, events: UpstreamEvents = .none) {
        self.configuration = configuration
        let count = max(1, configuration.connections)
        let gauges = UpstreamGauges(protocolName: tls == nil ? "h2c" : "h2")
        engineGauges = gauges
        self.slots = (0..<count).map { _ in
            HTTP2Slot(configuration: configuration, eventLoop: group.next(), logger: logger, tls: tls, slots: count,
                      gauges: gauges, events: events)
        }
    }

    public var gauges: [UpstreamGauges] { [engineGauges] }

    public func execute(_ request: UpstreamRequest, completion: @escaping @Sendable (UpstreamResult) -> Void) -> UpstreamCall {
        let slot = pickSlot()
        let exchange = HTTP2Exchange(request: request, deadline: .now() + configuration.timeout,
                                     slot: slot, completion: completion)
        if slot.eventLoop.inEventLoop {
            slot.enqueue(exchange)
        } else {
            slot.eventLoop.execute { slot.enqueue(exchange) }
        }
        return exchange
    }

    /// Round-robin: one batch spreads over every connection (and so over every event loop).
    private func pickSlot() -> HTTP2Slot {
        if slots.count == 1 { return slots[0] }
        let n = next.withLockedValue { value -> Int in
            value = value &+ 1
            return value
        }
        return slots[n % slots.count]
    }

    /// Cancels per slot, on the slot's loop, in slices that each yield to I/O: cancelling an
    /// 80k-item batch must not keep health checks (or other clients) waiting.
    public func cancel(_ calls: [UpstreamCall]) {
        var bySlot: [ObjectIdentifier: (HTTP2Slot, [HTTP2Exchange])] = [:]
        for call in calls {
            guard let exchange = call as? HTTP2Exchange else {
                call.cancel()
                continue
            }
            bySlot[ObjectIdentifier(exchange.slot), default: (exchange.slot, [])].1.append(exchange)
        }
        for (slot, exchanges) in bySlot.values {
            slot.eventLoop.execute { slot.cancel(exchanges[...]) }
        }
    }

    public func shutdown() async {
        for slot in slots {
            try? await slot.eventLoop.flatSubmit { slot.shutdown() }.get()
        }
    }
}
