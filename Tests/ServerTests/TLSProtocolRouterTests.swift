import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOTLS
@testable import Server
import Testing

private struct Hello: HTTPResponder {
    func decide(_ head: HTTPRequestHead, from client: ClientConnection) -> HeadDecision {
        .respond(SimpleResponse(status: .ok, headers: ["content-type": "text/plain"], body: ByteBuffer(string: "hello")))
    }

    func tooLarge(_ head: HTTPRequestHead, limit: Int, from client: ClientConnection) -> SimpleResponse {
        SimpleResponse(status: .payloadTooLarge)
    }
}

/// A connection whose TLS handshake is still running (the TLS handler itself is not needed: the
/// router only hears its `handshakeCompleted` event, fired here by hand).
private func handshaking(maxStreams: Int = 256) throws -> EmbeddedChannel {
    let activity = ConnectionActivity()
    let pipeline = FrontPipeline(clientTimeout: .seconds(5), activity: activity, maxStreams: maxStreams) { onHTTP2Stream in
        HTTPRequestHandler(responder: Hello(), activity: activity, clientTimeout: .seconds(5), onHTTP2Stream: onHTTP2Stream)
    }
    let channel = EmbeddedChannel(handler: TLSProtocolRouter(pipeline))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    return channel
}

private func written(_ channel: EmbeddedChannel) throws -> ByteBuffer {
    var all = ByteBuffer()
    while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
    return all
}

@Test(arguments: ["http/1.1", nil] as [String?])
func http1OrNoALPNIsServedAsHTTP1(alpn: String?) throws {
    let channel = try handshaking()
    channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: alpn))
    try channel.writeInbound(ByteBuffer(string: "GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
    channel.embeddedEventLoop.run()
    let answer = String(buffer: try written(channel))
    #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
    #expect(answer.hasSuffix("\r\n\r\nhello"))
    #expect(throws: ChannelPipelineError.notFound) { try channel.pipeline.syncOperations.handler(type: TLSProtocolRouter.self) }
}

@Test func h2IsServedAsHTTP2WithTheFrontSettings() throws {
    let channel = try handshaking(maxStreams: 7)
    channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
    channel.embeddedEventLoop.run()
    // The server's connection preface: a SETTINGS frame (type 4 on stream 0) announcing
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) = 7, as on h2c.
    var frame = try written(channel)
    let head = frame.readBytes(length: 9) ?? []
    #expect(head.count == 9 && head[3] == 4 && head[5...8].allSatisfy { $0 == 0 })
    let length = head.count == 9 ? Int(head[0]) << 16 | Int(head[1]) << 8 | Int(head[2]) : 0
    var settings: [UInt16: UInt32] = [:]
    for _ in 0..<(length / 6) {
        guard let id = frame.readInteger(as: UInt16.self), let value = frame.readInteger(as: UInt32.self) else { break }
        settings[id] = value
    }
    #expect(settings[3] == 7)
    #expect(throws: ChannelPipelineError.notFound) { try channel.pipeline.syncOperations.handler(type: TLSProtocolRouter.self) }
    #expect(try channel.pipeline.syncOperations.handler(type: HTTP2FrontConnectionGuard.self) != nil)
}

@Test func drainingDuringTheHandshakeCloses() throws {
    let channel = try handshaking()
    channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
    channel.embeddedEventLoop.run()
    #expect(!channel.isActive)
}
