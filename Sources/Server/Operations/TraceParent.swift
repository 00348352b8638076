/// A W3C Trace Context `traceparent` header (https://www.w3.org/TR/trace-context/#traceparent-header):
/// version, trace id, parent span id and flags, in lower-case hex. Anything malformed is nil, as
/// the spec asks: the receiver then starts a new trace instead of continuing a broken one.
struct TraceParent: Equatable {
    /// 32 hex digits, not all zero.
    var traceID: String
    /// 16 hex digits, not all zero.
    var parentID: String
    var flags: UInt8

    var sampled: Bool { flags & 1 == 1 }

    init(traceID: String, parentID: String, flags: UInt8) {
        self.traceID = traceID
        self.parentID = parentID
        self.flags = flags
    }

    init?(_ header: String?) {
        guard let header else { return nil }
        let bytes = Array(header.utf8)
        // Version 00 is exactly 55 characters; a later version may append fields after a dash.
        guard bytes.count >= 55, bytes[2] == 0x2D, bytes[35] == 0x2D, bytes[52] == 0x2D,
              let version = Self.hexByte(bytes[0], bytes[1]), version != 0xFF,
              version != 0 || bytes.count == 55, bytes.count == 55 || bytes[55] == 0x2D,
              let flags = Self.hexByte(bytes[53], bytes[54]) else { return nil }
        let trace = bytes[3..<35], parent = bytes[36..<52]
        guard trace.allSatisfy(Self.isLowerHex), parent.allSatisfy(Self.isLowerHex),
              trace.contains(where: { $0 != 0x30 }), parent.contains(where: { $0 != 0x30 }) else { return nil }
        self.traceID = String(decoding: trace, as: UTF8.self)
        self.parentID = String(decoding: parent, as: UTF8.self)
        self.flags = flags
    }

    /// The header value, version 00.
    var header: String {
        let hex = String(flags, radix: 16)
        return "00-\(traceID)-\(parentID)-\(hex.count == 1 ? "0" + hex : hex)"
    }

    private static func isLowerHex(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x61...0x66).contains(byte)
    }

    private static func hexByte(_ high: UInt8, _ low: UInt8) -> UInt8? {
        guard isLowerHex(high), isLowerHex(low) else { return nil }
        func value(_ byte: UInt8) -> UInt8 { byte <= 0x39 ? byte - 0x30 : byte - 0x61 + 10 }
        return value(high) << 4 | value(low)
    }
}
