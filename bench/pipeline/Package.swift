// swift-tools-version:6.1
import PackageDescription

/// The in-process item pipeline benchmark (issue 13): decode → plan → schedule → a transport that
/// answers from memory → encode, with ordo-one/benchmark counting mallocs per item, and a plain
/// driver that valgrind's callgrind counts instructions on (this VM has no hardware counters).
/// A package of its own so that Sheaf's build and CI never resolve the benchmark's dependencies.
/// Run by `bench/pipeline.sh` (in `make bench`).
let package = Package(
    name: "sheaf-pipeline",
    platforms: [.macOS(.v14)],
    dependencies: [
        // The repository, through a link pipeline.sh makes (.build-pipeline/sheaf -> ..): a stable
        // package name whatever the checkout's folder is called.
        .package(path: "../../.build-pipeline/sheaf"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The pipeline itself, shared by both runners.
        .target(name: "SheafPipeline", dependencies: [
            .product(name: "SheafCore", package: "sheaf"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .executableTarget(name: "Pipeline", dependencies: [
            "SheafPipeline",
            .product(name: "Benchmark", package: "benchmark"),
        ], path: "Benchmarks/Pipeline", plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
        // `pipeline-count FORMAT BATCHES`: runs that many 1000-item batches and nothing else, for
        // callgrind; `pipeline-count h2 PORT BATCHES` sends them through the HTTP/2 engine to an h2c upstream.
        .executableTarget(name: "pipeline-count", dependencies: [
            "SheafPipeline",
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
