import Foundation
import Codecs
import NIOCore
import NIOHTTP1
import Server

/// A small legacy single-item API, served over HTTP/1.1 and h2c on one port, so that the default
/// config.yaml shows a real mixed 207 and tests have an upstream with programmable outcomes.
/// A module of its own so that the production server does not carry it: only the `sheaf`
/// executable links it (`sheaf demo-upstream`, and `serve` with `demo_upstream:`).
///
///
/// - `GET /users/{id}`: 200 JSON for ids 1–100, 403 for the locked id 13, 404 otherwise.
/// - `DELETE /docs/{name}`: 204 for a.pdf, b.txt, report.pdf, notes.md; 423 for names starting
///   with `locked`; 404 otherwise. Nothing is really deleted, so the demo can be run again.
/// - `GET /docs/{name}`: 200 text/plain for the known documents; `PUT /docs/{name}`: 201.
/// - `GET /status/{code}`: that status. `GET /redirect/{id}`: 302 to `/users/{id}`.
/// - `GET /bytes/{n}`: n bytes of binary. `ANY /echo`: the request as JSON, HTTP version included.
/// - `ANY /reset`: no answer: the stream is reset (HTTP/2) or the connection dropped (HTTP/1.1).
/// - `?delay_ms=N` on any path answers after N ms (at most 30 s).
public struct DemoUpstream: HTTPResponder {
    static let documents: Set<String> = ["a.pdf", "b.txt", "report.pdf", "notes.md"]

    public init() {}

    public func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        json(.payloadTooLarge, "{\"error\":\"body too large\"}")
    }

    public func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision {
        .collect(maxBodyBytes: 1 << 20) { head, body, writer in
            let (path, query) = Self.split(head.uri)
            if path == "/reset" {
                writer.abort()  // a fault to test against: RST_STREAM on HTTP/2, a dropped connection on HTTP/1.1
                return
            }
            let response = Self.answer(head, path: path, body: body)
            if let delay = query["delay_ms"].flatMap(Int.init), delay > 0 {
                writer.loop.scheduleTask(in: .milliseconds(Int64(min(delay, 30_000)))) { writer.respond(response) }
            } else {
                writer.respond(response)
            }
        }
    }

    static func split(_ uri: String) -> (String, [String: String]) {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                query[String(kv[0])] = kv.count == 2 ? String(kv[1]) : ""
            }
        }
        return (String(parts[0]), query)
    }

    static func answer(_ head: HTTPRequestHead, path: String, body: ByteBuffer) -> SimpleResponse {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map {
            String($0).removingPercentEncoding ?? String($0)
        }
        let method = head.method.rawValue
        switch (method, segments.first ?? "", segments.count) {
        case ("GET", "users", 2), ("HEAD", "users", 2):
            guard let id = Int(segments[1]), (1...100).contains(id) else {
                return json(.notFound, "{\"error\":\"no such user\"}")
            }
            if id == 13 { return json(.forbidden, "{\"error\":\"account locked\"}") }
            return json(.ok, "{\"id\":\(id),\"name\":\"User \(id)\",\"email\":\"user\(id)@example.com\"}")
        case ("DELETE", "docs", 2):
            let name = segments[1]
            if name.hasPrefix("locked") { return json(.locked, "{\"error\":\"document is locked\"}") }
            return documents.contains(name) ? SimpleResponse(status: .noContent) : json(.notFound, "{\"error\":\"no such document\"}")
        case ("GET", "docs", 2):
            let name = segments[1]
            guard documents.contains(name) else { return json(.notFound, "{\"error\":\"no such document\"}") }
            return SimpleResponse(status: .ok, headers: ["content-type": "text/plain; charset=utf-8"],
                                  body: ByteBuffer(string: "contents of \(name)\n"))
        case ("PUT", "docs", 2):
            return json(.created, "{\"stored\":\(quoted(segments[1])),\"bytes\":\(body.readableBytes)}")
        case (_, "status", 2):
            guard let code = Int(segments[1]), (200...599).contains(code) else { return json(.badRequest, "{\"error\":\"bad status\"}") }
            let status = HTTPResponseStatus(statusCode: code)
            if code == 204 || code == 304 { return SimpleResponse(status: status) }
            return json(status, "{\"status\":\(code)}")
        case ("GET", "redirect", 2):
            return SimpleResponse(status: .found, headers: ["location": "/users/\(segments[1])", "content-length": "0"])
        case ("GET", "bytes", 2):
            let n = min(Int(segments[1]) ?? 0, 1 << 20)
            var buffer = ByteBuffer()
            for i in 0..<n { buffer.writeInteger(UInt8(truncatingIfNeeded: i * 7 + 1)) }
            return SimpleResponse(status: .ok, headers: ["content-type": "application/octet-stream"], body: buffer)
        case (_, "echo", 1):
            var out = ByteBuffer()
            out.writeString("{\"method\":\(quoted(method)),\"path\":\(quoted(head.uri)),\"version\":\(quoted("\(head.version)")),\"headers\":{")
            for (i, header) in head.headers.enumerated() {
                if i > 0 { out.writeString(",") }
                out.writeString("\(quoted(header.name.lowercased())):\(quoted(header.value))")
            }
            out.writeString("},\"body\":\(quoted(String(buffer: body)))}")
            return SimpleResponse(status: .ok, headers: ["content-type": "application/json"], body: out)
        default:
            return json(.notFound, "{\"error\":\"no such resource\"}")
        }
    }

    static func quoted(_ text: String) -> String {
        var buffer = ByteBuffer()
        JSONWriter.writeString(text, into: &buffer)
        return String(buffer: buffer)
    }

    static func json(_ status: HTTPResponseStatus, _ body: String) -> SimpleResponse {
        SimpleResponse(status: status, headers: ["content-type": "application/json"], body: ByteBuffer(string: body))
    }

    func json(_ status: HTTPResponseStatus, _ body: String) -> SimpleResponse { Self.json(status, body) }
}
