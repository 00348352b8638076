import Testing
@testable import Upstream

private final class Box {
    let id: Int
    init(_ id: Int) { self.id = id }
}

/// Small deterministic generator: a failure replays the same operations.
private struct SplitMix {
    var state: UInt64
    mutating func next(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }
}

/// The table against `Dictionary`: stream ids that rise by two from 1 (shift 1) and keys that
/// rise by one from 0 (shift 0), answered out of order, some let go early; and arbitrary keys
/// that collide on purpose.
@Test(arguments: [(1, false), (0, false), (1, true), (0, true)])
func theIntKeyTableAgreesWithADictionary(shift: Int, arbitraryKeys: Bool) {
    var table = IntKeyTable<Box>(capacity: 4, shift: shift)
    var reference: [Int: Box] = [:]
    var random = SplitMix(state: UInt64(3 + shift + (arbitraryKeys ? 4 : 0)))
    var nextKey = shift == 1 ? 1 : 0
    for step in 0..<40_000 {
        let open = Array(reference.keys)
        if open.isEmpty || (random.next(100) < 52 && open.count < 300) {
            let key: Int
            if arbitraryKeys {
                // Keys sharing their home slot, and keys already present (replaced).
                key = random.next(64) * 64 + random.next(2)
            } else {
                key = nextKey
                nextKey += shift == 1 ? 2 : 1
            }
            let box = Box(key)
            table.insert(box, for: key)
            reference[key] = box
        } else {
            let key = random.next(10) == 0 ? random.next(5000) : open[random.next(open.count)]
            #expect(table.removeValue(for: key) === reference.removeValue(forKey: key), "step \(step), key \(key)")
        }
        #expect(table.count == reference.count)
        if step % 97 == 0 {
            for (key, box) in reference { #expect(table[key] === box, "step \(step), key \(key)") }
            #expect(table.sortedByKey.map(\.key) == reference.keys.sorted())
            var seen = 0
            table.forEach { box in
                seen += 1
                #expect(reference[box.id] === box)
            }
            #expect(seen == reference.count)
        }
    }
    #expect(table[-1] == nil)
    table.removeAll()
    #expect(table.isEmpty && table.sortedByKey.isEmpty)
    for (key, _) in reference { #expect(table[key] == nil) }
    // Emptied, it takes keys again: lower ones than it has seen (looked up before insertion),
    // and a key given twice is replaced, not held twice.
    for key in [100_003, 0, 5, 0] { table.insert(Box(key), for: key) }
    #expect(table.count == 3 && table[0]?.id == 0 && table[5]?.id == 5 && table[100_003]?.id == 100_003)
    #expect(table.removeValue(for: 0)?.id == 0 && table[0] == nil && table.count == 2)
}
