import NIOCore
import TextBytes

/// Where `JSONWriter` (and the XML 207's writer) write: a `ByteBuffer`, or a `ByteScratch` that
/// gathers one item's bytes before a single `ByteBuffer` write. Every `ByteBuffer` call costs its own uniqueness and
/// capacity checks (about 250 instructions for a few bytes, issue 13), an array append a few dozen.
public protocol ByteOutput {
    mutating func appendByte(_ byte: UInt8)
    mutating func appendBytes(_ bytes: UnsafeRawBufferPointer)
    /// Up to `maximum` bytes written in place through a pointer; `body` returns how many it wrote.
    mutating func append(upTo maximum: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int)
}

extension ByteOutput {
    @inlinable
    public mutating func appendStatic(_ text: StaticString) {
        appendBytes(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    @inlinable
    public mutating func appendUTF8(_ text: String) {
        text.withUTF8Bytes { appendBytes(UnsafeRawBufferPointer($0)) }
    }
}

extension ByteBuffer: ByteOutput {
    @inlinable
    public mutating func appendByte(_ byte: UInt8) { writeInteger(byte) }
    @inlinable
    public mutating func appendBytes(_ bytes: UnsafeRawBufferPointer) { writeBytes(bytes) }
    @inlinable
    public mutating func append(upTo maximum: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: maximum) { body(UnsafeMutableRawBufferPointer(rebasing: $0[..<maximum])) }
    }
}

extension Array: ByteOutput where Element == UInt8 {
    @inlinable
    public mutating func appendByte(_ byte: UInt8) { append(byte) }
    @inlinable
    public mutating func appendBytes(_ bytes: UnsafeRawBufferPointer) {
        // Typed, so the append is one copy: a raw buffer pointer is appended byte by byte.
        append(contentsOf: bytes.assumingMemoryBound(to: UInt8.self))
    }
    @inlinable
    public mutating func append(upTo maximum: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        let start = count
        append(contentsOf: repeatElement(0, count: maximum))
        let written = withUnsafeMutableBytes { body(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
        removeLast(maximum - written)
    }
}

/// Writes JSON text into bytes: string escaping per RFC 8259, no Foundation on the hot path.
public enum JSONWriter {
    @usableFromInline static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    @inlinable
    public static func write<Out: ByteOutput>(_ value: JSONValue, into out: inout Out) {
        switch value {
        case .null: out.appendStatic("null")
        case .bool(let b): b ? out.appendStatic("true") : out.appendStatic("false")
        case .number(let n): out.appendUTF8(n)
        case .string(let s): writeString(s, into: &out)
        case .array(let elements):
            out.appendByte(UInt8(ascii: "["))
            for (i, element) in elements.enumerated() {
                if i > 0 { out.appendByte(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.appendByte(UInt8(ascii: "]"))
        case .object(let members):
            out.appendByte(UInt8(ascii: "{"))
            for (i, member) in members.enumerated() {
                if i > 0 { out.appendByte(UInt8(ascii: ",")) }
                writeString(member.key, into: &out)
                out.appendByte(UInt8(ascii: ":"))
                write(member.value, into: &out)
            }
            out.appendByte(UInt8(ascii: "}"))
        }
    }

    /// A JSON string literal, quotes included.
    @inlinable
    public static func writeString<Out: ByteOutput>(_ string: String, into out: inout Out) {
        string.withUTF8Bytes { writeString(bytes: $0, into: &out) }
    }

    /// A JSON string literal from UTF-8 bytes (which must be valid UTF-8). A string that needs
    /// no escape, as ids, hrefs and most header values, goes in with one append. U+0085, U+2028
    /// and U+2029 are escaped although JSON allows them raw: readers that split NDJSON on every
    /// line break (Python's `splitlines`) would cut a record at them.
    @inlinable
    public static func writeString<Out: ByteOutput>(bytes: UnsafeBufferPointer<UInt8>, into out: inout Out) {
        out.appendByte(UInt8(ascii: "\""))
        var runStart = 0
        var i = PlainRun.end(in: bytes, from: 0, stops: PlainRun.jsonOutput, stopAtNonASCII: false)
        while i < bytes.count {
            let byte = bytes[i]
            var width = 1
            var lineBreak: (width: Int, escape: StaticString)?
            if byte >= 0x80 {
                // A lead byte of a character that may be a line break; most are not (`—`, `©`).
                lineBreak = unicodeLineBreak(in: UnsafeRawBufferPointer(bytes), at: i)
                guard let lineBreak else {
                    i = PlainRun.end(in: bytes, from: i + 1, stops: PlainRun.jsonOutput, stopAtNonASCII: false)
                    continue
                }
                width = lineBreak.width
            }
            if runStart < i { out.appendBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<i])) }
            runStart = i + width
            switch byte {
            case 0x22: out.appendStatic("\\\"")
            case 0x5C: out.appendStatic("\\\\")
            case 0x0A: out.appendStatic("\\n")
            case 0x0D: out.appendStatic("\\r")
            case 0x09: out.appendStatic("\\t")
            case 0xC2, 0xE2: out.appendStatic(lineBreak!.escape)
            default:
                out.appendStatic("\\u00")
                out.appendByte(hex[Int(byte >> 4)])
                out.appendByte(hex[Int(byte & 0x0F)])
            }
            i = PlainRun.end(in: bytes, from: runStart, stops: PlainRun.jsonOutput, stopAtNonASCII: false)
        }
        if runStart < bytes.count {
            out.appendBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[runStart..<bytes.count]))
        }
        out.appendByte(UInt8(ascii: "\""))
    }

    /// U+0085, U+2028 or U+2029 at `i`: its UTF-8 length and its JSON escape; nil for any other
    /// character. JSON allows them raw, but readers that split lines at every Unicode line break
    /// would cut a record there, so Sheaf's writers escape them.
    @inlinable
    public static func unicodeLineBreak(in bytes: UnsafeRawBufferPointer, at i: Int) -> (width: Int, escape: StaticString)? {
        if bytes[i] == 0xC2, i + 1 < bytes.count, bytes[i + 1] == 0x85 { return (2, "\\u0085") }
        if bytes[i] == 0xE2, i + 2 < bytes.count, bytes[i + 1] == 0x80, bytes[i + 2] & 0xFE == 0xA8 {
            return (3, bytes[i + 2] == 0xA8 ? "\\u2028" : "\\u2029")
        }
        return nil
    }

    /// An integer's decimal digits, without making a String of it.
    @inlinable
    public static func writeDecimal<Out: ByteOutput>(_ value: Int, into out: inout Out) {
        guard value >= 0, value < 1 << 62 else {
            out.appendUTF8(String(value))
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var v = value, start = 20
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            } while v > 0
            out.appendBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(digits)[start..<20]))
        }
    }
}
