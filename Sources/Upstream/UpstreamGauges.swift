import Atomics

/// What one engine holds for an upstream right now, for the metrics endpoint to read at scrape
/// time: counters the engine moves as things change (relaxed atomics, no lock on the item path).
public final class UpstreamGauges: Sendable {
    /// `h2c`, `h2` or `http/1.1`.
    public let protocolName: String
    /// Open connections.
    public let connections = ManagedAtomic<Int>(0)
    /// Requests on the wire (HTTP/2 streams open; HTTP/1.1 transfers holding a connection).
    public let streams = ManagedAtomic<Int>(0)
    /// Items waiting for a stream or a connection.
    public let queued = ManagedAtomic<Int>(0)

    public init(protocolName: String) {
        self.protocolName = protocolName
    }

    func add(_ counter: ManagedAtomic<Int>, _ delta: Int) {
        if delta != 0 { counter.wrappingIncrement(by: delta, ordering: .relaxed) }
    }
}
