import NIOCore
import NIOEmbedded
@testable import Server
import Testing

/// What reaches the TLS handler per flush is what it turns into one socket write with one
/// completion: never much more than 64 KiB, however much the handlers above write before flushing.
@Test func writesAreFlushedEvery64KiB() throws {
    let channel = EmbeddedChannel(handler: TLSFlushSlicer())
    let chunk = ByteBuffer(repeating: 0x61, count: 40 << 10)
    var completed = 0
    for _ in 0..<3 {
        let promise = channel.embeddedEventLoop.makePromise(of: Void.self)
        promise.futureResult.whenSuccess { completed += 1 }
        channel.write(chunk, promise: promise)
    }
    // The second write passed 64 KiB: the first two are out, the third waits for a flush.
    #expect(completed == 2)
    #expect(try channel.readOutbound(as: ByteBuffer.self)?.readableBytes == 40 << 10)
    #expect(try channel.readOutbound(as: ByteBuffer.self)?.readableBytes == 40 << 10)
    #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
    channel.flush()
    #expect(completed == 3)
    #expect(try channel.readOutbound(as: ByteBuffer.self)?.readableBytes == 40 << 10)
}
