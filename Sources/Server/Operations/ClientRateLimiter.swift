import Config
import NIOConcurrencyHelpers

/// Token buckets per client address, as a value: `take` decides, nothing else happens. At most
/// `capacity` addresses are tracked; when the table is full, buckets that have refilled (their
/// clients idle) are dropped, and if none has, new addresses share one overflow bucket, so a
/// client spraying addresses cannot grow memory, only share its own limit.
struct ClientRateTable {
    let rate: Double
    let burst: Double
    let capacity: Int
    private var buckets: [String: Bucket] = [:]
    private var overflow: Bucket
    /// When a full table was last swept: at most once a second, so a spray of new addresses
    /// costs one pass over the table per second, not one per request.
    private var sweptAt: UInt64?

    private struct Bucket {
        var tokens: Double
        var at: UInt64

        /// Refilled up to `now`.
        func refilled(_ now: UInt64, rate: Double, burst: Double) -> Bucket {
            // Clocks read on two event loops may reach the lock out of order: never negative.
            guard now > at else { return self }
            let elapsed = Double(now - at) / 1e9
            return Bucket(tokens: min(burst, tokens + elapsed * rate), at: now)
        }
    }

    enum Decision: Equatable {
        case allowed
        /// Whole seconds until a token is back (for `Retry-After`).
        case refused(retryAfter: Int)
    }

    init(_ limit: RateLimit, capacity: Int = 65_536) {
        rate = limit.requestsPerSecond
        burst = Double(limit.burst)
        self.capacity = capacity
        overflow = Bucket(tokens: burst, at: 0)
    }

    var tracked: Int { buckets.count }

    /// One request from `client` at `now` (uptime nanoseconds).
    mutating func take(_ client: String, now: UInt64) -> Decision {
        if buckets[client] == nil && buckets.count >= capacity && (sweptAt.map { now > $0 && now - $0 >= 1_000_000_000 } ?? true) {
            sweptAt = now
            buckets = buckets.filter { $0.value.refilled(now, rate: rate, burst: burst).tokens < burst }
        }
        let known = buckets[client] != nil || buckets.count < capacity
        var bucket = (known ? buckets[client] : overflow) ?? Bucket(tokens: burst, at: now)
        bucket = bucket.refilled(now, rate: rate, burst: burst)
        let decision: Decision
        if bucket.tokens >= 1 {
            bucket.tokens -= 1
            decision = .allowed
        } else {
            decision = .refused(retryAfter: max(1, Int(min(86_400, ((1 - bucket.tokens) / rate).rounded(.up)))))
        }
        if known { buckets[client] = bucket } else { overflow = bucket }
        return decision
    }
}

/// A route's `rate_limit`, shared by the event loops.
final class ClientRateLimiter: Sendable {
    private let table: NIOLockedValueBox<ClientRateTable>

    init(_ limit: RateLimit) {
        table = NIOLockedValueBox(ClientRateTable(limit))
    }

    func take(_ client: String, now: UInt64) -> ClientRateTable.Decision {
        table.withLockedValue { $0.take(client, now: now) }
    }
}
