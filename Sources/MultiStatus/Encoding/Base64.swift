import NIOCore

/// RFC 4648 base64, for binary upstream bodies inside a 207.
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
}
