import Config
import OTel
import ServiceLifecycle
import Tracing

/// Builds the tracer that exports Sheaf's spans over OTLP/HTTP (protobuf) when `tracing:` is set.
public enum Telemetry {
    /// The tracer to hand to the server, and the exporter's background service (batches spans,
    /// sends them, flushes on shutdown), to run in the same service group.
    public static func makeTracer(_ configuration: TracingConfiguration) throws -> (tracer: any Tracer, service: any Service) {
        var otel = OTel.Configuration.default
        otel.serviceName = configuration.serviceName
        otel.logs.enabled = false
        otel.metrics.enabled = false
        otel.traces.enabled = true
        otel.traces.exporter = .otlp
        otel.traces.otlpExporter.protocol = .httpProtobuf
        otel.traces.otlpExporter.endpoint = configuration.otlpEndpoint
        otel.traces.sampler = .parentBasedTraceIDRatio(ratio: configuration.sampleRatio) ?? .parentBasedAlwaysOn
        otel.propagators = [.traceContext]
        let backend = try OTel.makeTracingBackend(configuration: otel)
        return (backend.factory, backend.service)
    }
}
