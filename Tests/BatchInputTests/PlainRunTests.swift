import Testing
import Codecs

/// The reference, a byte at a time.
private func reference(_ bytes: [UInt8], from start: Int, stops: (UInt8, UInt8, UInt8, UInt8), nonASCII: Bool) -> Int {
    var j = start
    while j < bytes.count {
        let b = bytes[j]
        if b < 0x20 || b == stops.0 || b == stops.1 || b == stops.2 || b == stops.3 || (nonASCII && b >= 0x80) { return j }
        j += 1
    }
    return j
}

/// Every length up to 40, every start, every position of one stop byte among plain ones (and
/// runs with several, so a borrow across bytes is exercised), against the byte-at-a-time reference.
@Test func aPlainRunEndsAtTheFirstByteThatNeedsWorkWhereverItIs() {
    let sets: [((UInt8, UInt8, UInt8, UInt8), String)] = [(PlainRun.json, "json"), (PlainRun.xmlText, "xml text"),
                                                          (PlainRun.xmlAttribute, "xml attribute")]
    let specials: [UInt8] = [0x00, 0x01, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x21, 0x22, 0x23, 0x26, 0x3C, 0x3E, 0x3F, 0x5B, 0x5C,
                             0x5D, 0x7E, 0x7F, 0x80, 0xA0, 0xC3, 0xFF]
    var generator = Xorshift(seed: 0x5EAF)
    // Bytes no stop set stops at (0x20–0x7E but `"`, `\`, `&`, `<`, `>`).
    let plain = (UInt8(0x20)...0x7E).filter { ![0x22, 0x5C, 0x26, 0x3C, 0x3E].contains($0) }
    for (stops, name) in sets {
        for nonASCII in [false, true] {
            for length in 0...40 {
                for position in 0..<max(length, 1) {
                    for special in specials {
                        // Plain bytes before the stop, each of them different: a false mark on any
                        // plain byte would end the run early.
                        var bytes = (0..<length).map { _ in plain[Int(generator.next() % UInt64(plain.count))] }
                        if position < length { bytes[position] = special }
                        // Some noise after the stop: later marks must never win over the first.
                        for k in stride(from: position + 1, to: length, by: 3) { bytes[k] = specials[Int(generator.next() % UInt64(specials.count))] }
                        for start in Set([0, min(position, length), min(1, length)]) {
                            let got = bytes.withUnsafeBufferPointer { PlainRun.end(in: $0, from: start, stops: stops, stopAtNonASCII: nonASCII) }
                            let want = reference(bytes, from: start, stops: stops, nonASCII: nonASCII)
                            #expect(got == want, "\(name) nonASCII=\(nonASCII) \(bytes) from \(start)")
                            if got != want { return }
                        }
                    }
                }
            }
        }
    }
}

/// A small deterministic generator: the test sees the same bytes in every run.
private struct Xorshift {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}
