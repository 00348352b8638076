import NIOCore
import NIOHTTP1
@testable import Server
import Testing

private func lines(_ headers: [(name: String, value: String)]) -> [String] {
    headers.map { "\($0.name): \($0.value)" }
}

@Test func forwardingHeadersAppendThePeerAndNameTheScheme() throws {
    let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/bulk", headers: [
        "host": "api.example:8080", "x-forwarded-for": "203.0.113.7", "X-Forwarded-For": "198.51.100.2",
        "forwarded": "for=203.0.113.7;proto=https", "x-forwarded-proto": "gopher",
    ])
    let tls = ClientConnection(address: try SocketAddress(ipAddress: "10.1.2.3", port: 5555), secure: true)
    #expect(lines(ForwardingHeaders.make(head, client: tls)) == [
        "x-forwarded-for: 203.0.113.7, 198.51.100.2, 10.1.2.3",
        "x-forwarded-proto: https",
        "forwarded: for=203.0.113.7;proto=https, for=10.1.2.3;proto=https;host=\"api.example:8080\"",
    ])

    // An IPv6 peer is quoted and bracketed in Forwarded (RFC 7239 §6); a token host is not quoted.
    let plain = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/bulk", headers: ["host": "sheaf"])
    let v6 = ClientConnection(address: try SocketAddress(ipAddress: "::1", port: 5555), secure: false)
    #expect(lines(ForwardingHeaders.make(plain, client: v6)) == [
        "x-forwarded-for: ::1", "x-forwarded-proto: http", "forwarded: for=\"[::1]\";proto=http;host=sheaf",
    ])

    // A host with a quote or backslash is escaped inside the quoted string; an unknown peer is "unknown".
    let odd = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/bulk", headers: ["host": "a\"b\\c"])
    #expect(lines(ForwardingHeaders.make(odd, client: ClientConnection(address: nil, secure: false))) == [
        "x-forwarded-proto: http", "forwarded: for=unknown;proto=http;host=\"a\\\"b\\\\c\"",
    ])
}

@Test func requestIDIsTakenWhenSaneAndGeneratedOtherwise() {
    func head(_ value: String?) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .POST, uri: "/", headers: value.map { ["x-request-id": $0] } ?? [:])
    }
    #expect(RequestID.of(head("abc-123_DEF")) == "abc-123_DEF")
    let generated = RequestID.of(head(nil))
    #expect(generated.count == 32 && generated.allSatisfy(\.isHexDigit))
    #expect(RequestID.of(head(nil)) != generated)
    // Too long, or carrying spaces or non-ASCII: replaced, never passed on.
    #expect(RequestID.of(head(String(repeating: "a", count: 201))).count == 32)
    #expect(RequestID.of(head("has space")).count == 32)
    #expect(RequestID.of(head("é")).count == 32)
}
