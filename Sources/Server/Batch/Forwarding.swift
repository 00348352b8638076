import MultiStatus
import Upstream
import NIOCore
import NIOHTTP1

/// Who sent a request, as its connection knows it.
public struct ClientConnection: Sendable {
    /// The peer's address; nil when unknown (a Unix socket, or a test).
    public var address: SocketAddress?
    /// The request arrived over TLS.
    public var secure: Bool

    public init(address: SocketAddress?, secure: Bool) {
        self.address = address
        self.secure = secure
    }
}

/// The forwarding headers a bulk request gives each of its items: `X-Forwarded-For` and
/// `Forwarded` (RFC 7239) extend what the client sent with this hop, `X-Forwarded-Proto` names
/// the scheme Sheaf was reached by. A chain an earlier hop sent is kept only when it is plain
/// visible text, so a client cannot smuggle control characters through it, and only when the
/// request's `Connection` does not name it (then it was for that hop only, RFC 9110 §7.6.1).
enum ForwardingHeaders {
    /// `hopOnly`: the request's Connection options (`HTTPSyntax.connectionOptions`).
    static func make(_ head: HTTPRequestHead, client: ClientConnection, hopOnly: Set<String> = []) -> [(name: String, value: String)] {
        let proto = client.secure ? "https" : "http"
        let ip = client.address?.ipAddress
        func earlier(_ name: String) -> [String] { hopOnly.contains(name) ? [] : head.headers[name] }
        var out: [(name: String, value: String)] = []
        out.reserveCapacity(3)
        if let ip { out.append(("x-forwarded-for", extending(earlier("x-forwarded-for"), with: ip))) }
        out.append(("x-forwarded-proto", proto))
        var element = "for=" + (ip.map(node) ?? "unknown") + ";proto=" + proto
        if let host = head.headers.first(name: "host"), isVisible(host) { element += ";host=" + token(host) }
        out.append(("forwarded", extending(earlier("forwarded"), with: element)))
        return out
    }

    private static func extending(_ earlier: [String], with hop: String) -> String {
        let kept = earlier.filter { !$0.isEmpty && isVisible($0) }
        return kept.isEmpty ? hop : kept.joined(separator: ", ") + ", " + hop
    }

    /// RFC 7239 §6: an IPv6 node is bracketed, and then must be quoted.
    private static func node(_ ip: String) -> String {
        ip.contains(":") ? "\"[\(ip)]\"" : ip
    }

    /// A value as an RFC 9110 token when it is one, else as a quoted string.
    private static func token(_ value: String) -> String {
        if value.utf8.allSatisfy(HTTPSyntax.isTokenByte) { return value }
        var quoted = "\""
        for character in value {
            if character == "\"" || character == "\\" { quoted.append("\\") }
            quoted.append(character)
        }
        return quoted + "\""
    }

    /// Printable ASCII, space and tab: safe to repeat in a header.
    private static func isVisible(_ value: String) -> Bool {
        value.utf8.allSatisfy { $0 == 0x09 || (0x20...0x7E).contains($0) }
    }
}

/// A bulk request's id: its own `X-Request-ID` when that is 1–200 visible ASCII characters,
/// otherwise 128 random bits in hex. Items are sent `<id>.<item id>` and the 207 echoes it.
/// An id the request's `Connection` names (`hopOnly`) was for that hop only, and is not taken.
enum RequestID {
    static func of(_ head: HTTPRequestHead, hopOnly: Set<String> = []) -> String {
        if !hopOnly.contains("x-request-id"), let given = head.headers.first(name: "x-request-id"), (1...200).contains(given.utf8.count),
           given.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) {
            return given
        }
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt64
        return hex(high) + hex(low)
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
