import NIOCore

/// Writes JSON text into bytes: string escaping per RFC 8259, no Foundation on the hot path.
public enum JSONWriter {
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    public static func write(_ value: JSONValue, into out: inout [UInt8]) {
        var buffer = ByteBuffer()
        write(value, into: &buffer)
        out.append(contentsOf: buffer.readableBytesView)
    }

    public static func write(_ value: JSONValue, into out: inout ByteBuffer) {
        switch value {
        case .null: out.writeStaticString("null")
        case .bool(let b): b ? out.writeStaticString("true") : out.writeStaticString("false")
        case .number(let n): out.writeString(n)
        case .string(let s): writeString(s, into: &out)
        case .array(let elements):
            out.writeInteger(UInt8(ascii: "["))
            for (i, element) in elements.enumerated() {
                if i > 0 { out.writeInteger(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            out.writeInteger(UInt8(ascii: "{"))
            for (i, member) in members.enumerated() {
                if i > 0 { out.writeInteger(UInt8(ascii: ",")) }
                writeString(member.key, into: &out)
                out.writeInteger(UInt8(ascii: ":"))
                write(member.value, into: &out)
            }
            out.writeInteger(UInt8(ascii: "}"))
        }
    }

    /// A JSON string literal, quotes included.
    public static func writeString(_ string: String, into out: inout ByteBuffer) {
        var string = string
        string.withUTF8 { writeString(bytes: $0, into: &out) }
    }

    /// A JSON string literal from UTF-8 bytes (which must be valid UTF-8). A string that needs
    /// no escape, as ids, hrefs and most header values, goes in with one write: each ByteBuffer
    /// call costs its own checks, and this runs several times per item (issue 13).
    public static func writeString(bytes: UnsafeBufferPointer<UInt8>, into out: inout ByteBuffer) {
        guard let first = bytes.firstIndex(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) else {
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: bytes.count + 2) { raw in
                raw[0] = UInt8(ascii: "\"")
                if let base = bytes.baseAddress, bytes.count > 0 {
                    (raw.baseAddress! + 1).copyMemory(from: base, byteCount: bytes.count)
                }
                raw[bytes.count + 1] = UInt8(ascii: "\"")
                return bytes.count + 2
            }
            return
        }
        out.writeInteger(UInt8(ascii: "\""))
        var runStart = 0
        for i in first..<bytes.count {
            let byte = bytes[i]
            guard byte < 0x20 || byte == 0x22 || byte == 0x5C else { continue }
            if runStart < i { out.writeBytes(UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
            runStart = i + 1
            switch byte {
            case 0x22: out.writeStaticString("\\\"")
            case 0x5C: out.writeStaticString("\\\\")
            case 0x0A: out.writeStaticString("\\n")
            case 0x0D: out.writeStaticString("\\r")
            case 0x09: out.writeStaticString("\\t")
            default:
                out.writeStaticString("\\u00")
                out.writeInteger(hex[Int(byte >> 4)])
                out.writeInteger(hex[Int(byte & 0x0F)])
            }
        }
        if runStart < bytes.count { out.writeBytes(UnsafeBufferPointer(rebasing: bytes[runStart..<bytes.count])) }
        out.writeInteger(UInt8(ascii: "\""))
    }

    /// A non-negative integer's decimal digits, without making a String of it.
    public static func writeDecimal(_ value: Int, into out: inout ByteBuffer) {
        guard value >= 0 else {
            out.writeString(String(value))
            return
        }
        var digits = 1
        var rest = value / 10
        while rest > 0 { digits += 1; rest /= 10 }
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: digits) { raw in
            var v = value
            for i in stride(from: digits - 1, through: 0, by: -1) {
                raw[i] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            }
            return digits
        }
    }
}
