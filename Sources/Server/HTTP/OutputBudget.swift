import NIOConcurrencyHelpers

/// Encoded response bytes of one client connection that its socket has not taken yet, shared by
/// the HTTP/2 streams of a connection. It becomes full past `limit` and has room again below
/// half of it (hysteresis, so a client reading at the edge does not toggle the upstreams on
/// every write). Listeners hear that the state changed and read `isFull` themselves, under
/// their own lock: notifications from different threads may arrive in any order, the state
/// they read is the current one.
final class OutputBudget: @unchecked Sendable {
    let limit: Int
    private let lock = NIOLock()
    private var unsent = 0
    private var over = false
    private var listeners: [ObjectIdentifier: @Sendable () -> Void] = [:]

    init(limit: Int) {
        self.limit = limit
    }

    var isFull: Bool { lock.withLock { over } }

    /// Nothing is waiting for the socket.
    var isEmpty: Bool { lock.withLock { unsent == 0 } }

    /// `changed` runs after each change between full and not full (and at once when full now).
    func register(_ owner: AnyObject, _ changed: @escaping @Sendable () -> Void) {
        let full = lock.withLock { () -> Bool in
            listeners[ObjectIdentifier(owner)] = changed
            return over
        }
        if full { changed() }
    }

    func unregister(_ owner: AnyObject) {
        _ = lock.withLock { listeners.removeValue(forKey: ObjectIdentifier(owner)) }
    }

    func add(_ count: Int) {
        guard count > 0 else { return }
        let notify = lock.withLock { () -> [@Sendable () -> Void] in
            unsent += count
            guard !over, unsent > limit else { return [] }
            over = true
            return Array(listeners.values)
        }
        for changed in notify { changed() }
    }

    func remove(_ count: Int) {
        guard count > 0 else { return }
        let notify = lock.withLock { () -> [@Sendable () -> Void] in
            unsent -= count
            guard over, unsent <= limit / 2 else { return [] }
            over = false
            return Array(listeners.values)
        }
        for changed in notify { changed() }
    }
}
