import CNGHTTP2

/// Header fields laid out for `nghttp2_submit_request`: every name and value in one buffer, and
/// where each lies. The buffer is allocated by hand so the `nghttp2_nv` pointers into it stay
/// valid from `entries` until the next `add` (nghttp2 copies them during the submit). Appending
/// costs a bounds check and a copy, not the uniqueness checks of an array (issue 13).
final class HeaderFieldBytes {
    private var base: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private var used = 0
    /// Name offset and length, value offset and length, nghttp2 flags.
    private var spans: [(name: Int, nameLength: Int, value: Int, valueLength: Int, flags: UInt8)] = []

    init(capacity: Int = 1024) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
        spans.reserveCapacity(16)
    }

    deinit { base.deallocate() }

    /// Fields added so far.
    var count: Int { spans.count }

    func removeAll() {
        used = 0
        spans.removeAll(keepingCapacity: true)
    }

    /// `lowercase`: the name is lowered (HTTP/2 requires lower-case names; items may send any case).
    /// `unique`: the value differs for every request, so HPACK sends it never indexed.
    /// `valueTail`: more of the value, written right after `value` (the parts of a request id).
    func add(_ name: String, _ value: String, _ valueTail: String? = nil, lowercase: Bool = false, unique: Bool = false) {
        let nameAt = used
        append(name)
        if lowercase {
            for i in nameAt..<used { base[i] = HTTPSyntax.lowercased(base[i]) }
        }
        let valueAt = used
        append(value)
        if let valueTail { append(valueTail) }
        spans.append((nameAt, valueAt - nameAt, valueAt, used - valueAt,
                      UInt8(unique ? NGHTTP2_NV_FLAG_NO_INDEX.rawValue : NGHTTP2_NV_FLAG_NONE.rawValue)))
    }

    /// The fields in `range` (all by default) as nghttp2 takes them, pointing into this buffer.
    func entries(into nva: inout [nghttp2_nv], range: Range<Int>? = nil) {
        for span in spans[range ?? spans.indices] {
            nva.append(nghttp2_nv(name: base + span.name, value: base + span.value, namelen: span.nameLength,
                                  valuelen: span.valueLength, flags: span.flags))
        }
    }

    private func append(_ text: String) {
        // Read in place, as `withUTF8Bytes` reads (a local copy for `withUTF8` cost a retain and
        // a release per field). Spelled out here: through the helper this path measured 150
        // instructions an item more (issue 13).
        if text.utf8.withContiguousStorageIfAvailable({ append(bytes: $0) }) == nil {
            var text = text
            text.withUTF8 { append(bytes: $0) }
        }
    }

    private func append(bytes: UnsafeBufferPointer<UInt8>) {
        if used + bytes.count > capacity { grow(to: used + bytes.count) }
        if let source = bytes.baseAddress { (base + used).update(from: source, count: bytes.count) }
        used += bytes.count
    }

    private func grow(to needed: Int) {
        var size = capacity * 2
        while size < needed { size *= 2 }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: size)
        bigger.update(from: base, count: used)
        base.deallocate()
        base = bigger
        capacity = size
    }
}
