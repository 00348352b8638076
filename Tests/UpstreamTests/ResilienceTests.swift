import Foundation
import NIOCore
import Testing
@testable import Upstream

/// Retry decisions, the retry budget and the circuit breaker as values: no I/O, no clock.
struct RetryPolicyTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    var policy: RetryPolicy {
        var c = RetryConfiguration()
        c.attempts = 3
        return RetryPolicy(configuration: c)
    }

    func answer(_ status: Int, _ headers: [(String, String)] = []) -> UpstreamResult {
        .success(UpstreamResponse(status: status, headers: HeaderFields(headers.map { (name: $0.0, value: $0.1) }), body: ByteBuffer()))
    }

    func decide(_ outcome: UpstreamResult, _ method: String = "GET", headers: [(String, String)] = [], attempt: Int = 1,
                deadline: TimeAmount = .seconds(5)) -> RetryPolicy.Decision {
        let request = UpstreamRequest(method: method, path: "/x", headers: headers.map { (name: $0.0, value: $0.1) })
        return policy.decide(outcome, request: request, attempt: attempt, now: t0, deadline: t0 + deadline, random: { $0.upperBound })
    }

    /// An item goes at most max(4, attempts) times: the engines' re-sends count.
    @Test func sendsOfEarlierAttemptsBoundTheRetries() {
        let request = UpstreamRequest(method: "GET", path: "/x")
        let reset = UpstreamResult.failure(UpstreamError(.unreachable, "closed", attempts: 2, cause: .reset))
        func decide(sent: Int, attempts: Int) -> RetryPolicy.Decision {
            var c = RetryConfiguration()
            c.attempts = attempts
            return RetryPolicy(configuration: c).decide(reset, request: request, attempt: 1, sent: sent, now: t0,
                                                        deadline: t0 + .seconds(5), random: { $0.upperBound })
        }
        #expect(decide(sent: 3, attempts: 3) != .finish)
        #expect(decide(sent: 4, attempts: 3) == .finish)
        #expect(decide(sent: 4, attempts: 10) != .finish)
        #expect(decide(sent: 10, attempts: 10) == .finish)
        var later = request
        later.priorSends = 3
        #expect(request.sendBudget == 4 && later.sendBudget == 1)
        later.priorSends = 9
        #expect(later.sendBudget == 1)
    }

    @Test func a503WithRetryAfterZeroIsRetriedAtOnceForAGet() {
        #expect(decide(answer(503, [("retry-after", "0")])) == .retry(after: .zero, reason: "503"))
        #expect(decide(answer(200)) == .finish)
        #expect(decide(answer(404)) == .finish)
    }

    @Test func aPostIsRetriedOnlyWithAnIdempotencyKeyOrWhenItNeverArrived() {
        #expect(decide(answer(503), "POST") == .finish)
        #expect(decide(.failure(UpstreamError(.protocolError, "reset", cause: .reset)), "POST") == .finish)
        #expect(decide(answer(503), "POST", headers: [("Idempotency-Key", "k1")]) == .retry(after: .milliseconds(50), reason: "503"))
        #expect(decide(.failure(UpstreamError(.unreachable, "refused", attempts: 0, cause: .connectFailure)), "POST")
                == .retry(after: .milliseconds(50), reason: "connect-failure"))
        #expect(decide(.failure(UpstreamError(.protocolError, "refused", cause: .refusedStream)), "PATCH")
                == .retry(after: .milliseconds(50), reason: "refused-stream"))
    }

    @Test func aRetryAfterLongerThanMaxBackoffKeepsTheAnswer() {
        #expect(decide(answer(429, [("retry-after", "3600")])) == .finish)
        #expect(decide(answer(429, [("retry-after", "1")])) == .retry(after: .seconds(1), reason: "429"))
        let soon = Date().addingTimeInterval(3600)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        #expect(decide(answer(503, [("retry-after", formatter.string(from: soon))])) == .finish)
        #expect(RetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now: Date()) == .zero)
        #expect(RetryPolicy.parseRetryAfter("soon", now: Date()) == nil)
    }

    @Test func attemptsTheDeadlineAndTheConditionsBoundRetries() {
        #expect(decide(answer(503), attempt: 3) == .finish)
        #expect(decide(answer(503), deadline: .milliseconds(10)) == .finish)
        #expect(decide(.failure(UpstreamError(.timeout, "late"))) == .finish)
        #expect(decide(.failure(UpstreamError(.unreachable, "TLS", cause: .other))) == .finish)
    }

    @Test func backoffDoublesWithFullJitterUpToTheCap() {
        #expect(policy.backoff(attempt: 1, random: { $0.upperBound }) == .milliseconds(50))
        #expect(policy.backoff(attempt: 2, random: { $0.upperBound }) == .milliseconds(100))
        #expect(policy.backoff(attempt: 10, random: { $0.upperBound }) == .seconds(1))
        #expect(policy.backoff(attempt: 64, random: { $0.upperBound }) == .seconds(1))
        #expect(policy.backoff(attempt: 2, random: { $0.lowerBound }) == .zero)
    }
}

struct RetryBudgetTests {
    @Test func retriesAreAShareOfFirstAttemptsPlusAMinimumOverTheWindow() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        var budget = RetryBudget(ratio: 0.2, minRetries: 3)
        for _ in 0..<100 { budget.firstAttempt(now: t0) }
        var granted = 0
        for _ in 0..<200 where budget.acquireRetry(now: t0) { granted += 1 }
        #expect(granted == 23)
        // Ten seconds later the window has forgotten them all: only the minimum is left.
        let later = t0 + .seconds(11)
        granted = 0
        for _ in 0..<10 where budget.acquireRetry(now: later) { granted += 1 }
        #expect(granted == 3)
    }
}

struct CircuitBreakerTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func breaker() -> CircuitBreaker {
        var c = CircuitBreakerConfiguration()
        c.minRequests = 4
        c.failureRatio = 0.5
        c.openFor = .seconds(5)
        return CircuitBreaker(configuration: c)
    }

    @Test func anOpenCircuitPastOpenForReportsHalfOpenWithoutTraffic() {
        var b = breaker()
        for _ in 0..<4 { _ = b.record(failed: true, probe: false, now: t0) }
        #expect(b.state(at: t0 + .seconds(1)) == .open)
        // Nothing has been sent since: the next item will be a probe, and the gauge says so.
        #expect(b.state(at: t0 + .seconds(5)) == .halfOpen)
        #expect(b.state == .open)
    }

    @Test func failuresOpenItThenProbesCloseIt() {
        var b = breaker()
        for _ in 0..<3 { #expect(b.record(failed: true, probe: false, now: t0) == nil) }
        #expect(b.record(failed: false, probe: false, now: t0) == .init(from: .closed, to: .open))
        #expect(b.admit(now: t0 + .seconds(1)).0 == .rejected)
        let (first, transition) = b.admit(now: t0 + .seconds(6))
        #expect(first == .probe && transition == .init(from: .open, to: .halfOpen))
        #expect(b.admit(now: t0 + .seconds(6)).0 == .probe)
        #expect(b.admit(now: t0 + .seconds(6)).0 == .probe)
        #expect(b.admit(now: t0 + .seconds(6)).0 == .rejected)
        #expect(b.record(failed: false, probe: true, now: t0 + .seconds(6)) == nil)
        #expect(b.record(failed: false, probe: true, now: t0 + .seconds(6)) == nil)
        #expect(b.record(failed: false, probe: true, now: t0 + .seconds(6)) == .init(from: .halfOpen, to: .closed))
        #expect(b.admit(now: t0 + .seconds(6)).0 == .allowed)
    }

    @Test func aFailedProbeOpensItAgain() {
        var b = breaker()
        for _ in 0..<4 { _ = b.record(failed: true, probe: false, now: t0) }
        #expect(b.state == .open)
        _ = b.admit(now: t0 + .seconds(6))
        #expect(b.record(failed: true, probe: true, now: t0 + .seconds(6)) == .init(from: .halfOpen, to: .open))
        #expect(b.admit(now: t0 + .seconds(7)).0 == .rejected)
        #expect(b.admit(now: t0 + .seconds(12)).0 == .probe)
    }

    @Test func fewerThanMinRequestsNeverOpenIt() {
        var b = breaker()
        for _ in 0..<3 { _ = b.record(failed: true, probe: false, now: t0) }
        #expect(b.state == .closed)
        // Old failures leave the window.
        #expect(b.record(failed: true, probe: false, now: t0 + .seconds(11)) == nil)
        #expect(b.state == .closed)
    }
}
