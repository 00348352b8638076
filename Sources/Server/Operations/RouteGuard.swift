import Config
import Crypto
import Foundation
import NIOHTTP1

/// A route's accepted tokens, kept only as SHA-256 digests: a memory dump shows no token, and
/// every check hashes the presented token and compares it with every digest without stopping at
/// the first difference, so the time taken says nothing about how close a guess was.
struct TokenSet: Sendable {
    private let digests: [[UInt8]]

    init(_ tokens: [String]) {
        digests = tokens.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    /// Reads `auth.tokens_file` (one token per line).
    init(file: String) throws {
        self.init(RouteAuth.tokens(in: try String(contentsOfFile: file, encoding: .utf8)))
    }

    func accepts(_ token: String) -> Bool {
        let presented = Array(SHA256.hash(data: Data(token.utf8)))
        var matched: UInt8 = 0
        for digest in digests {
            var difference: UInt8 = 0
            for i in 0..<presented.count { difference |= digest[i] ^ presented[i] }
            // 1 when equal, without a branch on the secret.
            matched |= UInt8(truncatingIfNeeded: (UInt16(difference) &- 1) >> 8)
        }
        return matched != 0
    }
}

/// Who may start a fan-out on a route: the credential a bulk request carries, checked against
/// the route's tokens before anything is read or sent.
struct RouteGuard: Sendable {
    enum Refusal: String {
        case missing, invalid
    }

    let auth: RouteAuth
    let tokens: TokenSet

    init(_ auth: RouteAuth) throws {
        self.auth = auth
        self.tokens = try TokenSet(file: auth.tokensFile)
    }

    /// Nil when the request may proceed.
    func check(_ headers: HTTPHeaders) -> Refusal? {
        let presented: String?
        if let header = auth.apiKeyHeader {
            presented = headers.first(name: header)
        } else if let authorization = headers.first(name: "authorization"),
                  authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " {
            presented = authorization.dropFirst(7).trimmingCharacters(in: .whitespaces)
        } else {
            presented = nil
        }
        guard let presented, !presented.isEmpty else { return .missing }
        return tokens.accepts(presented) ? nil : .invalid
    }

    /// RFC 6750 §3 for bearer tokens; for an API key header, the same shape naming the header.
    func challenge(_ refusal: Refusal) -> String {
        let error = refusal == .invalid ? ", error=\"invalid_token\"" : ""
        if let header = auth.apiKeyHeader { return "ApiKey realm=\"sheaf\", header=\"\(header)\"\(error)" }
        return "Bearer realm=\"sheaf\"\(error)"
    }
}
