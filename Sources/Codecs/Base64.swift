import NIOCore

/// RFC 4648 base64: binary upstream bodies inside a 207, binary item bodies in an XML batch.
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ buffer: ByteBuffer) -> String {
        buffer.withUnsafeReadableBytes { raw in
            var out: [UInt8] = []
            out.reserveCapacity((raw.count + 2) / 3 * 4)
            var i = 0
            while i + 2 < raw.count {
                let n = UInt32(raw[i]) << 16 | UInt32(raw[i + 1]) << 8 | UInt32(raw[i + 2])
                out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
                out.append(alphabet[Int(n >> 6 & 63)]); out.append(alphabet[Int(n & 63)])
                i += 3
            }
            let rest = raw.count - i
            if rest > 0 {
                var n = UInt32(raw[i]) << 16
                if rest == 2 { n |= UInt32(raw[i + 1]) << 8 }
                out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
                out.append(rest == 2 ? alphabet[Int(n >> 6 & 63)] : UInt8(ascii: "="))
                out.append(UInt8(ascii: "="))
            }
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// Decodes padded base64. ASCII white space is skipped (a wrapped body has line breaks);
    /// anything else outside the alphabet, padding that is misplaced or missing, or data after
    /// the padding makes it nil, never a silently shorter result.
    public static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count / 4 * 3)
        var group: UInt32 = 0
        var count = 0
        var padding = 0
        for byte in text.utf8 {
            let value: UInt32
            switch byte {
            case 0x20, 0x09, 0x0A, 0x0D: continue
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+"): value = 62
            case UInt8(ascii: "/"): value = 63
            case UInt8(ascii: "="):
                // Padding fills the last one or two places of a group of four, nothing else.
                guard count >= 2 else { return nil }
                padding += 1
                value = 0
            default: return nil
            }
            if padding > 0 && byte != UInt8(ascii: "=") { return nil }
            group = group << 6 | value
            count += 1
            if count == 4 {
                out.append(UInt8(group >> 16))
                if padding < 2 { out.append(UInt8(group >> 8 & 0xFF)) }
                if padding < 1 { out.append(UInt8(group & 0xFF)) }
                group = 0
                count = 0
            }
        }
        guard count == 0 else { return nil }
        return out
    }
}
