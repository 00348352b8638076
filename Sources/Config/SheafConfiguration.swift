import Foundation
import BatchInput
import FanOut
import MultiStatus
import NIOCore
import Upstream

/// A host and port to listen on or connect to.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// `HOST:PORT` or `[IPv6]:PORT`.
    public static func parse(_ text: String) -> HostPort? {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return nil }
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        return HostPort(host: String(host), port: port)
    }
}

/// One route: which requests it takes, where its items go, and how the batch is bounded.
public struct RouteConfiguration: Sendable {
    public var name: String
    public var method: String
    public var path: String
    public var upstream: String
    /// Present: the body is fanned out by this template. Absent: the body is an explicit batch.
    public var fanOut: FanOutTemplate?
    /// Items in flight for one batch.
    public var concurrency: Int
    /// More items than this: 413.
    public var maxItems: Int
    /// A larger request body: 413.
    public var maxBodyBytes: Int
    /// When set, items still running this long after the batch started are cancelled on the
    /// wire and reported 504; items not yet started are not sent.
    public var deadline: TimeAmount?
    /// Headers of the bulk request copied onto every item (e.g. Authorization), unless the item
    /// sets them itself.
    public var forwardHeaders: [String] = []
    /// Write the 207's responses in request order instead of completion order.
    public var requestOrder = false
    /// Add `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) to every item.
    public var forwarded = true
    /// The upstream response headers each item reports in the 207.
    public var responseHeaders = ReportedHeaders.standard
    /// `on_error` and `depends_on_success`.
    public var policy = FanOutPolicy()
    /// Identical GET and HEAD items of one batch make one upstream call.
    public var coalesce = true
    /// When set, a bulk request must carry one of the file's tokens, or it gets 401.
    public var auth: RouteAuth?
    /// Batches of this route running at once (0: no limit); more get 503 with Retry-After.
    public var maxBatches = 0
    /// One explicit item's body; more makes the batch 413, naming the item.
    public var maxItemBodyBytes = 1 << 20
    /// WebDAV properties each item the upstream answered reports in the 207 (none by default).
    public var properties: [DAVProperty] = []
    /// Bulk requests each client address may make to this route; more get 429 (none by default).
    public var rateLimit: RateLimit?

    public init(name: String, method: String, path: String, upstream: String, fanOut: FanOutTemplate? = nil,
                concurrency: Int = 100, maxItems: Int = 1000, maxBodyBytes: Int = 8 << 20) {
        self.name = name
        self.method = method
        self.path = path
        self.upstream = upstream
        self.fanOut = fanOut
        self.concurrency = concurrency
        self.maxItems = maxItems
        self.maxBodyBytes = maxBodyBytes
    }
}

/// `tracing:` in config.yaml: where spans go, under which service name, and what share of new
/// traces is sampled (a client's own sampling decision in `traceparent` is followed).
public struct TracingConfiguration: Sendable, Equatable {
    /// The OTLP/HTTP traces endpoint, e.g. `http://otel-collector:4318/v1/traces`.
    public var otlpEndpoint: String
    public var serviceName = "sheaf"
    /// 0...1, for traces Sheaf starts itself.
    public var sampleRatio = 1.0

    public init(otlpEndpoint: String) {
        self.otlpEndpoint = otlpEndpoint
    }
}

/// `auth:` on a route: the file of accepted tokens (one per line), read as `Authorization:
/// Bearer <token>`, or from `apiKeyHeader` when set.
public struct RouteAuth: Sendable, Equatable {
    public var tokensFile: String
    public var apiKeyHeader: String?

    public init(tokensFile: String, apiKeyHeader: String? = nil) {
        self.tokensFile = tokensFile
        self.apiKeyHeader = apiKeyHeader
    }

    /// The tokens in a file: one per line, surrounding blanks ignored, blank lines skipped.
    public static func tokens(in text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// `rate_limit:` on a route: a token bucket per client address, `requestsPerSecond` refilled
/// up to `burst`.
public struct RateLimit: Sendable, Equatable {
    public var requestsPerSecond: Double
    public var burst: Int

    public init(requestsPerSecond: Double, burst: Int) {
        self.requestsPerSecond = requestsPerSecond
        self.burst = burst
    }
}

/// `access_log:` in config.yaml.
public enum AccessLogDestination: Sendable, Equatable {
    case off
    case stderr
    /// Appended to; reopened on SIGUSR1 (after logrotate moved it).
    case file(String)
}

/// The whole, validated `config.yaml`. Immutable: a reload builds a new one and swaps it whole.
public struct SheafConfiguration: Sendable {
    public var listen: HostPort
    public var metricsPath: String
    /// When set, `sheaf serve` also runs the demo upstream in-process on this address.
    public var demoUpstream: HostPort?
    /// On SIGTERM / SIGINT: stop accepting, then wait this long for batches in flight to finish.
    public var drainTimeout: TimeAmount = .seconds(10)
    /// Idle client connections, and request bodies still arriving, are cut after this long.
    public var clientTimeout: TimeAmount = .seconds(60)
    /// Bytes per second a streamed request body must average, counted once `clientTimeout` of
    /// reading has passed (time Sheaf itself held reading back excluded); 0: no minimum.
    public var minBodyRate = 256
    /// Open connections one client address may hold; more are refused at accept (0: no limit).
    public var maxConnectionsPerClient = 256
    /// Encoded 207 bytes a client connection may have waiting for its socket; past it, its
    /// batches stop reading upstream bodies (HTTP/2 flow control, paused curl transfers).
    public var maxBufferedOutput = 4 << 20
    /// h2c front: concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    public var maxStreamsPerConnection = 256
    /// Request head limits: past them 414 (url) or 431 (header count or bytes).
    public var maxURLBytes = 8 << 10
    public var maxHeaders = 100
    public var maxHeaderBytes = 32 << 10
    /// The front's HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    public var http2InitialWindowSize = 1 << 20
    public var http2MaxFrameSize = 16 << 10
    /// Batches running at once in the process (0: no limit); more get 503 with Retry-After.
    public var maxBatches = 1024
    /// JSON and XML nesting in a bulk request body; deeper is a 400.
    public var maxNestingDepth = 64
    /// Items on the wire across all batches (0: no process-wide cap beyond each route's
    /// `concurrency`); batches waiting for room take turns.
    public var maxItemsInFlight = 0
    /// When set, the listener speaks TLS only (ALPN h2 and http/1.1); when nil, HTTP/1.1 and h2c.
    public var tls: FrontTLSConfiguration?
    /// When set, spans for each batch and item are exported over OTLP/HTTP.
    public var tracing: TracingConfiguration?
    /// Where the one-JSON-line-per-bulk-request access log goes.
    public var accessLog = AccessLogDestination.stderr
    public var upstreams: [UpstreamConfiguration]
    public var routes: [RouteConfiguration]

    public init(listen: HostPort, metricsPath: String = "/metrics", demoUpstream: HostPort? = nil,
                upstreams: [UpstreamConfiguration], routes: [RouteConfiguration]) {
        self.listen = listen
        self.metricsPath = metricsPath
        self.demoUpstream = demoUpstream
        self.upstreams = upstreams
        self.routes = routes
    }

    public func upstream(named name: String) -> UpstreamConfiguration? {
        upstreams.first(where: { $0.name == name })
    }
}
