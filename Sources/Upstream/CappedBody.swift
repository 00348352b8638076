import NIOCore

extension ByteBuffer {
    /// Appends what fits under `limit` readable bytes; returns false when bytes had to be dropped.
    /// Both transports capture response bodies through this (`max_response_bytes`), after
    /// `makeRoom(declared:limit:)` when `mustGrow(for:)`.
    mutating func writeCapped(_ bytes: UnsafeBufferPointer<UInt8>, limit: Int) -> Bool {
        if capacity == 0 && !bytes.isEmpty {
            // The first bytes of a body get storage of their size at once: writing into the
            // empty buffer copied its (shared, empty) storage first, about 900 instructions an item.
            self = ByteBufferAllocator().buffer(capacity: Swift.min(bytes.count, Swift.max(limit, 0)))
        }
        let room = limit - readableBytes
        if bytes.count <= room {
            writeBytes(bytes)
            return true
        }
        if room > 0 { writeBytes(UnsafeBufferPointer(rebasing: bytes[0..<room])) }
        return false
    }

    /// Whether writing `count` more bytes of a body already begun must grow its storage: then
    /// the engine looks up the answer's Content-Length for `makeRoom` (not for every chunk; a
    /// closure asking for it cost a retain and a release per item).
    func mustGrow(for count: Int) -> Bool {
        capacity != 0 && count > writableBytes
    }

    /// Room for the rest of a body `declared` long (up to `limit`) at once: grown by doubling,
    /// a 1 MB body was copied five times, old and new storage held together at each step.
    mutating func makeRoom(declared: Int?, limit: Int) {
        guard let declared else { return }
        let wanted = Swift.min(declared, limit) - readableBytes
        if wanted > writableBytes { reserveCapacity(minimumWritableBytes: wanted) }
    }
}
