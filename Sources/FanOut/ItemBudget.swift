import Dispatch
import NIOConcurrencyHelpers

/// Items in flight across every batch of the process (`max_items_in_flight`). A batch starts an
/// item only with a token. While other batches wait for tokens, a batch holds at most an equal
/// share of them, and every token given back wakes the waiting batches to try again, so one
/// route cannot starve the others. Without this limit there is no budget at all, and nothing is
/// paid per item.
public final class ItemBudget: @unchecked Sendable {
    public let limit: Int
    private let lock = NIOLock()
    private var used = 0
    private var waiters: [(id: ObjectIdentifier, wake: @Sendable () -> Void)] = []

    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Tokens in use now (for metrics and tests).
    public var inUse: Int { lock.withLock { used } }

    /// Up to `count` more tokens for the batch `id`, which holds `held` already. When it gets
    /// fewer than it asked for, `wake` is called (from another thread) once tokens come back.
    func acquire(_ count: Int, held: Int, id: ObjectIdentifier, wake: @escaping @Sendable () -> Void) -> Int {
        guard count > 0 else { return 0 }
        return lock.withLock {
            waiters.removeAll { $0.id == id }
            let contenders = waiters.count + 1
            let share = contenders == 1 ? limit : max(1, limit / contenders)
            let granted = max(0, min(count, limit - used, share - held))
            used += granted
            if granted < count { waiters.append((id, wake)) }
            return granted
        }
    }

    /// Gives `count` tokens back and wakes every waiting batch to claim again. Waiting batches
    /// stay in line (and keep counting toward the share) until they get what they asked for.
    /// The wakes run on another thread: the caller may hold its own batch's lock, and a woken
    /// batch takes its own.
    func release(_ count: Int) {
        guard count > 0 else { return }
        let woken = lock.withLock { () -> [@Sendable () -> Void] in
            used -= count
            return waiters.map(\.wake)
        }
        for wake in woken { DispatchQueue.global().async(execute: wake) }
    }

    /// The batch ended: it waits for nothing any more.
    func forget(_ id: ObjectIdentifier) {
        lock.withLock { waiters.removeAll { $0.id == id } }
    }
}
