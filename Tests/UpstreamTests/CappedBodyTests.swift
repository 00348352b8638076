import NIOCore
import Testing
@testable import Upstream

private func capped(_ chunks: [String], limit: Int) -> (body: String, whole: Bool) {
    var body = ByteBuffer()
    var whole = true
    for chunk in chunks {
        let fitted = Array(chunk.utf8).withUnsafeBufferPointer { body.writeCapped($0, limit: limit) }
        whole = whole && fitted
    }
    return (String(buffer: body), whole)
}

/// A body is kept up to `max_response_bytes` whatever its chunks: the first chunk (which now
/// gets storage of its own size), later ones that grow it, and a cut inside the first or a later one.
@Test func aBodyIsKeptUpToItsLimitWhateverItsChunks() {
    #expect(capped(["hello"], limit: 100) == ("hello", true))
    #expect(capped(["hel", "lo, ", "world"], limit: 100) == ("hello, world", true))
    #expect(capped(["hello, world"], limit: 5) == ("hello", false))
    #expect(capped(["hel", "lo, world"], limit: 5) == ("hello", false))
    #expect(capped(["hello", "", "!"], limit: 5) == ("hello", false))
    #expect(capped(["", "hi"], limit: 5) == ("hi", true))
    #expect(capped(["x"], limit: 0) == ("", false))
    #expect(capped([String(repeating: "a", count: 70_000), "b"], limit: 1 << 20).body.count == 70_001)
}
