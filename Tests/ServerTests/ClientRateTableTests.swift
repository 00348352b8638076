import Config
@testable import Server
import Testing

private let second: UInt64 = 1_000_000_000

@Test func aClientGetsItsBurstThenOneRequestPerRefill() {
    var table = ClientRateTable(RateLimit(requestsPerSecond: 2, burst: 3))
    let t0 = 10 * second
    #expect((0..<3).map { _ in table.take("a", now: t0) } == [.allowed, .allowed, .allowed])
    #expect(table.take("a", now: t0) == .refused(retryAfter: 1))
    // Another address has its own bucket.
    #expect(table.take("b", now: t0) == .allowed)
    // Half a second refills one token at 2/s.
    #expect(table.take("a", now: t0 + second / 2) == .allowed)
    #expect(table.take("a", now: t0 + second / 2) == .refused(retryAfter: 1))
    // Never more than the burst, however long the client was idle.
    let later = t0 + 100 * second
    #expect((0..<4).map { _ in table.take("a", now: later) } == [.allowed, .allowed, .allowed, .refused(retryAfter: 1)])
}

@Test func aSlowRateSaysHowLongToWait() {
    var table = ClientRateTable(RateLimit(requestsPerSecond: 0.1, burst: 1))
    #expect(table.take("a", now: second) == .allowed)
    #expect(table.take("a", now: second) == .refused(retryAfter: 10))
    #expect(table.take("a", now: 6 * second) == .refused(retryAfter: 5))
}

@Test func sprayedAddressesShareOneBucketOnceTheTableIsFull() {
    var table = ClientRateTable(RateLimit(requestsPerSecond: 1, burst: 1), capacity: 4)
    for n in 0..<4 { #expect(table.take("10.0.0.\(n)", now: second) == .allowed) }
    #expect(table.tracked == 4)
    // The table is full of clients that have used their token: new addresses share one bucket.
    #expect(table.take("10.0.1.1", now: second) == .allowed)
    #expect(table.take("10.0.1.2", now: second) == .refused(retryAfter: 1))
    #expect(table.tracked == 4)
    // Once the tracked clients' buckets have refilled, they make room.
    #expect(table.take("10.0.1.3", now: 5 * second) == .allowed)
    #expect(table.tracked == 1)
}

@Test func aClockReadOutOfOrderRefillsNothing() {
    // Two event loops read the clock, then take the lock in the other order.
    var table = ClientRateTable(RateLimit(requestsPerSecond: 1, burst: 1))
    #expect(table.take("a", now: 10 * second) == .allowed)
    #expect(table.take("a", now: 10 * second - 1) == .refused(retryAfter: 1))
}
