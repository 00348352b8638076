import Foundation
import NIOCore

/// Whether an item's outcome is tried again, and when: a pure function of the outcome, the
/// request, the attempt number, the time and the item's deadline (the random source is passed
/// in, so tests see the jitter).
public struct RetryPolicy {
    let configuration: RetryConfiguration

    enum Decision: Equatable {
        case finish
        /// Try again after `delay`; `reason` labels the retry metric.
        case retry(after: TimeAmount, reason: String)
    }

    /// RFC 9110 §9.2.2 idempotent methods, or an `Idempotency-Key` the upstream deduplicates by.
    static func mayRepeat(_ request: UpstreamRequest) -> Bool {
        switch request.method {
        case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE": return true
        default: return request.containsHeader { name, _ in name.lowercased() == "idempotency-key" }
        }
    }

    /// `attempt`: the number of the attempt that just ended (1 for the first); `sent`: the sends
    /// of all attempts so far, the engines' re-sends among them. An item goes at most
    /// max(`UpstreamRequest.maxSends`, `attempts`) times: with the engines' re-sends bounded by
    /// the same count (`UpstreamRequest.sendBudget`), each try re-sent as if it were the first.
    func decide(_ outcome: UpstreamResult, request: UpstreamRequest, attempt: Int, sent: Int = 0, now: NIODeadline,
                deadline: NIODeadline, random: (ClosedRange<Int64>) -> Int64) -> Decision {
        guard attempt < configuration.attempts, sent < max(UpstreamRequest.maxSends, configuration.attempts) else { return .finish }
        let condition: RetryCondition
        var retryAfter: TimeAmount?
        switch outcome {
        case .success(let response):
            condition = .status(response.status)
            if response.status == 429 || response.status == 503, let header = response.header("retry-after") {
                guard let wait = Self.parseRetryAfter(header, now: Date()) else { return .finish }
                // Longer than we would wait: the upstream's answer stands.
                guard wait <= configuration.maxBackoff else { return .finish }
                retryAfter = wait
            }
        case .failure(let error):
            switch error.cause {
            case .connectFailure: condition = .connectFailure
            case .reset: condition = .reset
            case .refusedStream: condition = .refusedStream
            case .other: return .finish
            }
        }
        guard configuration.on.contains(condition) else { return .finish }
        // Only what certainly never reached the upstream goes again for a method that may not repeat.
        let neverArrived = condition == .connectFailure || condition == .refusedStream
        guard neverArrived || Self.mayRepeat(request) else { return .finish }
        let delay = retryAfter ?? backoff(attempt: attempt, random: random)
        guard now + delay < deadline else { return .finish }
        return .retry(after: delay, reason: condition.description)
    }

    /// Full jitter (uniform in 0...min(max_backoff, backoff × 2^(attempt−1))).
    func backoff(attempt: Int, random: (ClosedRange<Int64>) -> Int64) -> TimeAmount {
        let base = configuration.backoff.nanoseconds
        let cap = configuration.maxBackoff.nanoseconds
        let exponent = min(attempt - 1, 30)
        let ceiling = base > cap >> Int64(exponent) ? cap : min(cap, base << Int64(exponent))
        return .nanoseconds(random(0...max(0, ceiling)))
    }

    /// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
    public static func parseRetryAfter(_ value: String, now: Date) -> TimeAmount? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int64(text), seconds >= 0 {
            return .seconds(min(seconds, 1 << 32))
        }
        guard let date = httpDate(text) else { return nil }
        return .nanoseconds(Int64(max(0, date.timeIntervalSince(now)) * 1e9))
    }

    /// IMF-fixdate, the only form senders may generate (RFC 9110 §5.6.7).
    private static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return formatter.date(from: text)
    }
}
