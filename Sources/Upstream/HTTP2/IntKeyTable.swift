/// A table keyed by integers that are handed out in rising order and mostly live a short while,
/// as a connection's HTTP/2 stream ids (odd, rising by two). The open keys form a moving window,
/// so `key >> shift` puts each in its own slot without hashing: no SipHash per lookup as in
/// `Dictionary`, several per item (every response header, DATA chunk and the close; issue 13).
///
/// Open addressing with tombstones (only once a key has been placed away from its home slot;
/// until then a removal frees its slot). A removal only marks its slot: the backward shift of linear
/// probing would walk the whole run of open keys behind it, and with rising keys that run is
/// every key open (up to a thousand streams). A lookup probes at most as far as
/// the farthest any key was placed from its home, so a miss costs no more than a hit. The slots
/// are rebuilt when free ones run short. Keys must not be negative.
struct IntKeyTable<Value> {
    private static var free: Int { -1 }
    private static var removed: Int { -2 }
    private var keys: [Int]
    private var values: [Value?]
    private var mask: Int
    private let shift: Int
    private var used = 0
    /// Slots holding a key or a tombstone: past three quarters, the slots are rebuilt.
    private var taken = 0
    /// The farthest any key was placed from its home slot since the slots were last rebuilt or
    /// emptied (0: no key has been placed away from home, so there are no tombstones).
    private var farthest = 0
    /// The largest key ever inserted.
    private var largest = -1

    /// `shift`: how many low bits of a key do not vary between neighbours (1 for stream ids).
    init(capacity: Int = 16, shift: Int = 0) {
        var size = 8
        while size < capacity * 2 { size <<= 1 }
        keys = Array(repeating: Self.free, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
        self.shift = shift
    }

    var count: Int { used }
    var isEmpty: Bool { used == 0 }

    @inline(__always)
    private func home(_ key: Int) -> Int { (key >> shift) & mask }

    private func position(of key: Int) -> Int? {
        guard key >= 0, used > 0 else { return nil }
        var i = home(key)
        for _ in 0...farthest {
            let here = keys[i]
            if here == key { return i }
            if here == Self.free { return nil }
            i = (i + 1) & mask
        }
        return nil
    }

    subscript(key: Int) -> Value? {
        guard let i = position(of: key) else { return nil }
        return values[i]
    }

    /// Adds or replaces the value of `key`.
    mutating func insert(_ value: Value, for key: Int) {
        precondition(key >= 0, "IntKeyTable keys are not negative")
        // Keys come rising: one above every key given so far cannot be here, and the lookup
        // that proves it (probing past the tombstones of closed streams) is skipped.
        if key <= largest, let i = position(of: key) {
            values[i] = value
            return
        }
        largest = max(largest, key)
        if (taken + 1) * 4 > keys.count * 3 { rebuild(minimumCapacity: used + 1) }
        var i = home(key), distance = 0
        while keys[i] >= 0 {
            i = (i + 1) & mask
            distance += 1
        }
        if keys[i] == Self.free { taken += 1 }
        keys[i] = key
        values[i] = value
        used += 1
        farthest = max(farthest, distance)
    }

    @discardableResult
    mutating func removeValue(for key: Int) -> Value? {
        guard let i = position(of: key) else { return nil }
        // While no key has been placed away from its home slot since the last rebuild (no probe
        // ever passes a slot), a removed one frees its slot outright: no tombstone to pile up and
        // force a rebuild. Rising keys whose open span fits the table stay that way, so a busy
        // connection does not rebuild; one stream left open across more than the table's size
        // brings tombstones back until the next rebuild.
        if farthest == 0 {
            keys[i] = Self.free
            taken -= 1
        } else {
            keys[i] = Self.removed
        }
        used -= 1
        return values[i].take()
    }

    mutating func removeAll() {
        for i in keys.indices where keys[i] != Self.free {
            keys[i] = Self.free
            values[i] = nil
        }
        used = 0
        taken = 0
        farthest = 0
    }

    /// The entries, lowest key first.
    var sortedByKey: [(key: Int, value: Value)] {
        var out: [(key: Int, value: Value)] = []
        out.reserveCapacity(used)
        for i in keys.indices where keys[i] >= 0 { out.append((keys[i], values[i]!)) }
        out.sort { $0.key < $1.key }
        return out
    }

    /// Each value, in no particular order.
    func forEach(_ body: (Value) -> Void) {
        for i in keys.indices where keys[i] >= 0 { body(values[i]!) }
    }

    /// Puts every key back without tombstones, in twice the slots of what it must hold.
    private mutating func rebuild(minimumCapacity: Int) {
        var size = keys.count
        while minimumCapacity * 2 > size { size <<= 1 }
        let oldKeys = keys
        var oldValues = values
        keys = Array(repeating: Self.free, count: size)
        values = Array(repeating: nil, count: size)
        mask = size - 1
        used = 0
        taken = 0
        farthest = 0
        for i in oldKeys.indices where oldKeys[i] >= 0 { insert(oldValues[i].take()!, for: oldKeys[i]) }
    }
}
