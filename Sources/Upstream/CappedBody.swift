import NIOCore

/// A response body as it arrives, kept up to `max_response_bytes`. Both engines capture bodies
/// through it. It holds no storage until the first bytes: an empty `ByteBuffer()` shares one
/// process-wide storage object, so every item retained and released that one object from both
/// event loops (and the curl thread) while its answer arrived, twice on the HTTP/2 path, an
/// atomic on a contended cache line each time (issue 13). An answer with no body still takes one
/// empty buffer when it settles (`take()`), since `UpstreamResponse.body` is a plain `ByteBuffer`.
struct ResponseBody {
    private var buffer: Optional<ByteBuffer>

    init() {
        buffer = nil
    }

    var readableBytes: Int { buffer?.readableBytes ?? 0 }

    /// Bytes of storage held (none before the first bytes).
    var capacity: Int { buffer?.capacity ?? 0 }

    /// Whether writing `count` more bytes of a body already begun must grow its storage: then
    /// the engine looks up the answer's Content-Length for `makeRoom` (not for every chunk; a
    /// closure asking for it cost a retain and a release per item).
    func mustGrow(for count: Int) -> Bool {
        guard let buffer else { return false }
        return count > buffer.writableBytes
    }

    /// Room for the rest of a body `declared` long (up to `limit`) at once: grown by doubling,
    /// a 1 MB body was copied five times, old and new storage held together at each step.
    mutating func makeRoom(declared: Int?, limit: Int) {
        guard let declared, buffer != nil else { return }
        let wanted = Swift.min(declared, limit) - buffer!.readableBytes
        if wanted > buffer!.writableBytes { buffer!.reserveCapacity(minimumWritableBytes: wanted) }
    }

    /// Appends what fits under `limit` readable bytes; returns false when bytes had to be
    /// dropped. Call `makeRoom(declared:limit:)` first when `mustGrow(for:)`.
    mutating func writeCapped(_ bytes: UnsafeBufferPointer<UInt8>, limit: Int) -> Bool {
        let room = limit - readableBytes
        let kept = Swift.min(bytes.count, Swift.max(room, 0))
        if kept > 0 {
            // The first bytes get storage of their size at once.
            if buffer == nil { buffer = ByteBufferAllocator().buffer(capacity: kept) }
            buffer!.writeBytes(UnsafeBufferPointer(rebasing: bytes[0..<kept]))
        }
        return kept == bytes.count
    }

    /// The body so far, moved out (the exchange is done with it); an empty one if none came.
    mutating func take() -> ByteBuffer {
        buffer.take() ?? ByteBuffer()
    }
}
