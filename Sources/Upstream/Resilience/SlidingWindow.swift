import NIOCore

/// Counts over the last `window`, in ten buckets: old buckets are dropped as time moves on, so a
/// count forgets what happened more than one window ago (to a tenth of the window).
struct SlidingWindow {
    private let bucketNanos: Int64
    private var counts: [Int]
    private var newestBucket: Int64 = 0

    init(window: TimeAmount, buckets: Int = 10) {
        bucketNanos = max(1, window.nanoseconds / Int64(buckets))
        counts = Array(repeating: 0, count: buckets)
    }

    private mutating func advance(to now: NIODeadline) -> Int {
        let bucket = Int64(now.uptimeNanoseconds / UInt64(bucketNanos))
        if bucket > newestBucket {
            let stale = min(Int64(counts.count), bucket - newestBucket)
            for step in 1...stale {
                counts[Int((newestBucket + step) % Int64(counts.count))] = 0
            }
            newestBucket = bucket
        }
        return Int(newestBucket % Int64(counts.count))
    }

    mutating func add(_ n: Int = 1, now: NIODeadline) {
        counts[advance(to: now)] += n
    }

    mutating func total(now: NIODeadline) -> Int {
        _ = advance(to: now)
        return counts.reduce(0, +)
    }

    mutating func reset() {
        for i in counts.indices { counts[i] = 0 }
    }
}

/// Envoy-style retry budget: over a sliding 10 s window, retries may be at most `ratio` of the
/// first attempts plus `minRetries`. During a total outage this caps the extra load Sheaf puts
/// on the upstream at `ratio`, whatever `attempts` says.
struct RetryBudget {
    let ratio: Double
    let minRetries: Int
    private var firsts: SlidingWindow
    private var retries: SlidingWindow

    init(ratio: Double, minRetries: Int, window: TimeAmount = .seconds(10)) {
        self.ratio = ratio
        self.minRetries = minRetries
        firsts = SlidingWindow(window: window)
        retries = SlidingWindow(window: window)
    }

    mutating func firstAttempt(now: NIODeadline) {
        firsts.add(now: now)
    }

    /// Takes one retry from the budget; false when it is spent.
    mutating func acquireRetry(now: NIODeadline) -> Bool {
        let allowed = Int(Double(firsts.total(now: now)) * ratio) + minRetries
        guard retries.total(now: now) < allowed else { return false }
        retries.add(now: now)
        return true
    }
}
