import NIOCore
import NIOSSL

/// TLS for HTTP/2 upstreams (`https://` with `protocol: h2` or `auto`): one client context per
/// upstream, made once (loading the CA file per connection would cost a file read and a parse
/// each time). ALPN offers `h2` (and `http/1.1` under `auto`, whose choice then decides the
/// engine); the peer's certificate is verified against the system trust store or `ca_file`, and
/// against `server_name` or the url's host (SNI too, unless that is an IP literal).
struct UpstreamTLS {
    let context: NIOSSLContext
    let serverHostname: String?
    /// The name the certificate is verified against, for messages.
    let verifiedName: String
    /// `auto`: ALPN may pick `http/1.1`, and that is a decision, not a failure.
    let offersHTTP1: Bool
    let insecureSkipVerify: Bool
    let upstream: String
    let events: UpstreamEvents

    init(configuration: UpstreamConfiguration, offerHTTP1: Bool = false, events: UpstreamEvents = .none) throws {
        context = try NIOSSLContext(configuration: Self.tlsConfiguration(configuration, offerHTTP1: offerHTTP1))
        let host = configuration.serverName ?? configuration.endpoint.host
        // SNI carries names only (RFC 6066 §3); an IP literal is verified against the IP SANs.
        serverHostname = host.contains(":") || host.split(separator: ".").allSatisfy({ Int($0) != nil }) ? nil : host
        verifiedName = host
        offersHTTP1 = offerHTTP1
        insecureSkipVerify = configuration.insecureSkipVerify
        upstream = configuration.name
        self.events = events
    }

    private static func tlsConfiguration(_ configuration: UpstreamConfiguration, offerHTTP1: Bool) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.applicationProtocols = offerHTTP1 ? ["h2", "http/1.1"] : ["h2"]
        tls.certificateVerification = configuration.insecureSkipVerify ? .none : .fullVerification
        if let caFile = configuration.caFile {
            tls.trustRoots = .file(caFile)
        }
        if let certificate = configuration.clientCertificate, let key = configuration.clientKey {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        }
        return tls
    }

    /// Which TLS file of the configuration cannot be used and why (a CA bundle or certificate
    /// that is not PEM, a key that is not one or does not belong to the certificate), or nil.
    /// For `sheaf check`, which reports it at that key.
    static func problem(with configuration: UpstreamConfiguration) -> (field: String, message: String)? {
        if let caFile = configuration.caFile, (try? NIOSSLCertificate.fromPEMFile(caFile))?.isEmpty != false {
            return ("ca_file", "\(caFile) holds no PEM certificate")
        }
        if let certificate = configuration.clientCertificate, (try? NIOSSLCertificate.fromPEMFile(certificate))?.isEmpty != false {
            return ("client_certificate", "\(certificate) holds no PEM certificate")
        }
        if let key = configuration.clientKey, (try? NIOSSLPrivateKey(file: key, format: .pem)) == nil {
            return ("client_key", "\(key) holds no PEM private key (encrypted keys are not supported)")
        }
        do {
            _ = try NIOSSLContext(configuration: tlsConfiguration(configuration, offerHTTP1: true))
            return nil
        } catch NIOSSLError.failedToLoadPrivateKey {
            // Both files load on their own: BoringSSL refused the pair.
            return ("client_key", "the key does not belong to client_certificate \(configuration.clientCertificate ?? "")")
        } catch {
            return ("client_certificate", "cannot use the TLS files: \(error)")
        }
    }

    func makeHandler() throws -> NIOSSLClientHandler {
        guard let name = serverHostname, !insecureSkipVerify else {
            return try NIOSSLClientHandler(context: context, serverHostname: serverHostname)
        }
        // swift-nio-ssl also accepts a certificate whose IP address SAN matches the connected
        // address, whatever name was asked for: with a name (`server_name`, or the url's host)
        // the certificate must be for that name, as curl checks on the HTTP/1.1 engine.
        return try NIOSSLClientHandler._makeSSLClientHandler(context: context, serverHostname: name) { certificate, channel in
            var dnsNames: [String] = []
            for entry in certificate._subjectAlternativeNames() where entry.nameType == .dnsName {
                dnsNames.append(String(decoding: entry.contents, as: UTF8.self))
            }
            // No DNS names at all: swift-nio-ssl's own check (the common name) stands.
            if dnsNames.isEmpty || Self.certificateNames(dnsNames, match: name) {
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            return channel.eventLoop.makeFailedFuture(HostnameMismatch(names: dnsNames))
        }
    }

    /// The certificate's DNS names do not include the name Sheaf verified.
    struct HostnameMismatch: Error, CustomStringConvertible {
        let names: [String]
        var description: String { "the certificate names \(names.joined(separator: ", "))" }
    }

    /// RFC 6125 §6.4: case-insensitive, a trailing dot ignored, and a wildcard only as the whole
    /// left-most label of a name with at least two more labels, standing for exactly one label.
    static func certificateNames(_ names: [String], match host: String) -> Bool {
        func normal(_ name: String) -> [Substring] {
            var name = name.lowercased()
            if name.hasSuffix(".") { name.removeLast() }
            return name.split(separator: ".", omittingEmptySubsequences: false)
        }
        let wanted = normal(host)
        return names.contains { candidate in
            let labels = normal(candidate)
            guard labels.count == wanted.count, !labels.contains(where: \.isEmpty) else { return false }
            if labels.first == "*" {
                return labels.count >= 3 && labels.dropFirst() == wanted.dropFirst()
            }
            return labels == wanted
        }
    }

    /// A TLS error from the channel, classified and counted; nil when it is not about TLS.
    func failure(for error: Error) -> TLSFailure? {
        let text = "\(error)"
        let kind: TLSFailureKind
        if let sslError = error as? NIOSSLError, case .handshakeFailed = sslError {
            if text.contains("NO_APPLICATION_PROTOCOL") {
                kind = .alpn
            } else if text.contains("CERTIFICATE_VERIFY_FAILED") {
                kind = .certificate
            } else {
                kind = .handshake
            }
        } else if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            kind = .hostname
        } else if error is HostnameMismatch {
            kind = .hostname
        } else if error is NIOSSLError {
            kind = .handshake
        } else {
            return nil
        }
        let detail = kind == .alpn ? "no ALPN protocol in common: it offers no h2" : TLSFailure.libraryReasons(text)
        return counted(TLSFailure(kind, upstream: upstream, name: verifiedName, detail: detail))
    }

    /// The handshake did not finish within `limit` (`connect_timeout`), counted as a handshake failure.
    func handshakeTimedOut(within limit: TimeAmount) -> TLSFailure {
        handshakeFailed(TLSFailure.handshakeTimeoutDetail(limit))
    }

    /// The connection failed under the handshake (a reset, a close): a handshake failure, as
    /// libcurl reports it on HTTP/1.1, counted.
    func handshakeFailed(_ detail: String) -> TLSFailure {
        counted(TLSFailure(.handshake, upstream: upstream, name: verifiedName, detail: detail))
    }

    /// The handshake completed with `alpn` where HTTP/2 was wanted. Under `auto` that is the
    /// upstream's choice of HTTP/1.1, not a failure.
    func refusedHTTP2(alpn: String?) {
        if !offersHTTP1 { _ = counted(TLSFailure(.alpn, upstream: upstream, name: verifiedName, detail: "ALPN: \(alpn ?? "none")")) }
    }

    private func counted(_ failure: TLSFailure) -> TLSFailure {
        events.tlsFailure(upstream, failure.kind)
        return failure
    }
}
