import NIOCore

/// How the HTTP/2 engine chooses a connection for an item (`balance`).
public enum UpstreamBalance: String, Sendable, CaseIterable {
    /// The default: a connection on the event loop that handed the item over while it has a free
    /// stream (no hop per item; a batch stays on its client's loop), else one with room on another
    /// loop, else the home connection's queue. Less CPU per item with concurrent batches.
    case loop
    /// Round-robin over every connection: one batch spreads over every event loop (both cores),
    /// for a single large batch's latency, at the cost of a hop per item.
    case connections
}

/// The wire protocol Sheaf speaks to one upstream.
public enum UpstreamProtocol: String, Sendable, CaseIterable {
    /// The default. `http://`: h2c first, HTTP/1.1 from the moment the upstream shows it does not
    /// speak h2c. `https://`: ALPN offers h2 and http/1.1, and the upstream's pick decides the
    /// engine (`AutoTransport`).
    case auto
    /// HTTP/2 over cleartext TCP with prior knowledge (RFC 9113 §3.3), on libnghttp2.
    case h2c
    /// HTTP/1.1 with keep-alive, on libcurl's multi interface.
    case http1
    /// HTTP/2 over TLS with ALPN `h2` only, on libnghttp2 and swift-nio-ssl.
    case h2
}

/// Where an upstream lives: scheme, host, port and the base path every item path is appended to.
public struct UpstreamEndpoint: Sendable, Equatable {
    public var scheme: String
    public var host: String { didSet { authorityByteCount = Self.authorityByteCount(host, port) } }
    public var port: Int { didSet { authorityByteCount = Self.authorityByteCount(host, port) } }
    /// Always starts with `/` and never ends with one (empty means the root).
    public var basePath: String

    public init(scheme: String, host: String, port: Int, basePath: String) {
        self.scheme = scheme
        self.host = host
        self.port = port
        authorityByteCount = Self.authorityByteCount(host, port)
        var base = basePath
        while base.hasSuffix("/") { base.removeLast() }
        if !base.isEmpty && !base.hasPrefix("/") { base = "/" + base }
        self.basePath = base
    }

    /// `host:port` as sent in `:authority` / `Host`, with IPv6 literals bracketed.
    public var authority: String { "\(bracketedHost):\(port)" }

    /// The host as it goes before a port: an IPv6 literal in brackets.
    public var bracketedHost: String { isIPv6 ? "[\(host)]" : host }

    /// `authority.utf8.count`, without building it. Kept, not computed: the head-size check runs
    /// twice per item, and scanning the host for a colon each time cost about 600 instructions
    /// per item (issue 13).
    public private(set) var authorityByteCount = 0

    private static func authorityByteCount(_ host: String, _ port: Int) -> Int {
        host.utf8.count + (isIPv6(host) ? 2 : 0) + 1 + (port < 10 ? 1 : port < 100 ? 2 : port < 1000 ? 3 : port < 10000 ? 4 : 5)
    }

    /// A literal IPv6 address.
    private var isIPv6: Bool { Self.isIPv6(host) }
    private static func isIPv6(_ host: String) -> Bool { host.utf8.contains(UInt8(ascii: ":")) }

    /// The origin, e.g. `http://127.0.0.1:9090`.
    public var origin: String { "\(scheme)://\(authority)" }
}

/// Everything one upstream transport needs; built by the `Config` module from YAML.
public struct UpstreamConfiguration: Sendable, Equatable {
    public var name: String
    public var endpoint: UpstreamEndpoint
    public var `protocol`: UpstreamProtocol
    /// Connections kept open to the upstream (HTTP/2: multiplexed; HTTP/1.1: keep-alive pool size).
    public var connections: Int
    /// Per-item deadline, from the moment the item is handed to the transport.
    public var timeout: TimeAmount
    /// Connect timeout for new connections.
    public var connectTimeout: TimeAmount
    /// Upstream response bodies larger than this are cut and flagged as truncated.
    public var maxResponseBodyBytes: Int
    /// PEM bundle of CAs to trust for an `https` upstream instead of the system's store.
    public var caFile: String?
    /// The name sent in SNI and verified in the certificate, instead of the url's host (the
    /// connection still goes to the url's host, and `:authority`/`Host` stay the url's).
    public var serverName: String?
    /// PEM client certificate (chain) and its key, for upstreams that require mTLS. Both or neither.
    public var clientCertificate: String?
    public var clientKey: String?
    /// Trust any certificate for any name. For tests against throw-away certificates only:
    /// Sheaf warns at start-up when it is set.
    public var insecureSkipVerify = false
    /// Items whose request head (RFC 9113 §6.5.2 size) is larger are answered 431, not sent.
    public var maxRequestHeaderBytes: Int = 64 << 10
    /// Answers whose head (RFC 9113 §6.5.2 size, interim heads and trailers counted) grows past
    /// this are 502: HPACK lets a few bytes on the wire stand for kilobytes of fields.
    public var maxResponseHeaderBytes: Int = 64 << 10
    /// HTTP/2: a PING goes out when a connection with open streams has read nothing this long,
    /// and this often on an idle pooled connection.
    public var pingInterval: TimeAmount = .seconds(5)
    /// HTTP/2: a PING unanswered this long retires the connection (a dead path that keeps TCP open).
    public var pingTimeout: TimeAmount = .seconds(3)
    /// Items waiting for a connection or a stream beyond this fail at once with 503, not sent.
    public var maxQueued = 10_000
    /// HTTP/2: which connection an item goes to.
    public var balance = UpstreamBalance.loop
    /// Retries within a budget; off by default (`attempts: 1`).
    public var retry = RetryConfiguration()
    /// Absent: the circuit never opens.
    public var circuitBreaker: CircuitBreakerConfiguration?

    public init(name: String, endpoint: UpstreamEndpoint, protocol: UpstreamProtocol = .h2c,
                connections: Int = 2, timeout: TimeAmount = .seconds(5),
                connectTimeout: TimeAmount = .seconds(2), maxResponseBodyBytes: Int = 1 << 20) {
        self.name = name
        self.endpoint = endpoint
        self.protocol = `protocol`
        self.connections = connections
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maxResponseBodyBytes = maxResponseBodyBytes
    }
}

extension TimeAmount {
    /// `5s`, `250ms`: durations as config.yaml writes them, for messages.
    public var configText: String {
        let ms = nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }
}
