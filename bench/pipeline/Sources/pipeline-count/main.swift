import Foundation
import Logging
import MultiStatus
import NIOPosix
import SheafPipeline
import Upstream

// `pipeline-count json|xml|ndjson BATCHES`: runs BATCHES 1000-item batches and exits. Under
// callgrind, (instructions at N batches − at 0) / (N × 1000) is the pipeline's instructions per item.
// `pipeline-count h2 PORT BATCHES`: the same JSON batches through the HTTP/2 engine (one event
// loop, one connection) to an h2c upstream on 127.0.0.1:PORT serving /users/N: the engine's and
// NIO's user-space instructions are counted with the pipeline's.
// `pipeline-count h1 PORT BATCHES`: the same through the libcurl engine (8 keep-alive connections)
// to an HTTP/1.1 upstream; libcurl's and the curl thread's instructions are counted too.
// `pipeline-count h2tls PORT BATCHES`: through the HTTP/2 engine over TLS (swift-nio-ssl), trusting
// the CA file in SHEAF_CA_FILE.
let arguments = CommandLine.arguments
let mode = arguments.count > 1 ? arguments[1] : "json"
if mode == "h2" || mode == "h1" || mode == "h2tls" {
    let port = Int(arguments[2])!
    let batches = arguments.count > 3 ? Int(arguments[3]) ?? 1 : 1
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let tls = mode == "h2tls"
    var configuration = UpstreamConfiguration(name: "nginx", endpoint: UpstreamEndpoint(scheme: tls ? "https" : "http", host: "127.0.0.1", port: port, basePath: ""),
                                              protocol: mode == "h1" ? .http1 : tls ? .h2 : .h2c,
                                              connections: mode == "h1" ? Int(ProcessInfo.processInfo.environment["H1_CONNECTIONS"] ?? "8")! : 1)
    // h2tls: the bench's CA (bench/engine_count.py passes its file).
    configuration.caFile = ProcessInfo.processInfo.environment["SHEAF_CA_FILE"]
    let transport = try! TransportFactory.make(configuration, group: group, logger: Logger(label: "pipeline"))
    let batch = PipelineBatch(count: 1000, format: .json)
    var bytes = 0
    for _ in 0..<batches { bytes += batch.run(through: transport, on: group.next()) }
    print(bytes)
    exit(0)
}
let format: ResponseFormat = switch mode {
case "xml": .xml(mediaType: "application/xml")
case "ndjson": .ndjson
default: .json
}
let batches = arguments.count > 2 ? Int(arguments[2]) ?? 1 : 1
let batch = PipelineBatch(count: 1000, format: format)
let transport = MemoryTransport()
var bytes = 0
for _ in 0..<batches { bytes += batch.run(on: transport) }
print(bytes)
