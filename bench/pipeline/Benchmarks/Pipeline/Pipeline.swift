import Benchmark
import MultiStatus
import SheafPipeline

/// Per-item cost of Sheaf's pipeline without the network: each iteration is one batch of
/// `scalingFactor` (1000) items, so the scaled figures (marked *) are per item.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.mallocCountTotal, .wallClock],
                                           scalingFactor: .kilo, maxDuration: .seconds(1), maxIterations: 1000,
                                           // Mallocs are exact, time moves by up to half between runs on this VM:
                                           // the stored p90s (Thresholds/) gate mallocs tightly, time only against a doubling
                                           // (instructions, counted by callgrind in bench/pipeline.sh, gate CPU).
                                           // No throughput: it is wall clock inverted, and its stored p90 is
                                           // the fast tail, so ordinary runs failed against it.
                                           thresholds: [.mallocCountTotal: .init(relative: [.p90: 2.0]),
                                                        .wallClock: .init(relative: [.p90: 100.0])])
    for (name, format) in [("json", ResponseFormat.json), ("xml", .xml(mediaType: "application/xml")), ("ndjson", .ndjson)] {
        // No spaces in the name: 1.38.1 writes a thresholds file with "_" for them but looks it up by the name as is.
        Benchmark("pipeline_\(name)") { benchmark in
            let batch = PipelineBatch(count: benchmark.scaledIterations.count, format: format)
            let transport = MemoryTransport()
            benchmark.startMeasurement()
            blackHole(batch.run(on: transport))
        }
    }
}
