/// A connection's open streams by stream id, looked up several times per item (every response
/// header, DATA chunk and the close). A client's stream ids are odd and rise by two, so
/// `id >> 1` spreads the open ones over the slots without hashing: no SipHash per lookup as in
/// `Dictionary` (about 2 % of Sheaf's CPU on h2c, issue 13). Open addressing with linear probing
/// and backward-shift deletion, so no tombstones pile up over a long-lived connection.
struct StreamTable<Value: AnyObject> {
    /// 0 marks a free slot: stream 0 is the connection itself, never a stream.
    private var ids: [Int32]
    private var values: [Value?]
    private var mask: Int
    private(set) var count = 0

    init(capacity: Int = 16) {
        var size = 8
        while size < capacity * 2 { size <<= 1 }
        ids = Array(repeating: 0, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
    }

    var isEmpty: Bool { count == 0 }

    @inline(__always)
    private func home(_ id: Int32) -> Int { Int(id >> 1) & mask }

    private func position(of id: Int32) -> Int? {
        var i = home(id)
        while true {
            let here = ids[i]
            if here == id { return i }
            if here == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    subscript(id: Int32) -> Value? {
        guard id > 0, count > 0, let i = position(of: id) else { return nil }
        return values[i]
    }

    /// Adds or replaces the value of stream `id` (> 0).
    mutating func insert(_ value: Value, for id: Int32) {
        precondition(id > 0, "stream ids start at 1")
        if (count + 1) * 4 > ids.count * 3 { grow() }
        var i = home(id)
        while ids[i] != 0 && ids[i] != id { i = (i + 1) & mask }
        if ids[i] == 0 { count += 1 }
        ids[i] = id
        values[i] = value
    }

    @discardableResult
    mutating func removeValue(for id: Int32) -> Value? {
        guard id > 0, count > 0, var hole = position(of: id) else { return nil }
        let removed = values[hole]
        ids[hole] = 0
        values[hole] = nil
        count -= 1
        // Backward shift: pull later members of the run into the hole when their home lies at
        // or before it (cyclically), so every id stays reachable from its home without gaps.
        var j = hole
        while true {
            j = (j + 1) & mask
            let id = ids[j]
            if id == 0 { break }
            let k = home(id)
            let staysPut = hole <= j ? (k > hole && k <= j) : (k > hole || k <= j)
            if staysPut { continue }
            ids[hole] = id
            values[hole] = values[j]
            ids[j] = 0
            values[j] = nil
            hole = j
        }
        return removed
    }

    mutating func removeAll() {
        for i in ids.indices where ids[i] != 0 {
            ids[i] = 0
            values[i] = nil
        }
        count = 0
    }

    /// The open streams, lowest id first (the order they were opened in).
    var sortedByID: [(id: Int32, value: Value)] {
        var out: [(id: Int32, value: Value)] = []
        out.reserveCapacity(count)
        for i in ids.indices where ids[i] != 0 { out.append((ids[i], values[i]!)) }
        out.sort { $0.id < $1.id }
        return out
    }

    /// Each open stream's value, in no particular order.
    func forEach(_ body: (Value) -> Void) {
        for value in values { if let value { body(value) } }
    }

    private mutating func grow() {
        let old = zip(ids, values)
        let size = ids.count * 2
        ids = Array(repeating: 0, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
        count = 0
        for (id, value) in old where id != 0 { insert(value!, for: id) }
    }
}
