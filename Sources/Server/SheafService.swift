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

/// A route with the transport its items travel on, and who may use it.
struct RouteRuntime: Sendable {
    let configuration: RouteConfiguration
    let transport: UpstreamTransport
    let guardian: RouteGuard?
    let limiter: ClientRateLimiter?
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
    /// Batches being fanned out or written, each once (`active` also counts bodies being read
    /// and heads being decided, so it says when to stop waiting, not how many batches run).
    private let sessions = NIOLockedValueBox(0)

    private let draining = NIOLockedValueBox(false)
    private let memory: MemoryReturn

    /// Batches being fanned out or written right now, and bodies being read for a batch; shutdown,
    /// and a reload retiring this service's upstream pools, wait for this to reach zero.
    public var activeBatches: Int { active.withLockedValue { $0 } }

    /// Batches being fanned out or written right now, each counted once: what the logs report.
    public var runningBatches: Int { sessions.withLockedValue { $0 } }

    /// A request head is being decided on this service: counted as active until `leave`, so a
    /// reload retiring this service cannot close its pools between the head's decision and the
    /// batch's own ticket.
    func enter() {
        active.withLockedValue { $0 += 1 }
    }

    func leave() {
        active.withLockedValue { $0 -= 1 }
    }

    /// From now on `/readyz` answers 503, so a load balancer stops sending new work.
    public func startDraining() {
        draining.withLockedValue { $0 = true }
    }

    private let accessLog: AccessLog?
    private let tracer: (any Tracer)?
    private let admission: BatchAdmission
    private let itemBudget: ItemBudget?

    /// `accessLog`: where each bulk request's line goes (nil: nowhere). `tracer`: where batch and
    /// item spans go (nil: tracing is off, and costs nothing per item).
    /// Throws when a route's `auth.tokens_file` cannot be read.
    public init(configuration: SheafConfiguration, transports: [String: UpstreamTransport],
                metrics: SheafMetrics, logger: Logger, accessLog: AccessLog? = nil, tracer: (any Tracer)? = nil,
                admission: BatchAdmission = BatchAdmission(), itemBudget: ItemBudget? = nil) throws {
        self.configuration = configuration
        memory = MemoryReturn(isIdle: { [active] in active.withLockedValue { $0 == 0 } })
        self.admission = admission
        self.itemBudget = itemBudget
        self.accessLog = accessLog
        self.tracer = tracer
        var table: [String: [RouteRuntime]] = [:]
        for route in configuration.routes {
            guard let transport = transports[route.upstream] else { continue }
            let guardian = try route.auth.map { auth -> RouteGuard in
                do { return try RouteGuard(auth) } catch {
                    throw ListenError(description: "route \(route.name): cannot read auth.tokens_file \(auth.tokensFile): \(error)")
                }
            }
            table[route.path, default: []].append(RouteRuntime(configuration: route, transport: transport, guardian: guardian,
                                                               limiter: route.rateLimit.map(ClientRateLimiter.init)))
        }
        self.routesByPath = table
        self.metrics = metrics
        self.logger = logger
    }

    public func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        metrics.limitRefused("max_body_bytes")
        let route = match(head)?.route?.configuration.name
        if let route { metrics.batchFinished(route: route, outcome: "rejected", duration: nil) }
        let response = Problem.response(.payloadTooLarge, detail: "request body is larger than this route's max_body_bytes (\(limit) bytes)", field: "body")
        logRejected(entry(head, client, route: route), response)
        return response
    }

    public func refused(_ head: HTTPRequestHead, _ response: SimpleResponse, limit: String, from client: ClientConnection) {
        metrics.limitRefused(limit)
        let route = match(head)?.route?.configuration.name
        if let route { metrics.batchFinished(route: route, outcome: "rejected", duration: nil) }
        logRejected(entry(head, client, route: route), response)
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
        // A refused request is found by it too, in its answer and its log line.
        entry.requestID = RequestID.of(head, hopOnly: HTTPSyntax.connectionOptions(head.headers))
        return entry
    }

    private func logRejected(_ entry: AccessEntry, _ response: SimpleResponse, bytesIn: Int = 0) {
        guard let accessLog else { return }
        var entry = entry
        entry.status = Int(response.status.code)
        entry.bytesIn = bytesIn
        entry.bytesOut = response.body.readableBytes
        entry.requestID = response.headers.first(name: "x-request-id") ?? entry.requestID
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
        if head.version == .http1_1 {
            // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request, else 400. Two can disagree
            // (the Forwarded host, a filter in front), none leaves the authority unknown.
            let hosts = head.headers["host"].count
            if hosts != 1 {
                return rejected(Problem.response(.badRequest, detail: hosts == 0 ? "an HTTP/1.1 request must have a Host header field"
                                                    : "an HTTP/1.1 request must have one Host header field, this one has \(hosts)",
                                                 field: "host"), entry(head, client, route: nil))
            }
        }
        // RFC 9112 §6.1: chunked is the only transfer coding Sheaf reads; another (gzip before
        // chunked) was ignored, and its bytes read as the batch.
        let codings = HTTPSyntax.listElements(head.headers, named: "transfer-encoding")
        if !codings.isEmpty && codings != ["chunked"] {
            let other = codings.first { $0 != "chunked" } ?? codings.joined(separator: ", ")
            return rejected(Problem.response(.notImplemented, detail: "transfer coding \"\(other)\" is not supported: send the body chunked or with a Content-Length",
                                             field: "transfer-encoding"), entry(head, client, route: nil))
        }
        // Sheaf's own endpoints answer GET and HEAD only (a POST to /healthz is no health check).
        if path == configuration.metricsPath || path == "/healthz" || path == "/readyz", head.method != .GET && head.method != .HEAD {
            return .respond(Problem.response(.methodNotAllowed, detail: "\(path) answers GET", extraHeaders: ["allow": "GET, HEAD"]))
        }
        if path == configuration.metricsPath {
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
        // Before the token check too, as nginx's limit_req: guessing tokens costs the same.
        if let limiter = route.limiter, let limit = route.configuration.rateLimit {
            let address = client.address?.ipAddress ?? "unknown"
            if case .refused(let wait) = limiter.take(address, now: NIODeadline.now().uptimeNanoseconds) {
                metrics.limitRefused("routes[].rate_limit")
                metrics.batchFinished(route: name, outcome: "rejected", duration: nil)
                let rate = limit.requestsPerSecond == limit.requestsPerSecond.rounded() ? String(Int(limit.requestsPerSecond)) : String(limit.requestsPerSecond)
                return rejected(Problem.response(.tooManyRequests,
                                                 detail: "\(address) sent more bulk requests to route \(name) than its rate_limit allows (\(rate) per second, burst \(limit.burst)); try again in \(wait)s",
                                                 field: "rate_limit", extraHeaders: ["retry-after": String(wait)]), access)
            }
        }
        // Then the token: a caller without the right one learns nothing more about the route.
        if let guardian = route.guardian, let refusal = guardian.check(head.headers) {
            metrics.authRefused(route: name, reason: refusal.rawValue)
            metrics.batchFinished(route: name, outcome: "rejected", duration: nil)
            let detail = refusal == .missing ? "route \(name) needs a token" : "the token is not one route \(name) accepts"
            return rejected(Problem.response(.unauthorized, detail: detail, field: guardian.auth.apiKeyHeader ?? "Authorization",
                                             extraHeaders: ["www-authenticate": guardian.challenge(refusal)]), access)
        }
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
        // RFC 9110 §7.6.1: a field the request's Connection header names is for this hop only.
        let hopOnly = HTTPSyntax.connectionOptions(head.headers)
        // The id `entry` took (the client's, or a new one): one per request.
        var shared = BatchHeaders(requestID: access.requestID ?? RequestID.of(head, hopOnly: hopOnly))
        access.requestID = shared.requestID
        for name in route.configuration.forwardHeaders where !hopOnly.contains(name.lowercased()) {
            let values = head.headers[name]
            if name.lowercased() == "cookie" && values.count > 1 {
                // Crumbs (HTTP/2 clients split a cookie into several fields) go as one field,
                // joined with "; ", which HTTP/1.1 upstreams require (RFC 9113 §8.2.3).
                shared.inherited.append((name, values.joined(separator: "; ")))
            } else {
                for value in values { shared.inherited.append((name, value)) }
            }
        }
        if route.configuration.forwarded { shared.imposed = ForwardingHeaders.make(head, client: client, hopOnly: hopOnly) }
        let admitted: AdmissionTicket
        switch admission.admit(route: name, routeLimit: route.configuration.maxBatches, processLimit: configuration.maxBatches) {
        case .success(let ticket):
            admitted = ticket
        case .failure(let refusal):
            let (limit, detail): (String, String)
            switch refusal {
            case .process(let n): (limit, detail) = ("max_batches", "Sheaf is running max_batches (\(n)) batches; try again shortly")
            case .route(let n): (limit, detail) = ("routes[].max_batches", "route \(name) is running its max_batches (\(n)) batches; try again shortly")
            }
            metrics.limitRefused(limit)
            metrics.batchFinished(route: name, outcome: "rejected", duration: nil)
            return rejected(Problem.response(.serviceUnavailable, detail: detail, extraHeaders: ["retry-after": "1"]), access)
        }
        // Counted from now: a body still arriving holds this service's transports as a running
        // batch does; if it never completes, the handler is dropped and so is the ticket.
        let ticket = BatchTicket(active)
        if let template = route.configuration.fanOut {
            // A template route's items start while its body is still arriving.
            let limits = InputLimits(maxItemBodyBytes: route.configuration.maxItemBodyBytes, maxDepth: configuration.maxNestingDepth)
            let decoder = StreamingTemplateDecoder(template: template, basePath: route.transport.configuration.endpoint.basePath,
                                                   maxItems: route.configuration.maxItems, headers: shared,
                                                   coalesce: route.configuration.coalesce, limits: limits)
            return .stream(maxBodyBytes: route.configuration.maxBodyBytes) { [self, shared, ticket, access, admitted] head, writer, reading in
                withExtendedLifetime(ticket) {}
                return StreamedBatchInput(decoder: decoder, maxBodyBytes: route.configuration.maxBodyBytes, loop: writer.loop,
                                          reading: reading, clientTimeout: configuration.clientTimeout,
                                          refuse: { error, bytesIn in
                                              self.refuse(error, route: route, shared: shared, access: access, writer: writer, bytesIn: bytesIn)
                                          },
                                          begin: { items, streamed, bytesIn in
                                              var access = access
                                              access.bytesIn = bytesIn
                                              return self.startSession(route: route, head: head, items: consume items, streamed: streamed,
                                                                       format: format, shared: shared, writer: writer, received: received,
                                                                       access: access, admitted: admitted, ticket: ticket)
                                          })
            }
        }
        return .collect(maxBodyBytes: route.configuration.maxBodyBytes) { [self, shared, ticket, access, admitted] head, body, writer in
            withExtendedLifetime(ticket) {}
            var access = access
            access.bytesIn = body.readableBytes
            self.runBatch(route: route, head: head, body: body, isXML: isXML, format: format, shared: shared,
                          writer: writer, received: received, access: access, admitted: admitted)
        }
    }

    private func rejected(_ response: SimpleResponse, _ entry: AccessEntry) -> HeadDecision {
        var response = response
        if let id = entry.requestID, !response.headers.contains(name: "x-request-id") {
            response.headers.add(name: "x-request-id", value: id)
        }
        logRejected(entry, response)
        return .respond(response)
    }

    private func runBatch(route: RouteRuntime, head: HTTPRequestHead, body: ByteBuffer, isXML: Bool, format: ResponseFormat,
                          shared: BatchHeaders, writer: ResponseWriter, received: NIODeadline, access: AccessEntry,
                          admitted: AdmissionTicket) {
        let configuration = route.configuration
        let basePath = route.transport.configuration.endpoint.basePath
        let limits = InputLimits(maxItemBodyBytes: configuration.maxItemBodyBytes, maxDepth: self.configuration.maxNestingDepth)
        let items: [BatchItem]
        do throws(BatchError) {
            // Explicit batches only: a template route's body is streamed (`StreamedBatchInput`).
            if isXML {
                items = try XMLBatchDecoder.decode(body, basePath: basePath, maxItems: configuration.maxItems, headers: shared,
                                                    coalesce: configuration.coalesce, limits: limits)
            } else {
                items = try JSONBatchDecoder.decodeExplicit(body, basePath: basePath, maxItems: configuration.maxItems,
                                                            headers: shared, coalesce: configuration.coalesce, limits: limits)
            }
        } catch {
            refuse(error, route: route, shared: shared, access: access, writer: writer, bytesIn: body.readableBytes)
            return
        }
        startSession(route: route, head: head, items: items, streamed: false, format: format, shared: shared, writer: writer,
                     received: received, access: access, admitted: admitted)
    }

    /// A batch refused for its body: the problem, counted and logged.
    private func refuse(_ error: BatchError, route: RouteRuntime, shared: BatchHeaders, access: AccessEntry,
                        writer: ResponseWriter, bytesIn: Int) {
        metrics.batchFinished(route: route.configuration.name, outcome: "rejected", duration: nil)
        if let limit = error.limit { metrics.limitRefused(limit) }
        var problem = Problem.response(error)
        if let requestID = shared.requestID { problem.headers.add(name: "x-request-id", value: requestID) }
        logRejected(access, problem, bytesIn: bytesIn)
        writer.respond(problem)
    }

    /// Starts the 207 and the fan-out of `items` (the first of them, when `streamed`).
    /// `ticket`: held until the batch ends, so a reload waits for it (a streamed batch's body
    /// may still be arriving).
    @discardableResult
    private func startSession(route: RouteRuntime, head: HTTPRequestHead, items: consuming [BatchItem], streamed: Bool,
                              format: ResponseFormat, shared: BatchHeaders, writer: ResponseWriter, received: NIODeadline,
                              access: AccessEntry, admitted: AdmissionTicket, ticket: BatchTicket? = nil) -> BatchSession {
        let configuration = route.configuration
        let id = Self.requestCounter.withLockedValue { value -> UInt64 in
            value += 1
            return value
        }
        var access = access
        let trace = tracer.map {
            BatchTrace(tracer: $0, headers: head.headers, method: head.method.rawValue, route: configuration,
                       upstream: route.transport.configuration.endpoint,
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
        sessions.withLockedValue { $0 += 1 }
        let session = BatchSession(route: route, items: consume items, streamed: streamed, format: format, requestID: shared.requestID,
                                   writer: writer, metrics: metrics, received: received, logger: logger,
                                   access: accessLog.map { ($0, access) }, trace: trace,
                                   itemBudget: itemBudget) { [active, sessions, memory, admitted, ticket] count in
            withExtendedLifetime(admitted) {}
            sessions.withLockedValue { $0 -= 1 }
            // The batch's own count and its ticket's both end here: with the ticket still
            // counted, no batch ever ended idle and memory was never given back.
            ticket?.release()
            let idle = active.withLockedValue { value -> Bool in
                value -= 1
                return value == 0
            }
            memory.batchEnded(items: count, idle: idle)
        }
        session.run()
        return session
    }
}

/// Batches running now, in the process and per route, across reloads: `max_batches` admits or
/// refuses a bulk request against these counts.
public final class BatchAdmission: Sendable {
    private let state = NIOLockedValueBox((total: 0, perRoute: [String: Int]()))

    public init() {}

    /// A ticket holding one place until it is released, or nil (with the limit passed) when full.
    func admit(route: String, routeLimit: Int, processLimit: Int) -> Result<AdmissionTicket, AdmissionRefusal> {
        let refusal = state.withLockedValue { state -> AdmissionRefusal? in
            if processLimit > 0 && state.total >= processLimit { return .process(processLimit) }
            if routeLimit > 0 && state.perRoute[route, default: 0] >= routeLimit { return .route(routeLimit) }
            state.total += 1
            state.perRoute[route, default: 0] += 1
            return nil
        }
        if let refusal { return .failure(refusal) }
        return .success(AdmissionTicket { [state] in
            state.withLockedValue {
                $0.total -= 1
                $0.perRoute[route, default: 1] -= 1
            }
        })
    }
}

enum AdmissionRefusal: Error {
    case process(Int)
    case route(Int)
}

/// One admitted batch's place: given back when the ticket goes, whichever way the batch ends
/// (its 207 written, its body never completed, its decoding refused).
final class AdmissionTicket: Sendable {
    private let release: @Sendable () -> Void

    init(release: @escaping @Sendable () -> Void) {
        self.release = release
    }

    deinit {
        release()
    }
}

/// Counts a batch whose body is being read as active for as long as its handler lives, or
/// until the batch ends (`release()`), whichever comes first.
private final class BatchTicket: Sendable {
    private let active: NIOLockedValueBox<Int>
    private let held = NIOLockedValueBox(true)

    init(_ active: NIOLockedValueBox<Int>) {
        self.active = active
        active.withLockedValue { $0 += 1 }
    }

    /// Stops counting the batch; once only.
    func release() {
        guard held.withLockedValue({ held in defer { held = false }; return held }) else { return }
        active.withLockedValue { $0 -= 1 }
    }

    deinit {
        release()
    }
}
