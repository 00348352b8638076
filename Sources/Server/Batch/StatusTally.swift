/// How many of a batch's items got each status, counted as they settle. A batch sees a handful
/// of distinct statuses, so a short list scanned from the front costs less per item than
/// hashing the status into a dictionary (issue 13).
struct StatusTally {
    private var entries: [(status: Int, count: Int)] = []

    mutating func add(_ status: Int) {
        for position in entries.indices where entries[position].status == status {
            entries[position].count += 1
            return
        }
        entries.append((status, 1))
    }

    /// Each status seen, with its count.
    var counts: [Int: Int] {
        Dictionary(entries.map { ($0.status, $0.count) }, uniquingKeysWith: +)
    }
}
