import Config
import FanOut
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Tracing
import Upstream

/// The spans of one batch: a server span for the bulk request, continuing the client's trace
/// from its `traceparent` (or starting one), and a client span per item, whose context the
/// item's upstream call carries in its own `traceparent`, so the upstream's traces join the
/// batch's. Items that never reach an upstream (refused, cancelled first) still get their span.
final class BatchTrace: @unchecked Sendable {
    private let tracer: any Tracer
    private let batch: any Span
    private let lock = NIOLock()
    /// Spans of items started and not yet settled (a streamed batch's size is not known ahead).
    private var items: [Int: any Span] = [:]
    private let upstream: UpstreamEndpoint

    /// `elapsed`: how long ago the request's head arrived, so the span starts there.
    init(tracer: any Tracer, headers: HTTPHeaders, method: String, route: RouteConfiguration, upstream: UpstreamEndpoint,
         elapsed: TimeAmount) {
        self.tracer = tracer
        self.upstream = upstream
        var parent = ServiceContext.topLevel
        tracer.extract(headers, into: &parent, using: HeaderExtractor())
        let nanoseconds = DefaultTracerClock.now.nanosecondsSinceEpoch
        let start = DefaultTracerClock.Timestamp(nanosecondsSinceEpoch: nanoseconds - UInt64(max(0, min(elapsed.nanoseconds, Int64(nanoseconds)))))
        batch = tracer.startAnySpan("\(method) \(route.path)", context: parent, ofKind: .server, at: start,
                                    function: #function, file: #fileID, line: #line)
        batch.attributes["http.request.method"] = method
        batch.attributes["http.route"] = route.path
        batch.attributes["sheaf.route"] = route.name
    }

    /// The trace the batch belongs to (32 hex digits), for the access log.
    var traceID: String? {
        var headers: [String: String] = [:]
        tracer.inject(batch.context, into: &headers, using: DictionaryInjector())
        return TraceParent(headers["traceparent"])?.traceID
    }

    /// The request id, once known, on the batch span.
    func setRequestID(_ id: String) {
        batch.attributes["sheaf.request_id"] = id
    }

    /// Starts item `index`'s span and puts its context into the request's headers.
    func itemStarting(_ index: Int, _ item: BatchItem, _ request: inout UpstreamRequest) {
        let span = startItemSpan(item, method: request.method)
        var headers = request.headers.filter { !Self.propagated.contains($0.name.lowercased()) }
        // The batch's shared fields are copied only when they carry trace context to replace.
        if request.batchHeaders.contains(where: { Self.propagated.contains($0.name.lowercased()) }) {
            request.batchHeaders = request.batchHeaders.filter { !Self.propagated.contains($0.name.lowercased()) }
        }
        tracer.inject(span.context, into: &headers, using: HeaderListInjector())
        request.headers = headers
        lock.withLock { items[index] = span }
    }

    /// Ends item `index`'s span with its outcome (starting it first when the item was never sent).
    func itemSettled(_ index: Int, _ item: BatchItem, _ outcome: ItemOutcome) {
        let span = lock.withLock { () -> (any Span)? in
            items.removeValue(forKey: index)
        } ?? startItemSpan(item, method: item.request?.method ?? "GET")
        span.attributes["http.response.status_code"] = outcome.status
        if outcome.attempts > 1 { span.attributes["sheaf.attempts"] = outcome.attempts }
        if let reason = outcome.reason { span.attributes["sheaf.reason"] = reason }
        if outcome.status >= 500 || outcome.reason != nil && outcome.status >= 400 {
            span.setStatus(SpanStatus(code: .error, message: outcome.reason))
        }
        span.end()
    }

    /// Ends the batch span.
    func finished(succeeded: Int, failed: Int, outcome: String) {
        batch.attributes["http.response.status_code"] = 207
        batch.attributes["sheaf.items"] = succeeded + failed
        batch.attributes["sheaf.items.succeeded"] = succeeded
        batch.attributes["sheaf.items.failed"] = failed
        batch.attributes["sheaf.outcome"] = outcome
        batch.end()
    }

    private func startItemSpan(_ item: BatchItem, method: String) -> any Span {
        let span = tracer.startAnySpan(method, context: batch.context, ofKind: .client, at: DefaultTracerClock.now,
                                       function: #function, file: #fileID, line: #line)
        span.attributes["http.request.method"] = method
        span.attributes["url.path"] = item.request?.path ?? item.href
        span.attributes["server.address"] = upstream.host
        span.attributes["server.port"] = upstream.port
        span.attributes["sheaf.item.id"] = item.id
        return span
    }

    /// Trace headers an item may have set itself: Sheaf's replace them.
    private static let propagated: Set<String> = ["traceparent", "tracestate"]
}

private struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? {
        carrier.first(name: key)
    }
}

private struct HeaderListInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [(name: String, value: String)]) {
        carrier.append((key, value))
    }
}

private struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}
