import NIOCore
import Server
import Testing

/// The per-item latency histograms as Prometheus scrapes them: the bounds README lists, in
/// seconds, and an item exactly as long as a bound counted in that bound's bucket.
@Suite struct LatencyHistogramTests {
    /// `name{labels} value` lines of the exposition, by their name and labels.
    private func samples(_ metrics: SheafMetrics) -> [String: String] {
        var found: [String: String] = [:]
        for line in String(buffer: metrics.render()).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            found[String(line[..<space])] = String(line[line.index(after: space)...])
        }
        return found
    }

    @Test func itemDurationsLandInTheBucketsTheBoundsName() {
        let metrics = SheafMetrics()
        let histogram = metrics.itemHistogram(route: "users")
        for nanoseconds: UInt64 in [1_000_000, 1_000_001, 2_500_000_000, 10_000_000_001] {
            histogram.record(SheafMetrics.seconds(nanoseconds: nanoseconds))
        }
        let found = samples(metrics)
        let name = "sheaf_item_duration_seconds"
        let expected: [(String, String)] = [
            ("0.001", "1"), ("0.002", "2"), ("0.005", "2"), ("0.01", "2"), ("0.025", "2"), ("0.05", "2"),
            ("0.1", "2"), ("0.25", "2"), ("0.5", "2"), ("1.0", "2"), ("2.5", "3"), ("5.0", "3"),
            ("10.0", "3"), ("+Inf", "4"),
        ]
        for (bound, count) in expected {
            #expect(found["\(name)_bucket{route=\"users\",le=\"\(bound)\"}"] == count, "le=\(bound)")
        }
        #expect(found["\(name)_count{route=\"users\"}"] == "4")
        let sum = Double(found["\(name)_sum{route=\"users\"}"] ?? "") ?? 0
        #expect(abs(sum - 12.502000002) < 1e-9)
        // Exactly the bounds: no bucket beyond the ones listed.
        #expect(found.keys.filter { $0.hasPrefix("\(name)_bucket") }.count == expected.count)
    }
}
