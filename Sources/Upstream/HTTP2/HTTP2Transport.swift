import Atomics
import Logging
import NIOCore
import NIOPosix

/// HTTP/2 upstream transport: `connections` slots, each owning one libnghttp2 client session
/// on one NIO channel (replaced when the upstream sends GOAWAY or the connection drops).
/// An item handed over on an event loop goes to a slot on that loop while it has a free stream
/// (the batch stays on its client's loop, as Envoy keeps a request on its worker's pools);
/// otherwise items are spread round-robin over the slots. Each slot queues what exceeds the
/// upstream's SETTINGS_MAX_CONCURRENT_STREAMS.
public final class HTTP2Transport: UpstreamTransport, @unchecked Sendable {
    public let configuration: UpstreamConfiguration
    private let slots: [HTTP2Slot]
    /// The slots by the event loop they live on, for the local pick.
    private let slotsByLoop: [ObjectIdentifier: [HTTP2Slot]]
    private let next = ManagedAtomic(0)

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
        let slots = (0..<count).map { _ in
            HTTP2Slot(configuration: configuration, eventLoop: group.next(), logger: logger, tls: tls, slots: count,
                      gauges: gauges, events: events)
        }
        self.slots = slots
        slotsByLoop = Dictionary(grouping: slots) { ObjectIdentifier($0.eventLoop) }
    }

    public var gauges: [UpstreamGauges] { [engineGauges] }

    public func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let slot = pickSlot()
        let exchange = HTTP2Exchange(request: request, deadline: .now() + configuration.timeout,
                                     slot: slot, sink: sink, tag: tag)
        if slot.eventLoop.inEventLoop {
            slot.enqueue(exchange)
        } else {
            slot.eventLoop.execute { slot.enqueue(exchange) }
        }
        return exchange
    }

    /// Where an item goes. First a slot on the calling event loop that can put it on the wire
    /// now: no hop to another loop, and its answer comes back on the loop that writes the 207
    /// (Envoy keeps a request on its worker's pools the same way). Else another slot whose last
    /// published state says it has room, so a batch larger than its loop's streams still spreads
    /// over every connection. Else the calling loop's own slot queues it: when every connection is
    /// full, waiting at home costs nothing, while a hop costs on the way out and on the way back.
    /// Measured in BENCHMARKS.md (issue 13). Called off the event loops, or with
    /// `balance: connections`, it is round-robin.
    private func pickSlot() -> HTTP2Slot {
        if slots.count == 1 { return slots[0] }
        // Non-negative even after wrapping: it picks by remainder.
        let n = next.wrappingIncrementThenLoad(ordering: .relaxed) & Int.max
        guard configuration.balance == .loop, let loop = MultiThreadedEventLoopGroup.currentEventLoop,
              let local = slotsByLoop[ObjectIdentifier(loop)] else {
            return slots[n % slots.count]
        }
        // A slot's own state may be read only on its loop: these are on the calling one.
        for offset in 0..<local.count {
            let slot = local[(n &+ offset) % local.count]
            if slot.hasRoomNow { return slot }
        }
        for offset in 0..<slots.count {
            let slot = slots[(n &+ offset) % slots.count]
            if slot.eventLoop !== loop, slot.roomHint.load(ordering: .relaxed) { return slot }
        }
        return local[n % local.count]
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
