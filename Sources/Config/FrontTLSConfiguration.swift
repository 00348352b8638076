import Foundation
import NIOSSL

/// TLS on the front listener (`tls:` in config.yaml): PEM files, and the one place they become a
/// server context, so `sheaf check` refuses exactly what `sheaf serve` would fail to load.
public struct FrontTLSConfiguration: Sendable, Equatable {
    /// PEM certificate chain, leaf first.
    public var certificate: String
    /// PEM private key of the leaf certificate.
    public var privateKey: String
    /// When set, clients must present a certificate that chains to one in this PEM file.
    public var clientCA: String?

    public init(certificate: String, privateKey: String, clientCA: String? = nil) {
        self.certificate = certificate
        self.privateKey = privateKey
        self.clientCA = clientCA
    }

    /// ALPN offers, in the server's order of preference.
    public static let applicationProtocols = ["h2", "http/1.1"]

    /// Loads the files and builds the server context (blocking file reads: not on an event loop).
    /// Every file is tried, so one error lists each file Sheaf cannot use.
    public func makeServerContext() throws(FrontTLSError) -> NIOSSLContext {
        var failed: [FrontTLSError.Problem] = []
        var chain: [NIOSSLCertificate] = []
        var key: NIOSSLPrivateKey?
        var roots: [NIOSSLCertificate]?
        do { chain = try Self.certificates(certificate, field: .certificate) } catch { failed.append(error) }
        do { key = try Self.privateKey(privateKey) } catch { failed.append(error) }
        if let clientCA {
            do { roots = try Self.certificates(clientCA, field: .clientCA) } catch { failed.append(error) }
        }
        guard failed.isEmpty, let key else { throw FrontTLSError(problems: failed) }
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                           privateKey: .privateKey(key))
        tls.applicationProtocols = Self.applicationProtocols
        if let roots {
            tls.trustRoots = .certificates(roots)
            // Required, not optional: a client without a certificate fails the handshake.
            tls.certificateVerification = .noHostnameVerification
            tls.sendCANameList = true
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch NIOSSLError.failedToLoadPrivateKey {
            // The key parsed on its own above; BoringSSL refuses it here only when it is not the
            // certificate's key (SSL_CTX_use_PrivateKey checks the pair).
            throw FrontTLSError(problems: [.init(field: .privateKey,
                                                 message: "\"\(privateKey)\" does not match the certificate in \"\(certificate)\"")])
        } catch {
            throw FrontTLSError(problems: [.init(field: .certificate,
                                                 message: "cannot use \"\(certificate)\" with \"\(privateKey)\": \(error)")])
        }
    }

    private static func checkReadable(_ path: String, field: FrontTLSError.Field) throws(FrontTLSError.Problem) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
              FileManager.default.isReadableFile(atPath: path) else {
            throw .init(field: field, message: "cannot read \"\(path)\"")
        }
    }

    private static func certificates(_ path: String, field: FrontTLSError.Field) throws(FrontTLSError.Problem) -> [NIOSSLCertificate] {
        try checkReadable(path, field: field)
        guard let found = try? NIOSSLCertificate.fromPEMFile(path), !found.isEmpty else {
            throw .init(field: field, message: "\"\(path)\" holds no PEM certificate")
        }
        return found
    }

    private static func privateKey(_ path: String) throws(FrontTLSError.Problem) -> NIOSSLPrivateKey {
        try checkReadable(path, field: .privateKey)
        guard let key = try? NIOSSLPrivateKey(file: path, format: .pem) else {
            throw .init(field: .privateKey,
                        message: "\"\(path)\" holds no PEM private key Sheaf can read (an encrypted key must be decrypted first)")
        }
        return key
    }
}

/// The `tls` files Sheaf cannot use, each with the key of the `tls` block that names it.
public struct FrontTLSError: Error, Sendable, CustomStringConvertible {
    /// A key of the `tls` block.
    public enum Field: String, Sendable {
        case certificate
        case privateKey = "private_key"
        case clientCA = "client_ca"
    }

    /// One file and what is wrong with it.
    public struct Problem: Error, Sendable, CustomStringConvertible {
        public var field: Field
        public var message: String

        public var description: String { "tls \(field.rawValue): \(message)" }
    }

    public var problems: [Problem]

    public var description: String { problems.map(\.description).joined(separator: "; ") }
}
