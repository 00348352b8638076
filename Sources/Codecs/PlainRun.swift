/// Finds where a run of bytes that a JSON string or XML text carries as they are ends, eight
/// bytes at a time: the writers and the JSON validator stepped through ids, hrefs, header values
/// and upstream bodies byte by byte, at 7–9 instructions a byte (issue 13).
public enum PlainRun {
    /// The bytes a JSON string escapes (besides control characters): `"` and `\`.
    @inlinable public static var json: (UInt8, UInt8, UInt8, UInt8) { (0x22, 0x5C, 0x5C, 0x5C) }
    /// The bytes the JSON writer stops at: `"`, `\`, and the lead bytes of U+0085 (0xC2) and of
    /// U+2028 / U+2029 (0xE2), which it writes escaped (see `JSONWriter.writeString`).
    @inlinable public static var jsonOutput: (UInt8, UInt8, UInt8, UInt8) { (0x22, 0x5C, 0xC2, 0xE2) }
    /// The bytes XML text escapes: `&`, `<` and `>`.
    @inlinable public static var xmlText: (UInt8, UInt8, UInt8, UInt8) { (0x26, 0x3C, 0x3E, 0x3E) }
    /// The bytes an XML attribute value escapes: `&`, `<`, `>` and `"`.
    @inlinable public static var xmlAttribute: (UInt8, UInt8, UInt8, UInt8) { (0x26, 0x3C, 0x3E, 0x22) }

    /// The index of the first byte at or after `start` that is a control character (below 0x20),
    /// one of `stops`, or, when `stopAtNonASCII`, a byte of 0x80 or above; `bytes.count` if none is
    /// (or if `start` is past the end).
    @inlinable
    public static func end(in bytes: UnsafeBufferPointer<UInt8>, from start: Int,
                           stops: (UInt8, UInt8, UInt8, UInt8), stopAtNonASCII: Bool) -> Int {
        let count = bytes.count
        guard let base = bytes.baseAddress, start < count else { return max(start, count) }
        var j = start
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        // A byte's high bit set where the byte is zero. A borrow can only mark bytes after a real
        // zero, so the lowest mark is always exact.
        @inline(__always) func zeros(_ x: UInt64) -> UInt64 { (x &- ones) & ~x & high }
        let a = ones &* UInt64(stops.0), b = ones &* UInt64(stops.1)
        let c = ones &* UInt64(stops.2), d = ones &* UInt64(stops.3)
        while j &+ 8 <= count {
            // The first byte in memory as the lowest, on any machine: borrows run upward, so
            // only then is the lowest mark the first match.
            let word = UInt64(littleEndian: UnsafeRawPointer(base + j).loadUnaligned(as: UInt64.self))
            var marks = ((word &- ones &* 0x20) & ~word & high)  // below 0x20, the same way
                | zeros(word ^ a) | zeros(word ^ b) | zeros(word ^ c) | zeros(word ^ d)
            if stopAtNonASCII { marks |= word & high }
            if marks != 0 { return j &+ (marks.trailingZeroBitCount >> 3) }
            j &+= 8
        }
        while j < count {
            let byte = base[j]
            if byte < 0x20 || byte == stops.0 || byte == stops.1 || byte == stops.2 || byte == stops.3
                || (stopAtNonASCII && byte >= 0x80) { return j }
            j &+= 1
        }
        return j
    }
}
