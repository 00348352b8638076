import Testing
@testable import Server

/// The per-batch count of items by status that feeds `sheaf_items_total` and the access log.
@Suite struct StatusTallyTests {
    @Test func countsEachStatusAsOftenAsItWasAdded() {
        var tally = StatusTally()
        #expect(tally.counts.isEmpty)
        for status in [200, 404, 200, 503, 200, 404, 424] { tally.add(status) }
        #expect(tally.counts == [200: 3, 404: 2, 503: 1, 424: 1])
    }
}
