import Config
import FanOut
import Foundation
import Logging
import BatchInput
import MultiStatus
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Tracing
import Upstream

/// A route with the transport its items travel on.
struct RouteRuntime: Sendable {
    let configuration: RouteConfiguration
    let transport: UpstreamTransport
}

/// Sheaf's front door: matches routes, checks media types and sizes from the request head,
/// decodes the batch, and hands it to a `BatchSession`. Also serves metrics and health.
public final class SheafService: HTTPResponder, @unchecked Sendable {
    private let configuration: SheafConfiguration
    private let routesByPath: [String: [RouteRuntime]]
    private let metrics: SheafMetrics
    private let logger: Logger
    /// Numbers bulk requests for the logs, across reloads.
    private static let requestCounter = NIOLockedValueBox(UInt64(0))
    private let active = NIOLockedValueBox(0)

    private let draining = NIOLockedValueBox(false)
    private let memory = MemoryReturn()

    /// Batches being fanned out or written right now, and bodies being read for a batch; shutdown,
    /// and a reload retiring this service's upstream pools, wait for this to reach zero.
    public var activeBatches: Int { active.withLockedValue { $0 } }

    /// From now on `/readyz` answers 503, so a load balancer stops sending new work.
    public func startDraining() {
        draining.withLockedValue { $0 = true }
    }

    private let accessLog: AccessLog?
    private let tracer: (any Tracer)?

    /// `accessLog`: where each bulk request's line goes (nil: nowhere). `tracer`: where batch and
    /// item spans go (nil: tracing is off, and costs nothing per item).
    public init(configuration: SheafConfiguration, transports: [String: UpstreamTransport],
                metrics: SheafMetrics, logger: Logger, accessLog: AccessLog? = nil, tracer: (any Tracer)? = nil) {
        self.configuration = configuration
        self.accessLog = accessLog
        self.tracer = tracer
        var table: [String: [RouteRuntime]] = [:]
        for route in configuration.routes {
            guard let transport = transports[route.upstream] else { continue }
            table[route.path, default: []].append(RouteRuntime(configuration: route, transport: transport))
        }
        self.routesByPath = table
        self.metrics = metrics
        self.logger = logger
    }

    public func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        let route = match(head)?.route?.configuration.name
        if let route { metrics.batchFinished(route: route, outcome: "rejected", duration: nil) }
        let response = Problem.response(.payloadTooLarge, detail: "request body is larger than this route's max_body_bytes (\(limit) bytes)")
        logRejected(entry(head, client, route: route), response)
        return response
    }

    /// The access log's view of a request, as far as its head tells.
    private func entry(_ head: HTTPRequestHead, _ client: ClientConnection, route: String?) -> AccessEntry {
        var entry = AccessEntry()
        entry.route = route
        entry.client = client.address?.ipAddress
        entry.protocolName = head.version.major == 2 ? "HTTP/2" : "HTTP/1.1"
        entry.tls = client.secure
        entry.method = head.method.rawValue
        entry.path = head.uri
        entry.traceID = TraceParent(head.headers.first(name: "traceparent"))?.traceID
        return entry
    }

    private func logRejected(_ entry: AccessEntry, _ response: SimpleResponse, bytesIn: Int = 0) {
        guard let accessLog else { return }
        var entry = entry
        entry.status = Int(response.status.code)
        entry.bytesIn = bytesIn
        entry.bytesOut = response.body.readableBytes
        entry.requestID = response.headers.first(name: "x-request-id")
        entry.outcome = "rejected"
        accessLog.record(entry)
    }

    private func match(_ head: HTTPRequestHead) -> (route: RouteRuntime?, allowed: [String])? {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        guard let candidates = routesByPath[path] else { return nil }
        let method = head.method.rawValue
        return (candidates.first(where: { $0.configuration.method == method }), candidates.map(\.configuration.method))
    }

    public func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        if path == configuration.metricsPath {
            guard head.method == .GET || head.method == .HEAD else {
                return .respond(Problem.response(.methodNotAllowed, detail: "\(path) answers GET", extraHeaders: ["allow": "GET, HEAD"]))
            }
            return .respond(SimpleResponse(status: .ok, headers: ["content-type": "text/plain; version=0.0.4; charset=utf-8"],
                                           body: metrics.render()))
        }
        if path == "/readyz" && draining.withLockedValue({ $0 }) {
            return .respond(SimpleResponse(status: .serviceUnavailable, headers: ["content-type": "application/json"],
                                           body: ByteBuffer(string: "{\"status\":\"draining\"}\n")))
        }
        if path == "/healthz" || path == "/readyz" {
            return .respond(SimpleResponse(status: .ok, headers: ["content-type": "application/json"],
                                           body: ByteBuffer(string: "{\"status\":\"ok\"}\n")))
        }
        guard let (found, allowed) = match(head) else {
            return rejected(Problem.response(.notFound, detail: "no route for \(path)"), entry(head, client, route: nil))
        }
        guard let route = found else {
            let allow = allowed.joined(separator: ", ")
            return rejected(Problem.response(.methodNotAllowed, detail: "\(path) accepts \(allow), not \(head.method.rawValue)",
                                             extraHeaders: ["allow": allow]), entry(head, client, route: nil))
        }
        let name = route.configuration.name
        var access = entry(head, client, route: name)
        // 415 and 406 are known from the head alone: answer them before reading the body.
        let contentType = head.headers.first(name: "content-type")
        let isJSON = contentType.map(MediaType.isJSON) ?? false
        let isXML = contentType.map(MediaType.isXML) ?? false
        let readable = route.configuration.fanOut == nil ? (isJSON || isXML) : isJSON
        guard readable else {
            metrics.batchFinished(route: name, outcome: "rejected", duration: nil)
            let expected = route.configuration.fanOut == nil ? "application/json or application/xml" : "application/json"
            let got = contentType.map { "\"\($0)\"" } ?? "no Content-Type"
            return rejected(Problem.response(.unsupportedMediaType, detail: "route \(name) reads \(expected), got \(got)",
                                             field: "Content-Type", extraHeaders: ["accept-post": expected]), access)
        }
        guard let format = MediaType.negotiate(accept: head.headers[canonicalForm: "accept"].map(String.init).joined(separator: ","),
                                               requestIsXML: isXML) else {
            metrics.batchFinished(route: name, outcome: "rejected", duration: nil)
            return rejected(Problem.response(.notAcceptable,
                                             detail: "a 207 can be \(MediaType.offered); Accept allows none of them",
                                             field: "Accept"), access)
        }
        let received = NIODeadline.now()
        var shared = BatchHeaders(requestID: RequestID.of(head))
        access.requestID = shared.requestID
        for name in route.configuration.forwardHeaders {
            for value in head.headers[name] { shared.inherited.append((name, value)) }
        }
        if route.configuration.forwarded { shared.imposed = ForwardingHeaders.make(head, client: client) }
        // Counted from now: a body still arriving holds this service's transports as a running
        // batch does; if it never completes, the handler is dropped and so is the ticket.
        let ticket = BatchTicket(active)
        return .collect(maxBodyBytes: route.configuration.maxBodyBytes) { [self, shared, ticket, access] head, body, writer in
            withExtendedLifetime(ticket) {}
            var access = access
            access.bytesIn = body.readableBytes
            self.runBatch(route: route, head: head, body: body, isXML: isXML, format: format, shared: shared,
                          writer: writer, received: received, access: access)
        }
    }

    private func rejected(_ response: SimpleResponse, _ entry: AccessEntry) -> HeadDecision {
        logRejected(entry, response)
        return .respond(response)
    }

    private func runBatch(route: RouteRuntime, head: HTTPRequestHead, body: ByteBuffer, isXML: Bool, format: ResponseFormat,
                          shared: BatchHeaders, writer: ResponseWriter, received: NIODeadline, access: AccessEntry) {
        let configuration = route.configuration
        let basePath = route.transport.configuration.endpoint.basePath
        let items: [BatchItem]
        do throws(BatchError) {
            if let template = configuration.fanOut {
                items = try JSONBatchDecoder.decode(body, template: template, basePath: basePath,
                                                    maxItems: configuration.maxItems, headers: shared)
            } else if isXML {
                items = try XMLBatchDecoder.decode(body, basePath: basePath, maxItems: configuration.maxItems, headers: shared)
            } else {
                items = try JSONBatchDecoder.decodeExplicit(body, basePath: basePath, maxItems: configuration.maxItems,
                                                            headers: shared)
            }
        } catch {
            metrics.batchFinished(route: configuration.name, outcome: "rejected", duration: nil)
            var problem = Problem.response(error)
            if let requestID = shared.requestID { problem.headers.add(name: "x-request-id", value: requestID) }
            logRejected(access, problem, bytesIn: body.readableBytes)
            writer.respond(problem)
            return
        }
        let id = Self.requestCounter.withLockedValue { value -> UInt64 in
            value += 1
            return value
        }
        var access = access
        let trace = tracer.map {
            BatchTrace(tracer: $0, headers: head.headers, method: head.method.rawValue, route: configuration,
                       upstream: route.transport.configuration.endpoint, itemCount: items.count,
                       elapsed: NIODeadline.now() - received)
        }
        if let trace {
            access.traceID = trace.traceID
            if let requestID = shared.requestID { trace.setRequestID(requestID) }
        }
        var logger = self.logger
        logger[metadataKey: "request"] = "\(id)"
        logger[metadataKey: "route"] = "\(configuration.name)"
        if let requestID = shared.requestID { logger[metadataKey: "request_id"] = "\(requestID)" }
        active.withLockedValue { $0 += 1 }
        let count = items.count
        BatchSession(route: route, items: items, format: format, requestID: shared.requestID, writer: writer, metrics: metrics,
                     received: received, logger: logger, access: accessLog.map { ($0, access) }, trace: trace) { [active, memory] in
            let idle = active.withLockedValue { value -> Bool in
                value -= 1
                return value == 0
            }
            memory.batchEnded(items: count, idle: idle)
        }.run()
    }
}

/// Counts a batch whose body is being read as active for as long as its handler lives.
private final class BatchTicket: Sendable {
    private let active: NIOLockedValueBox<Int>

    init(_ active: NIOLockedValueBox<Int>) {
        self.active = active
        active.withLockedValue { $0 += 1 }
    }

    deinit {
        active.withLockedValue { $0 -= 1 }
    }
}
