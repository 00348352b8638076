#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import NIOConcurrencyHelpers

/// Gives memory freed by big batches back to the system once Sheaf is idle. An allocator keeps
/// freed memory for reuse; after a 100k-item burst that is hundreds of MiB an operator sees as
/// RSS for as long as the process lives. The return runs off the event loops, at most once per
/// quiet period, and only after batches big enough to matter.
final class MemoryReturn: @unchecked Sendable {
    private let lock = NIOLock()
    private var itemsSinceTrim = 0
    private var scheduled = false
    private let queue = DispatchQueue(label: "sheaf-memory-return", qos: .background)
    /// Items handled since the last trim before one is worth it.
    private let threshold: Int
    /// How long Sheaf must stay quiet after a batch before the trim.
    private let delay: DispatchTimeInterval
    /// Whether no batch runs now, asked again when the trim is due.
    private let isIdle: @Sendable () -> Bool
    private let trim: @Sendable () -> Void

    /// Returns freed memory with whichever allocator the process runs on: jemalloc (which the
    /// `sheaf` executable links) purges the dirty pages of all its arenas
    /// (`arena.<MALLCTL_ARENAS_ALL>.purge`); glibc's malloc trims its heaps. Looked up at run
    /// time: the library modules link no allocator, and neither header is in Swift's Glibc module.
    static let returnFreedMemory: @Sendable () -> Void = {
        #if canImport(Glibc)
        typealias MallCtl = @convention(c) (UnsafePointer<CChar>?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int>?,
                                            UnsafeMutableRawPointer?, Int) -> Int32
        typealias MallocTrim = @convention(c) (Int) -> Int32
        let process = UnsafeMutableRawPointer(bitPattern: 0)
        if let symbol = dlsym(process, "mallctl") {
            let mallctl = unsafeBitCast(symbol, to: MallCtl.self)
            return { _ = mallctl("arena.4096.purge", nil, nil, nil, 0) }
        }
        if let symbol = dlsym(process, "malloc_trim") {
            let trim = unsafeBitCast(symbol, to: MallocTrim.self)
            return { _ = trim(0) }
        }
        #endif
        return {}
    }()

    init(threshold: Int = 1_000, delay: DispatchTimeInterval = .seconds(1), isIdle: @escaping @Sendable () -> Bool,
         trim: @escaping @Sendable () -> Void = MemoryReturn.returnFreedMemory) {
        self.threshold = threshold
        self.delay = delay
        self.isIdle = isIdle
        self.trim = trim
    }

    /// A batch of `items` ended; `idle` says no other batch is running.
    func batchEnded(items: Int, idle: Bool) {
        let schedule = lock.withLock { () -> Bool in
            itemsSinceTrim += items
            guard idle, !scheduled, itemsSinceTrim >= threshold else { return false }
            scheduled = true
            return true
        }
        guard schedule else { return }
        // A short pause: a client sending batches back to back would reuse that memory at once.
        queue.asyncAfter(deadline: .now() + delay) { [self] in
            // Only if still quiet: a trim under load walks the heap while batches need it, and
            // what it gives back is faulted in again at once. Owed to the next quiet moment.
            let quiet = isIdle()
            if quiet { trim() }
            lock.withLock {
                scheduled = false
                if quiet { itemsSinceTrim = 0 }
            }
        }
    }
}
