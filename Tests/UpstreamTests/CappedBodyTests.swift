import NIOCore
import Testing
@testable import Upstream

private func capped(_ chunks: [String], limit: Int, declared: Int? = nil) -> (body: String, whole: Bool) {
    var body = ResponseBody()
    var whole = true
    for chunk in chunks {
        if body.mustGrow(for: chunk.utf8.count) { body.makeRoom(declared: declared, limit: limit) }
        let fitted = Array(chunk.utf8).withUnsafeBufferPointer { body.writeCapped($0, limit: limit) }
        whole = whole && fitted
    }
    return (String(buffer: body.take()), whole)
}

/// A body is kept up to `max_response_bytes` whatever its chunks: the first chunk (which now
/// gets storage of its own size), later ones that grow it, and a cut inside the first or a later one.
@Test func aBodyIsKeptUpToItsLimitWhateverItsChunks() {
    #expect(capped(["hello"], limit: 100) == ("hello", true))
    // Exactly at the limit is whole; one byte past it is cut.
    #expect(capped(["hello"], limit: 5) == ("hello", true))
    #expect(capped(["hel", "lo"], limit: 5) == ("hello", true))
    #expect(capped(["hel", "lo", ""], limit: 5) == ("hello", true))
    #expect(capped(["hello!"], limit: 5) == ("hello", false))
    #expect(capped(["hel", "lo, ", "world"], limit: 100) == ("hello, world", true))
    #expect(capped(["hello, world"], limit: 5) == ("hello", false))
    #expect(capped(["hel", "lo, world"], limit: 5) == ("hello", false))
    #expect(capped(["hello", "", "!"], limit: 5) == ("hello", false))
    #expect(capped(["", "hi"], limit: 5) == ("hi", true))
    #expect(capped(["x"], limit: 0) == ("", false))
    #expect(capped([String(repeating: "a", count: 70_000), "b"], limit: 1 << 20).body.count == 70_001)
}

/// With a Content-Length, the second chunk makes room for the whole declared body (up to the
/// limit) at once: grown by doubling, a 1 MB body was copied six times on its way, and the old
/// storage and the new were both held at each step.
@Test func aDeclaredLengthSizesTheBodyOnce() {
    var body = ResponseBody()
    let chunk = [UInt8](repeating: 0x61, count: 10_000)
    // Capacities, not addresses: the allocator may grow a block in place (seen under load).
    var capacities = Set<Int>()
    for _ in 0..<100 {
        if body.mustGrow(for: chunk.count) { body.makeRoom(declared: 1_000_000, limit: 1 << 20) }
        _ = chunk.withUnsafeBufferPointer { body.writeCapped($0, limit: 1 << 20) }
        capacities.insert(body.capacity)
    }
    #expect(body.readableBytes == 1_000_000)
    // The first chunk's own storage, then the whole body's.
    #expect(capacities.count == 2, "capacities \(capacities.sorted())")
    // Nothing is held before the first bytes, and an empty body is taken as an empty buffer.
    var empty = ResponseBody()
    #expect(empty.capacity == 0 && empty.readableBytes == 0 && empty.take().readableBytes == 0)
    // Taking moves the body out: the exchange keeps nothing, and a second take is empty.
    var taken = ResponseBody()
    _ = Array("abc".utf8).withUnsafeBufferPointer { taken.writeCapped($0, limit: 10) }
    #expect(String(buffer: taken.take()) == "abc")
    #expect(taken.readableBytes == 0 && taken.capacity == 0 && taken.take().readableBytes == 0)
    // A declared length past the limit reserves the limit only, and a wrong one is only a hint.
    #expect(capped(["ab", "cd", "ef"], limit: 5, declared: 1_000_000) == ("abcde", false))
    #expect(capped(["ab", "cd", "ef"], limit: 100, declared: 3) == ("abcdef", true))
}

@Test func contentLengthIsReadOnlyWhenItIsANumber() {
    func length(_ value: String) -> Int? {
        var fields = HeaderFields()
        fields.append(name: "Content-Length", value: value)
        return fields.contentLength
    }
    #expect(length("1048576") == 1_048_576)
    #expect(length("") == nil && length("12a") == nil && length("-1") == nil && length(String(repeating: "9", count: 19)) == nil)
    #expect(HeaderFields().contentLength == nil)
}
