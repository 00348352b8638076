import NIOConcurrencyHelpers

/// Encoded response bytes of one client connection that its socket has not taken yet, shared by
/// the HTTP/2 streams of a connection. Past `limit` its responses' batches are told to stop
/// reading upstream bodies; below half of it, to go on (hysteresis, so a client reading at the
/// edge does not toggle the upstreams on every write).
final class OutputBudget: @unchecked Sendable {
    let limit: Int
    private let lock = NIOLock()
    private var unsent = 0
    private var over = false
    private var listeners: [ObjectIdentifier: @Sendable (Bool) -> Void] = [:]

    init(limit: Int) {
        self.limit = limit
    }

    /// `handler(true)`: the budget is full; `false`: room again. Called on crossing only.
    func register(_ owner: AnyObject, _ handler: @escaping @Sendable (Bool) -> Void) {
        let full = lock.withLock { () -> Bool in
            listeners[ObjectIdentifier(owner)] = handler
            return over
        }
        if full { handler(true) }
    }

    func unregister(_ owner: AnyObject) {
        _ = lock.withLock { listeners.removeValue(forKey: ObjectIdentifier(owner)) }
    }

    func add(_ count: Int) {
        guard count > 0 else { return }
        let notify = lock.withLock { () -> [@Sendable (Bool) -> Void] in
            unsent += count
            guard !over, unsent > limit else { return [] }
            over = true
            return Array(listeners.values)
        }
        for handler in notify { handler(true) }
    }

    func remove(_ count: Int) {
        guard count > 0 else { return }
        let notify = lock.withLock { () -> [@Sendable (Bool) -> Void] in
            unsent -= count
            guard over, unsent <= limit / 2 else { return [] }
            over = false
            return Array(listeners.values)
        }
        for handler in notify { handler(false) }
    }
}
