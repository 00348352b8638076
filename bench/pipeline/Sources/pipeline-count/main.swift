import MultiStatus
import SheafPipeline

// `pipeline-count json|xml|ndjson BATCHES`: runs BATCHES 1000-item batches and exits. Under
// callgrind, (instructions at N batches − at 0) / (N × 1000) is the pipeline's instructions per item.
let arguments = CommandLine.arguments
let format: ResponseFormat = switch arguments.count > 1 ? arguments[1] : "json" {
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
