import Upstream

/// What a run keeps about one item until every item before it has settled: small, because a
/// slow item keeps the slots of all settled items behind it.
struct ItemSlot {
    var call: UpstreamCall?
    var settled = false
    /// When it started (uptime nanoseconds); 0 while not started or waiting for others.
    var started: UInt64 = 0
    /// Holds one of the process's item-budget tokens.
    var holdsToken = false
}

/// A run's items by absolute index. The items themselves are kept only until they have settled
/// and nothing needs them; their slots, from the oldest unsettled one to the newest given, so a
/// streamed batch's memory follows what is in flight, not how many items it has had.
struct ItemWindow {
    private var live: [ItemIndex: BatchItem] = [:]
    /// The absolute index of the first item kept; every item below it has settled.
    private(set) var base = 0
    private var storage: [ItemSlot] = []
    private var head = 0

    /// One past the newest item given.
    var end: Int { base + storage.count - head }

    subscript(index: Int) -> ItemSlot {
        get { storage[head + index - base] }
        _modify { yield &storage[head + index - base] }
    }

    func isSettled(_ index: Int) -> Bool {
        index < base || storage[head + index - base].settled
    }

    mutating func append(_ item: BatchItem) {
        live[ItemIndex(end)] = item
        storage.append(ItemSlot())
    }

    /// Appends a whole batch's items, moving each out of `items` (taken from the back) instead of
    /// copying it: a copy retained every string and array an item holds (issue 13).
    mutating func append(contentsOf items: consuming [BatchItem]) {
        let first = end
        // One by one: through `repeatElement` each empty slot was copied with the outlined copy
        // of its optional call (issue 13).
        for _ in 0..<items.count { storage.append(ItemSlot()) }
        var index = first + items.count
        while let item = items.popLast() {
            index -= 1
            live[ItemIndex(index)] = consume item
        }
    }

    /// An item not yet forgotten.
    func item(_ index: Int) -> BatchItem {
        live[ItemIndex(index)]!
    }

    /// Lets go of a settled item nothing needs any more.
    mutating func forget(_ index: Int) {
        live[ItemIndex(index)] = nil
    }

    /// Lets go of a settled item nothing needs any more, handing it over (no copy).
    mutating func take(_ index: Int) -> BatchItem {
        live.removeValue(forKey: ItemIndex(index))!
    }

    /// Hands an item's request over to be sent, without copying it: the item keeps its id and
    /// href for the 207, and nothing reads its request after the start (issue 13).
    mutating func takeRequest(_ index: Int) -> UpstreamRequest? {
        var request: UpstreamRequest?
        // In place through `values`: `live[index]!.request` moved the whole item out and back.
        guard let slot = live.index(forKey: ItemIndex(index)) else { return nil }
        swap(&request, &live.values[slot].request)
        return request
    }

    /// Why an item is not sent (see `BatchItem.rejection`).
    func rejection(_ index: Int) -> String? { live[ItemIndex(index)]?.rejection }

    /// Items kept now.
    var liveCount: Int { live.count }

    /// Room for `count` live items without the table growing (and rehashing) on the way.
    mutating func reserve(_ count: Int) {
        live.reserveCapacity(count)
        storage.reserveCapacity(count)
    }

    /// Live calls, for cancelling or pausing them all.
    var calls: [UpstreamCall] { storage[head...].compactMap(\.call) }

    func forEachCall(_ body: (UpstreamCall) -> Void) {
        for slot in storage[head...] { if let call = slot.call { body(call) } }
    }

    /// Drops items from the front while `droppable` says so (it is asked in index order).
    mutating func dropSettled(while droppable: (Int, ItemSlot) -> Bool) {
        while head < storage.count, droppable(base, storage[head]) {
            head += 1
            base += 1
        }
        // Compacted now and then, so the storage is not moved on every drop.
        if head >= 1024 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
    }
}

/// An item's index as a table key, hashed with a few multiplies instead of SipHash: indices are
/// Sheaf's own, never a client's, so they need no protection from chosen collisions, and `Int`'s
/// SipHash cost about 90 instructions per lookup, three lookups per item (issue 13). Mixed, not
/// used as they are: rising keys at their own buckets form one long run, which every removal
/// from the table then walks.
struct ItemIndex: Hashable {
    let value: Int
    init(_ value: Int) { self.value = value }
    func hash(into hasher: inout Hasher) { hasher.combine(value) }
    func _rawHashValue(seed: Int) -> Int {
        // MurmurHash3's 64-bit finalizer.
        var x = UInt64(bitPattern: Int64(value ^ seed))
        x ^= x >> 33
        x &*= 0xff51afd7ed558ccd
        x ^= x >> 33
        x &*= 0xc4ceb9fe1a85ec53
        x ^= x >> 33
        return Int(Int64(bitPattern: x))
    }
}
