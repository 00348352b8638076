import NIOCore
import NIOEmbedded
import NIOHTTP1
@testable import Server
import Testing

/// A responder with fixed answers: `/small` reads bodies up to 10 bytes and echoes them.
private struct Stub: HTTPResponder {
    func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision {
        if head.uri == "/small" {
            return .collect(maxBodyBytes: 10) { _, body, writer in
                writer.respond(SimpleResponse(status: .ok, body: body))
            }
        }
        return .respond(SimpleResponse(status: .ok, headers: ["content-type": "text/plain"], body: ByteBuffer(string: "hello")))
    }

    func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        Problem.response(.payloadTooLarge, detail: "more than \(limit) bytes")
    }
}

private func channel(timeout: TimeAmount = .seconds(5)) throws -> (EmbeddedChannel, ConnectionActivity) {
    let activity = ConnectionActivity()
    let channel = EmbeddedChannel(handler: HTTPRequestHandler(responder: Stub(), activity: activity, clientTimeout: timeout))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    return (channel, activity)
}

private func head(_ method: HTTPMethod, _ uri: String, _ headers: HTTPHeaders = [:]) -> HTTPServerRequestPart {
    .head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers))
}

/// Everything written so far: the status, the headers and the body bytes.
private func response(_ channel: EmbeddedChannel) throws -> (HTTPResponseHead?, String, Bool) {
    var head: HTTPResponseHead?
    var body = ""
    var ended = false
    while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
        switch part {
        case .head(let h): head = h
        case .body(.byteBuffer(let b)): body += String(buffer: b)
        case .body: break
        case .end: ended = true
        }
    }
    return (head, body, ended)
}

@Test func collectsTheBodyAndAnswers() throws {
    let (channel, activity) = try channel()
    try channel.writeInbound(head(.POST, "/small"))
    #expect(activity.inProgress == 1)
    try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "12345")))
    try channel.writeInbound(HTTPServerRequestPart.end(nil))
    channel.embeddedEventLoop.run()
    let (h, body, ended) = try response(channel)
    #expect(h?.status == .ok)
    #expect(body == "12345")
    #expect(ended)
    #expect(activity.inProgress == 0)
    #expect(channel.isActive)
}

@Test func aBodyOverTheLimitIs413AndClosesTheConnection() throws {
    let (channel, _) = try channel()
    try channel.writeInbound(head(.POST, "/small"))
    try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "0123456789AB")))
    channel.embeddedEventLoop.run()
    let (h, body, _) = try response(channel)
    #expect(h?.status == .payloadTooLarge)
    #expect(h?.headers["content-type"] == ["application/problem+json"])
    #expect(h?.headers["connection"] == ["close"])
    #expect(body.contains("more than 10 bytes"))
    #expect(!channel.isActive)
}

@Test func aDeclaredContentLengthOverTheLimitIsRefusedBeforeTheBody() throws {
    let (channel, _) = try channel()
    try channel.writeInbound(head(.POST, "/small", ["content-length": "11"]))
    channel.embeddedEventLoop.run()
    #expect(try response(channel).0?.status == .payloadTooLarge)
}

@Test func aBodyThatStopsArrivingIs408() throws {
    let (channel, activity) = try channel(timeout: .seconds(2))
    try channel.writeInbound(head(.POST, "/small", ["content-length": "8"]))
    try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "12")))
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(1900))
    #expect(try response(channel).0 == nil)
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
    let (h, body, _) = try response(channel)
    #expect(h?.status == .requestTimeout)
    #expect(body.contains("did not arrive within 2s"))
    #expect(activity.inProgress == 0)
}

@Test func headGetsGETsHeadersWithoutABody() throws {
    let (channel, _) = try channel()
    try channel.writeInbound(head(.HEAD, "/anything"))
    try channel.writeInbound(HTTPServerRequestPart.end(nil))
    channel.embeddedEventLoop.run()
    let (h, body, ended) = try response(channel)
    #expect(h?.status == .ok)
    #expect(h?.headers["content-length"] == ["5"])
    #expect(body.isEmpty)
    #expect(ended)
}

@Test func idleConnectionsCloseButBusyOnesDoNot() throws {
    let activity = ConnectionActivity()
    let channel = EmbeddedChannel(handler: IdleConnectionCloser(activity: activity))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    activity.started()
    channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
    #expect(channel.isActive)
    activity.finished()
    channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
    #expect(!channel.isActive)
}

@Test func aRequestHeadMustArriveWithinTheClientTimeout() throws {
    let (channel, _) = try channel(timeout: .seconds(3))
    channel.embeddedEventLoop.advanceTime(by: .seconds(2))
    try channel.writeInbound(head(.GET, "/anything"))
    try channel.writeInbound(HTTPServerRequestPart.end(nil))
    channel.embeddedEventLoop.run()
    #expect(try response(channel).0?.status == .ok)
    // The timer starts again after the answer: 2.9 s of silence is fine, 3 s is not.
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(2900))
    #expect(channel.isActive)
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
    #expect(!channel.isActive)
}

/// Two requests in one read (HTTP/1.1 pipelining) through NIO's real HTTP/1 pipeline: the second
/// is handed over while the first one's answer is still being written; both are answered.
@Test(arguments: [
    "GET /x HTTP/1.1\r\nHost: a\r\n\r\nPOST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
])
func pipelinedRequestsAreEachAnswered(requests: String) throws {
    let activity = ConnectionActivity()
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: true)
    try channel.pipeline.syncOperations.addHandler(HTTPRequestHandler(responder: Stub(), activity: activity, clientTimeout: .seconds(5)))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    try channel.writeInbound(ByteBuffer(string: requests))
    var out = ""
    while let chunk = try channel.readOutbound(as: ByteBuffer.self) { out += String(buffer: chunk) }
    #expect(out.components(separatedBy: "HTTP/1.1 200 OK").count == 3, "\(out)")
    #expect(activity.inProgress == 0)
}
