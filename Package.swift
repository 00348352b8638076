// swift-tools-version:6.1
import PackageDescription

/// Release builds skip Swift's dynamic exclusivity checks on the hot path (about 5% of CPU per
/// item in the profile); debug builds, which the tests use, keep them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "sheaf",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sheaf", targets: ["sheaf"]),
        // The libraries without the server, for the packages that depend on this one by path: the
        // libFuzzer targets (Fuzz/) and the in-process pipeline benchmark (bench/pipeline/).
        .library(name: "SheafCore", targets: ["TextBytes", "Codecs", "BatchInput", "MultiStatus", "Config", "Upstream", "FanOut"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        // OTLP over HTTP only: the gRPC exporter would double the build for no gain here.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // C glue: typed wrappers for libcurl's variadic setopt/getinfo family.
        .target(name: "CCurlShim", linkerSettings: [.linkedLibrary("curl")]),
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2",
                       providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(name: "CLibXML2", pkgConfig: "libxml-2.0",
                       providers: [.apt(["libxml2-dev"])]),

        .target(name: "Upstream", dependencies: [
            "CCurlShim", "CNGHTTP2", "TextBytes",
            .product(name: "Atomics", package: "swift-atomics"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: hotPath),
        .target(name: "FanOut", dependencies: [
            "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: hotPath),
        // A String's UTF-8 bytes read in place, without copying the string: the one helper both
        // the engines and the codecs need, in a module of its own so that neither depends on the other.
        .target(name: "TextBytes", swiftSettings: hotPath),
        // Small text codecs both sides share: JSON reader and writer, JSON Pointer, base64, libxml2 set-up.
        .target(name: "Codecs", dependencies: [
            "CLibXML2", "TextBytes",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: hotPath),
        // What turns a bulk request body into items: JSON and XML batch decoders, route
        // templates, item paths and the rules every item follows.
        .target(name: "BatchInput", dependencies: [
            "CLibXML2", "Codecs", "FanOut", "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: hotPath),
        // The 207 writers (RFC 4918 XML, JSON) and the negotiation of which one a client gets.
        .target(name: "MultiStatus", dependencies: [
            "Codecs", "FanOut", "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: hotPath),
        .target(name: "Config", dependencies: [
            "Upstream", "MultiStatus", "BatchInput", "Codecs", "FanOut",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Yams", package: "Yams"),
        ]),
        .target(name: "Server", dependencies: [
            "BatchInput", "Codecs", "Config", "FanOut", "MultiStatus", "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: hotPath),
        // The OTLP exporter behind `tracing:`; only the command line links it into Sheaf.
        .target(name: "Telemetry", dependencies: [
            "Config",
            .product(name: "OTel", package: "swift-otel"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The demo single-item API: only the executable links it, never the production server.
        .target(name: "DemoUpstream", dependencies: [
            "Server", "Codecs",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "sheaf", dependencies: [
            "Server", "Config", "DemoUpstream", "Telemetry",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], linkerSettings: [.linkedLibrary("jemalloc")]),

        .testTarget(name: "ServerTests", dependencies: [
            "Server", "Config", "Upstream",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
        ]),
        // Both engines against scripted upstreams (raw HTTP/2 frames, raw HTTP/1.1) in process.
        .testTarget(name: "UpstreamTests", dependencies: [
            "Upstream", "FanOut", "CNGHTTP2",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "ConfigTests", dependencies: ["Config", "BatchInput", "Codecs", "FanOut", "MultiStatus", "Upstream"]),
        // libxml2 directly, to check that every XML 207 the encoder writes is well-formed.
        .testTarget(name: "MultiStatusTests", dependencies: [
            "MultiStatus", "Codecs", "FanOut", "Upstream", "CLibXML2",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "BatchInputTests", dependencies: [
            "BatchInput", "Codecs", "FanOut", "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "FanOutTests", dependencies: [
            "FanOut", "Upstream",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v5]
)
