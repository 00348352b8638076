import NIOCore

/// Why a TLS connection to an upstream failed, in the words an operator acts on. Both engines
/// classify their library's errors into these kinds, so an item's reason and the
/// `sheaf_upstream_tls_failures_total{kind}` metric read the same on HTTP/2 and HTTP/1.1.
public enum TLSFailureKind: String, Sendable, CaseIterable {
    /// The certificate does not chain to a trusted CA (or is expired, or malformed).
    case certificate
    /// The certificate is valid but not for the name Sheaf verified (`server_name` or the url's host).
    case hostname
    /// `protocol: h2`, and ALPN found no HTTP/2 in common.
    case alpn
    /// Anything else in the handshake: versions, ciphers, a refused client certificate, a reset.
    case handshake
}

/// One TLS failure: its kind and the item's reason.
public struct TLSFailure: Sendable, Equatable {
    public var kind: TLSFailureKind
    public var message: String

    /// `name`: the name the certificate was verified against; `detail`: the library's own words.
    public init(_ kind: TLSFailureKind, upstream: String, name: String, detail: String) {
        self.kind = kind
        switch kind {
        case .certificate:
            message = "TLS with upstream \(upstream) failed: certificate verify failed (\(detail))"
        case .hostname:
            message = "TLS with upstream \(upstream) failed: hostname mismatch: the certificate is not for \(name) (\(detail))"
        case .alpn:
            message = "upstream \(upstream) did not agree to HTTP/2 over TLS (\(detail))"
        case .handshake:
            message = "TLS with upstream \(upstream) failed: handshake failure (\(detail))"
        }
    }
}

extension TLSFailure {
    /// The reasons in BoringSSL's error strings (`error:1000007d:SSL routines:OPENSSL_internal:
    /// CERTIFICATE_VERIFY_FAILED` gives `CERTIFICATE_VERIFY_FAILED`), for a detail an operator
    /// reads: NIOSSL's error described itself as a dump of its values, source paths included.
    /// The text as it is when it holds none.
    static func libraryReasons(_ text: String) -> String {
        let reasons = text.components(separatedBy: "error:").dropFirst().compactMap { entry -> String? in
            let fields = entry.split(separator: ":", maxSplits: 4, omittingEmptySubsequences: false)
            guard fields.count >= 4 else { return nil }
            let reason = fields[3].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
            return reason.isEmpty ? nil : String(reason)
        }
        var seen = Set<String>()
        let unique = reasons.filter { seen.insert($0).inserted }
        return unique.isEmpty ? text : unique.joined(separator: ", ")
    }

    /// Why a handshake still unfinished at `connect_timeout` failed, in both engines' words.
    static func handshakeTimeoutDetail(_ limit: TimeAmount) -> String {
        "it did not finish within \(limit.configText), the upstream's connect_timeout"
    }
}

/// What transports report about an upstream besides item outcomes, for metrics. Called on the
/// transport's own threads; keep it cheap.
public struct UpstreamEvents: Sendable {
    public var tlsFailure: @Sendable (_ upstream: String, _ kind: TLSFailureKind) -> Void = { _, _ in }
    /// An item goes again; `reason` is its `retry.on` condition.
    public var retry: @Sendable (_ upstream: String, _ reason: String) -> Void = { _, _ in }
    /// A retry the policy wanted and the budget refused.
    public var retryBudgetExhausted: @Sendable (_ upstream: String) -> Void = { _ in }
    public var circuitTransition: @Sendable (_ upstream: String, _ from: CircuitBreaker.State, _ to: CircuitBreaker.State) -> Void = { _, _, _ in }
    /// The upstream sent GOAWAY on an HTTP/2 connection.
    public var goaway: @Sendable (_ upstream: String) -> Void = { _ in }

    public init() {}

    public init(tlsFailure: @escaping @Sendable (_ upstream: String, _ kind: TLSFailureKind) -> Void) {
        self.tlsFailure = tlsFailure
    }

    /// Reports nothing (tests, tools).
    public static let none = UpstreamEvents()
}
