import Testing
@testable import Upstream

private final class Box {
    let id: Int32
    init(_ id: Int32) { self.id = id }
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

/// The table against `Dictionary` over a connection's life: ids rise by two, answers come back
/// out of order, some streams are reset; and over arbitrary ids that collide on purpose.
@Test(arguments: [false, true])
func theStreamTableAgreesWithADictionary(arbitraryIDs: Bool) {
    var table = StreamTable<Box>(capacity: 4)
    var reference: [Int32: Box] = [:]
    var random = SplitMix(state: arbitraryIDs ? 7 : 3)
    var nextID: Int32 = 1
    for step in 0..<40_000 {
        let open = Array(reference.keys)
        if open.isEmpty || (random.next(100) < 52 && open.count < 300) {
            let id: Int32
            if arbitraryIDs {
                // Ids sharing their home slot, and ids already open (replaced).
                id = Int32(1 + random.next(64) * 64 + random.next(2))
            } else {
                id = nextID
                nextID += 2
            }
            let box = Box(id)
            table.insert(box, for: id)
            reference[id] = box
        } else {
            let id = random.next(10) == 0 ? Int32(random.next(5000) * 2 + 1) : open[random.next(open.count)]
            #expect(table.removeValue(for: id) === reference.removeValue(forKey: id), "step \(step), id \(id)")
        }
        #expect(table.count == reference.count)
        if step % 97 == 0 {
            for (id, box) in reference { #expect(table[id] === box, "step \(step), id \(id)") }
            #expect(table.sortedByID.map(\.id) == reference.keys.sorted())
            var seen = 0
            table.forEach { box in
                seen += 1
                #expect(reference[box.id] === box)
            }
            #expect(seen == reference.count)
        }
    }
    #expect(table[0] == nil && table[-1] == nil)
    table.removeAll()
    #expect(table.isEmpty && table.sortedByID.isEmpty)
    for (id, _) in reference { #expect(table[id] == nil) }
}
