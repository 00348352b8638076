import NIOCore
import NIOSSL

/// TLS for HTTP/2 upstreams (`protocol: h2`, `https://`): one client context per upstream, made
/// once (loading the CA file per connection would cost a file read and a parse each time).
/// ALPN offers only `h2`; the peer's certificate is verified against the system trust store or
/// `ca_file`, and against the url's host (SNI too, unless the host is an IP literal).
struct UpstreamTLS {
    let context: NIOSSLContext
    let serverHostname: String?

    init(configuration: UpstreamConfiguration) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.applicationProtocols = ["h2"]
        tls.certificateVerification = .fullVerification
        if let caFile = configuration.caFile {
            tls.trustRoots = .file(caFile)
        }
        context = try NIOSSLContext(configuration: tls)
        let host = configuration.endpoint.host
        // SNI carries names only (RFC 6066 §3); an IP literal is verified against the IP SANs.
        serverHostname = host.contains(":") || host.split(separator: ".").allSatisfy({ Int($0) != nil }) ? nil : host
    }

    func makeHandler() throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(context: context, serverHostname: serverHostname)
    }

    /// What a TLS failure becomes in an item's reason: the part a user can act on.
    static func describe(_ error: Error, upstream: String) -> String? {
        let text = "\(error)"
        if let sslError = error as? NIOSSLError {
            switch sslError {
            case .handshakeFailed:
                if text.contains("NO_APPLICATION_PROTOCOL") {
                    return "upstream \(upstream) did not agree to HTTP/2 over TLS (no ALPN protocol in common: it offers no h2)"
                }
                if text.contains("CERTIFICATE_VERIFY_FAILED") {
                    return "TLS with upstream \(upstream) failed: certificate verify failed (\(text))"
                }
                return "TLS with upstream \(upstream) failed: handshake failure (\(text))"
            default:
                return "TLS with upstream \(upstream) failed: \(text)"
            }
        }
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "TLS with upstream \(upstream) failed: hostname mismatch (\(text))"
        }
        return nil
    }
}
