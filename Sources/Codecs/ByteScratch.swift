import NIOCore

/// Bytes gathered for a single write into a `ByteBuffer`: the JSON 207 builds each item's
/// object here first. An append is a bounds check and a copy, where an `Array` append costs
/// about a hundred instructions in uniqueness and capacity checks and a `ByteBuffer` write over
/// two hundred (issue 13). One owner, reused: `removeAll` keeps the storage.
public final class ByteScratch: ByteOutput {
    @usableFromInline var base: UnsafeMutableRawPointer
    @usableFromInline var capacity: Int
    @usableFromInline var used = 0
    /// Bytes gathered so far.
    public var count: Int { used }

    public init(capacity: Int = 1024) {
        self.capacity = max(capacity, 16)
        base = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 1)
    }

    deinit { base.deallocate() }

    /// What was gathered, valid until the next append.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: used) }

    /// Empties it. Storage grown past 64 KiB by a large item (an escaped body) is given back,
    /// so that one large answer does not stay held for the rest of the batch.
    public func removeAll() {
        used = 0
        if capacity > Self.keptCapacity {
            base.deallocate()
            capacity = Self.keptCapacity
            base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 1)
        }
    }

    private static let keptCapacity = 64 << 10

    /// Writes what was gathered into `buffer` and empties it.
    public func move(into buffer: inout ByteBuffer) {
        buffer.writeBytes(bytes)
        removeAll()
    }

    /// Bytes of storage held now.
    public var storageSize: Int { capacity }

    @inlinable
    public func appendByte(_ byte: UInt8) {
        if used == capacity { grow(to: used + 1) }
        base.storeBytes(of: byte, toByteOffset: used, as: UInt8.self)
        used += 1
    }

    @inlinable
    public func appendBytes(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress else { return }
        if used + bytes.count > capacity { grow(to: used + bytes.count) }
        (base + used).copyMemory(from: source, byteCount: bytes.count)
        used += bytes.count
    }

    @inlinable
    public func appendStatic(_ text: StaticString) {
        appendBytes(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    /// Up to `maximum` bytes written in place through a pointer; `body` returns how many it wrote.
    @inlinable
    public func append(upTo maximum: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        if used + maximum > capacity { grow(to: used + maximum) }
        let written = body(UnsafeMutableRawBufferPointer(start: base + used, count: maximum))
        precondition(written >= 0 && written <= maximum, "wrote more than it asked room for")
        used += written
    }

    @usableFromInline
    func grow(to needed: Int) {
        var size = capacity * 2
        while size < needed { size *= 2 }
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 1)
        bigger.copyMemory(from: base, byteCount: used)
        base.deallocate()
        base = bigger
        capacity = size
    }
}
