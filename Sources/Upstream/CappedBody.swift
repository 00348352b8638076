import NIOCore

extension ByteBuffer {
    /// Appends what fits under `limit` readable bytes; returns false when bytes had to be dropped.
    /// Both transports capture response bodies through this (`max_response_bytes`).
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
}
