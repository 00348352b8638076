import NIOCore
@testable import Server
import Testing

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

@Test func aBodyBelowTheRateIsCutOnlyOnceAWindowHasPassed() {
    var rate = BodyRate(started: t0)
    // Within the first window nothing is judged, however little came.
    #expect(rate.received(1, now: t0 + .milliseconds(500), grace: .seconds(1), minimum: 256) == nil)
    let cut = rate.received(1, now: t0 + .milliseconds(1200), grace: .seconds(1), minimum: 256)
    #expect(cut?.contains("slower than min_body_rate (256 bytes/s)") == true)
}

@Test func aBurstFirstDoesNotBuyATrickleAfterIt() {
    var rate = BodyRate(started: t0)
    #expect(rate.received(1 << 20, now: t0 + .seconds(1), grace: .seconds(1), minimum: 256) == nil)
    #expect(rate.received(10, now: t0 + .milliseconds(1500), grace: .seconds(1), minimum: 256) == nil)
    #expect(rate.received(10, now: t0 + .milliseconds(2100), grace: .seconds(1), minimum: 256) != nil)
}

@Test func timeReadingWasHeldBackDoesNotCount() {
    var rate = BodyRate(started: t0)
    #expect(rate.received(300, now: t0 + .milliseconds(900), grace: .seconds(1), minimum: 256) == nil)
    rate.paused(at: t0 + .milliseconds(900))
    rate.resumed(at: t0 + .seconds(30))
    // 300 bytes in 1.1 s of reading: fast enough, though 30 s went by.
    #expect(rate.received(30, now: t0 + .milliseconds(30_200), grace: .seconds(1), minimum: 256) == nil)
}

@Test func zeroMeansNoMinimum() {
    var rate = BodyRate(started: t0)
    #expect(rate.received(1, now: t0 + .seconds(100), grace: .seconds(1), minimum: 0) == nil)
}
