import TextBytes
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// An upstream response's header fields, in arrival order, packed into one byte array: per field
/// a little-endian `UInt32` name length and value length, then the name's and the value's bytes.
///
/// One allocation per response, filled by copying bytes, freed without visiting each field: an
/// array of `(name: String, value: String)` cost a retain per field to fill and a generic tuple
/// destroy per field to free, about 3,000 instructions per item (issue 13). Names are stored
/// lower-case (both engines deliver them so); the bytes are always valid UTF-8 (a value that is
/// not is stored as `String(decoding:)` repairs it), so a writer may copy them as they are.
/// Sendable as a value: its storage is never written while shared (copy on write), though
/// `ManagedBuffer`, its storage's superclass, is not Sendable itself.
public struct HeaderFields: @unchecked Sendable, Sequence, ExpressibleByArrayLiteral {
    /// Nil until the first field (or a reservation): Sheaf's own outcomes carry none.
    @usableFromInline var storage: HeaderStorage?
    /// Number of fields.
    public private(set) var count = 0

    public init() {}

    /// Fields given as strings (tests, Sheaf's own answers); names are lower-cased.
    public init<S: Sequence>(_ fields: S) where S.Element == (name: String, value: String) {
        for field in fields { append(name: field.name, value: field.value) }
    }

    public init(arrayLiteral elements: (name: String, value: String)...) {
        self.init(elements)
    }

    public var isEmpty: Bool { count == 0 }

    /// Room for `byteCount` bytes of fields (8 per field plus its name and value) before growing.
    public mutating func reserveCapacity(_ byteCount: Int) {
        makeRoom(for: Swift.max(0, byteCount - (storage?.header.used ?? 0)))
    }

    /// Forgets every field, keeping the storage (a 1xx answer's fields before the final one's).
    public mutating func removeAll() {
        count = 0
        guard storage != nil else { return }
        if isKnownUniquelyReferenced(&storage) { storage!.header.used = 0 } else { storage = nil }
    }

    /// Appends a field from an engine's bytes, its value `repaired` when it holds anything but
    /// printable ASCII. `lowercasingName`: the name is lowered while it is copied (HTTP/1.1
    /// names come in any case; HTTP/2's are lower-case already).
    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>,
                                lowercasingName: Bool = false) {
        guard Self.isASCII(name), Self.isPrintable(value) else {
            // Rare (obs-text, a tab, a control byte): as Strings they are repaired, so the
            // stored bytes stay valid UTF-8, and controls become spaces (`repaired`).
            let name = String(decoding: name, as: UTF8.self)
            name.withUTF8Bytes { n in Self.repaired(value) { v in appendValid(name: n, value: v, lowercasingName: lowercasingName) } }
            return
        }
        appendValid(name: name, value: value, lowercasingName: lowercasingName)
    }

    /// `value` as valid UTF-8 whose control bytes but tab are spaces: RFC 9110 §5.5 has a
    /// recipient replace CR and NUL so (libcurl passes a bare CR on, and the 207 would carry it
    /// to clients that read it as a line's end); the other controls go alike.
    private static func repaired(_ value: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        var bytes = isASCII(value) ? Array(value) : Array(String(decoding: value, as: UTF8.self).utf8)
        for i in bytes.indices where (bytes[i] < 0x20 && bytes[i] != 9) || bytes[i] == 0x7F { bytes[i] = 32 }
        bytes.withUnsafeBufferPointer(body)
    }

    private mutating func appendValid(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>,
                                      lowercasingName: Bool) {
        let size = 8 + name.count + value.count
        makeRoom(for: size)
        storage!.withUnsafeMutablePointers { header, bytes in
            let field = UnsafeMutableRawPointer(bytes + header.pointee.used)
            field.storeBytes(of: UInt32(truncatingIfNeeded: name.count).littleEndian, as: UInt32.self)
            field.storeBytes(of: UInt32(truncatingIfNeeded: value.count).littleEndian, toByteOffset: 4, as: UInt32.self)
            let nameStart = (field + 8).assumingMemoryBound(to: UInt8.self)
            if let base = name.baseAddress { nameStart.update(from: base, count: name.count) }
            if lowercasingName {
                for i in 0..<name.count { nameStart[i] = HTTPSyntax.lowercased(nameStart[i]) }
            }
            if let base = value.baseAddress { (nameStart + name.count).update(from: base, count: value.count) }
            header.pointee.used += size
        }
        count += 1
    }

    /// Goes on with the last field's value: a space, then `continuation` (an HTTP/1.1 obs-fold
    /// line, RFC 9112 §5.2). Rare, so the last field is found by walking the fields.
    public mutating func continueLastValue(_ continuation: UnsafeBufferPointer<UInt8>) {
        guard count > 0 else { return }
        guard Self.isPrintable(continuation) else {
            // Repaired as `append` repairs a value.
            Self.repaired(continuation) { continueLastValidValue($0) }
            return
        }
        continueLastValidValue(continuation)
    }

    private mutating func continueLastValidValue(_ continuation: UnsafeBufferPointer<UInt8>) {
        makeRoom(for: 1 + continuation.count)
        let fields = count
        storage!.withUnsafeMutablePointers { header, bytes in
            var offset = 0, last = 0
            for _ in 0..<fields {
                last = offset
                let raw = UnsafeRawPointer(bytes + offset)
                offset += 8 + Int(UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self)))
                    + Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            }
            let field = UnsafeMutableRawPointer(bytes + last)
            let valueCount = Int(UInt32(littleEndian: field.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            field.storeBytes(of: UInt32(truncatingIfNeeded: valueCount + 1 + continuation.count).littleEndian, toByteOffset: 4, as: UInt32.self)
            let end = bytes + header.pointee.used
            end.pointee = 32
            if let base = continuation.baseAddress { (end + 1).update(from: base, count: continuation.count) }
            header.pointee.used += 1 + continuation.count
        }
    }

    /// Makes the storage this value's own with room for `size` more bytes. Growing doubles the
    /// capacity (appends stay amortized O(1)); a copy for writing keeps it. Uniqueness is checked
    /// on the stored reference alone: a local binding of it is a second reference (in unoptimized
    /// builds, and in some optimized ones), and every append then copied into twice the space.
    private mutating func makeRoom(for size: Int) {
        // The common case first, with one read of the header: appends are per field per item.
        if isKnownUniquelyReferenced(&storage) {
            let header = storage.unsafelyUnwrapped.header
            if header.capacity - header.used >= size { return }
        }
        let used = storage?.header.used ?? 0
        let capacity = storage?.header.capacity ?? 0
        let fits = capacity - used >= size
        let fresh = HeaderStorage.make(capacity: fits ? capacity : Swift.max(used + size, 2 * capacity, 64))
        if let old = storage, used > 0 {
            old.withUnsafeMutablePointerToElements { old in
                fresh.withUnsafeMutablePointerToElements { new in new.update(from: old, count: used) }
            }
        }
        fresh.header.used = used
        storage = fresh
    }

    /// Appends a field given as strings; the name is lower-cased.
    /// Strings are valid UTF-8 already, and Sheaf's own values are kept as given: only what an
    /// engine read from an upstream has its control bytes replaced.
    public mutating func append(name: String, value: String) {
        name.withUTF8Bytes { n in value.withUTF8Bytes { v in appendValid(name: n, value: v, lowercasingName: true) } }
    }

    /// The value of the first field named `name` (lower-case), or nil.
    public func first(name: String) -> String? {
        name.withUTF8Bytes { wanted in withFirst(wanted) { $0.map { String(decoding: $0, as: UTF8.self) } } }
    }

    /// `first(name:)` for a name known when compiling (no String made of the name).
    public func first(_ name: StaticString) -> String? {
        withFirst(name) { $0.map { String(decoding: $0, as: UTF8.self) } }
    }

    /// Calls `body` with the bytes of the first value named `name` (lower-case), or nil; they
    /// are valid only inside it. Reads a value without making a String of it.
    @inlinable
    public func withFirst<R>(_ name: StaticString, _ body: (UnsafeBufferPointer<UInt8>?) throws -> R) rethrows -> R {
        try withFirst(UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), body)
    }

    @inlinable
    func withFirst<R>(_ name: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>?) throws -> R) rethrows -> R {
        try withUnsafeFields { fields in
            for field in fields where field.isNamed(name) { return try body(field.value) }
            return try body(nil)
        }
    }

    /// The first `content-length` as a number, when it is one (digits only, at most 18 of them).
    public var contentLength: Int? {
        withFirst("content-length") { value -> Int? in
            guard let value, !value.isEmpty, value.count <= 18 else { return nil }
            var number = 0
            for byte in value {
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
                number = number * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return number
        }
    }

    /// Whether a field is named `name` (lower-case).
    public func contains(_ name: StaticString) -> Bool {
        withFirst(name) { $0 != nil }
    }

    /// Calls `body` with a view of the fields' bytes, valid only inside it.
    @inlinable
    public func withUnsafeFields<R>(_ body: (UnsafeFields) throws -> R) rethrows -> R {
        guard let storage else { return try body(UnsafeFields(bytes: UnsafeBufferPointer(start: nil, count: 0))) }
        return try storage.withUnsafeMutablePointers { header, bytes in
            try body(UnsafeFields(bytes: UnsafeBufferPointer(start: bytes, count: header.pointee.used)))
        }
    }

    /// The fields as strings, in order (tests and cold paths; a hot path reads `withUnsafeFields`).
    public func makeIterator() -> Array<(name: String, value: String)>.Iterator {
        withUnsafeFields { fields in fields.map { ($0.nameString, $0.valueString) } }.makeIterator()
    }

    /// The fields of a `HeaderFields`, as bytes inside its storage.
    public struct UnsafeFields: Sequence {
        @usableFromInline let bytes: UnsafeBufferPointer<UInt8>

        @inlinable
        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        @inlinable
        public func makeIterator() -> Iterator { Iterator(bytes: bytes, offset: 0) }

        /// The fields from `field` on (itself included).
        @inlinable
        public func starting(at field: Field) -> Iterator { Iterator(bytes: bytes, offset: field.offset) }

        /// Whether a field before `field` has its name.
        @inlinable
        public func nameAppearsBefore(_ field: Field) -> Bool {
            var iterator = makeIterator()
            while let earlier = iterator.next(), earlier.offset < field.offset {
                if earlier.isNamed(field.name) { return true }
            }
            return false
        }

        public struct Iterator: IteratorProtocol {
            @usableFromInline let bytes: UnsafeBufferPointer<UInt8>
            @usableFromInline var offset: Int

            @inlinable
            init(bytes: UnsafeBufferPointer<UInt8>, offset: Int) {
                self.bytes = bytes
                self.offset = offset
            }

            @inlinable
            public mutating func next() -> Field? {
                guard offset < bytes.count, let base = bytes.baseAddress else { return nil }
                let raw = UnsafeRawPointer(base + offset)
                let nameCount = Int(UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self)))
                let valueCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
                let name = UnsafeBufferPointer(start: base + offset + 8, count: nameCount)
                let value = UnsafeBufferPointer(start: base + offset + 8 + nameCount, count: valueCount)
                let field = Field(name: name, value: value, offset: offset)
                offset += 8 + nameCount + valueCount
                return field
            }
        }
    }

    /// One field's bytes, valid only inside the `withUnsafeFields` call that produced it.
    public struct Field {
        public let name: UnsafeBufferPointer<UInt8>
        public let value: UnsafeBufferPointer<UInt8>
        @usableFromInline let offset: Int

        @inlinable
        init(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, offset: Int) {
            self.name = name
            self.value = value
            self.offset = offset
        }

        /// Whether the name is `lowercase`'s bytes.
        @inlinable
        public func isNamed(_ lowercase: UnsafeBufferPointer<UInt8>) -> Bool {
            name.count == lowercase.count && (name.count == 0 || memcmp(name.baseAddress!, lowercase.baseAddress!, name.count) == 0)
        }

        @inlinable
        public func isNamed(_ lowercase: StaticString) -> Bool {
            isNamed(UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount))
        }

        public var nameString: String { String(decoding: name, as: UTF8.self) }
        public var valueString: String { String(decoding: value, as: UTF8.self) }
    }

    @inline(__always)
    /// Every byte is in 0x20–0x7E. One pass of or-ed arithmetic the compiler vectorizes, as
    /// `isASCII`'s: `byte + 1` sets the top bit from 0x7F up, `byte - 0x20` below 0x20.
    private static func isPrintable(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var any: UInt8 = 0
        for byte in bytes { any |= (byte &+ 1) | (byte &- 0x20) }
        return any < 0x80
    }

    private static func isASCII(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var any: UInt8 = 0
        for byte in bytes { any |= byte }
        return any < 0x80
    }
}

extension HeaderFields: CustomStringConvertible {
    public var description: String { "\(Array(self))" }
}

/// The bytes behind a `HeaderFields`: one allocation, its byte count and capacity in front.
/// Shared between copies and copied before a write when shared (`HeaderFields.makeRoom`).
@usableFromInline
final class HeaderStorage: ManagedBuffer<HeaderStorage.Header, UInt8> {
    @usableFromInline
    struct Header {
        @usableFromInline var used: Int
        @usableFromInline var capacity: Int
    }

    static func make(capacity: Int) -> HeaderStorage {
        let buffer = create(minimumCapacity: capacity) { _ in Header(used: 0, capacity: capacity) }
        return unsafeDowncast(buffer, to: HeaderStorage.self)
    }
}
