import NIOCore

extension ByteBuffer {
    /// Appends what fits under `limit` readable bytes; returns false when bytes had to be dropped.
    /// Both transports capture response bodies through this (`max_response_bytes`).
    /// `declaredLength` (the answer's Content-Length) is asked only when the storage must grow.
    mutating func writeCapped(_ bytes: UnsafeBufferPointer<UInt8>, limit: Int, declaredLength: () -> Int?) -> Bool {
        if capacity == 0 && !bytes.isEmpty {
            // The first bytes of a body get storage of their size at once: writing into the
            // empty buffer copied its (shared, empty) storage first, about 900 instructions an item.
            self = ByteBufferAllocator().buffer(capacity: Swift.min(bytes.count, Swift.max(limit, 0)))
        } else if bytes.count > writableBytes, let declared = declaredLength() {
            // Room for the rest of the declared body at once (up to the limit): grown by doubling,
            // a body held up to twice its size (a suspended client's items held twice the bound
            // the README gives), and was copied at every step.
            let wanted = Swift.min(declared, limit) - readableBytes
            if wanted > writableBytes { reserveCapacity(minimumWritableBytes: wanted) }
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
