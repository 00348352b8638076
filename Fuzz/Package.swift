// swift-tools-version:6.1
import PackageDescription

/// libFuzzer targets for Sheaf's input parsers, one executable per target. A package of its own
/// so that `swift build` of Sheaf never sees them: they only link with `-sanitize=fuzzer`, which
/// supplies `main`. Built by `Fuzz/run.sh` (or `make fuzz`) into `.build-fuzz`.
let package = Package(
    name: "sheaf-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        // The repository, through a link run.sh makes (.build-fuzz/sheaf -> ..): a stable package name
        // whatever the checkout's folder is called (a plain ".." named after the folder would clash with
        // this package, named after Fuzz/, in a checkout called fuzz).
        .package(path: "../.build-fuzz/sheaf"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // The invariants several targets check.
        .target(name: "FuzzSupport", dependencies: [.product(name: "SheafCore", package: "sheaf")]),
        // libFuzzer's driver behind each target's `main` (SwiftPM links `main` to `<module>_main`).
        .target(name: "CFuzzerDriver"),
        .executableTarget(name: "FuzzJSONParser", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
        ]),
        .executableTarget(name: "FuzzJSONBatch", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .executableTarget(name: "FuzzXMLBatch", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .executableTarget(name: "FuzzPaths", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
        ]),
        .executableTarget(name: "FuzzConfig", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
        ]),
        .executableTarget(name: "FuzzAccept", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
        ]),
        // The HTTP/2 engine's internals (`@testable`: debug builds are testable) on an EmbeddedChannel.
        .executableTarget(name: "FuzzHTTP2", dependencies: [
            "FuzzSupport", "CFuzzerDriver", .product(name: "SheafCore", package: "sheaf"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
