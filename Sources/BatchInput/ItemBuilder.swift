import Codecs
import FanOut
import NIOCore
import TextBytes
import Upstream

/// Turns the fields of one requested item, from whichever batch format, into a `BatchItem`:
/// one place for the rules every format shares (method token, ids unique, header syntax,
/// hop-by-hop headers removed, url resolved against the upstream, each href used once).
public struct ItemBuilder {
    public let basePath: String
    public private(set) var items: [BatchItem] = []
    /// Items already handed over by `drain` (a streamed batch): `items[0]` is item `drained`.
    private var drained = 0
    private var ids: Set<String> = []
    private var hrefs: Set<String> = []
    /// A streamed batch cannot remember every href it has used: past `exactHrefs` of them, a
    /// fixed-size filter takes over, which may take a new href for a used one (then tagged `#id`
    /// needlessly, still unique), never the reverse.
    private let streamed: Bool
    private var hrefFilter: HrefFilter?
    static let exactHrefs = 1 << 16
    /// Coalescing: the first item on each path, and the first item of each full call key.
    private var firstOnPath: [String: CallShape] = [:]
    /// The distinct batch-field arrays (`UpstreamRequest.batchHeaders`) of the shapes in
    /// `firstOnPath`, with each one's storage address: a shape holds a number here, not the
    /// array. The batch's items share one array, and retaining it for each item's shape was an
    /// atomic on a line the upstream threads' releases of it also write (1.9 % of Sheaf's CPU in
    /// the profile, issue 13). Emptied with `firstOnPath`.
    private var fieldSets: [(fields: [(name: String, value: String)], address: UnsafeRawPointer?)] = []
    private var byKey: [String: Int] = [:]
    /// `templateFields`' last answer, with the template headers it was built from.
    private var templatedFields: (template: [(name: String, value: String)], fields: [(name: String, value: String)])?

    /// What Sheaf adds to every item of this batch.
    public let shared: BatchHeaders
    /// `<request id>.`, joined once: each item's X-Request-ID is this plus its id, one
    /// concatenation (two cost a few hundred instructions more per item, issue 13).
    private let requestIDPrefix: String?
    /// Lower-case names an item may not set itself, because Sheaf sets them.
    private let replaced: [String]
    /// Identical GET and HEAD items make one upstream call (`coalesce`).
    private let coalesce: Bool
    /// Per item that names dependencies: their ids, and the field to blame for a bad one.
    private var dependencyIDs: [Int: (ids: [String], field: String)] = [:]

    /// One item's body may hold at most this many bytes (`max_item_body_bytes`).
    private let maxItemBodyBytes: Int

    /// `streamed`: items are taken with `drain` as they are built, and memory stays bounded
    /// (hrefs through a fixed-size filter, coalescing within the last few thousand paths).
    public init(basePath: String, expectedCount: Int = 0, headers: BatchHeaders = BatchHeaders(), coalesce: Bool = false,
                maxItemBodyBytes: Int = Int.max, streamed: Bool = false) {
        self.basePath = basePath
        self.streamed = streamed
        self.maxItemBodyBytes = maxItemBodyBytes
        self.coalesce = coalesce
        self.shared = headers
        requestIDPrefix = headers.requestID.map { $0 + "." }
        var replaced = headers.imposed.map { $0.name.lowercased() }
        if headers.requestID != nil { replaced.append("x-request-id") }
        self.replaced = replaced
        items.reserveCapacity(expectedCount)
        hrefs.reserveCapacity(min(expectedCount, Self.exactHrefs))
    }

    /// `X-Request-ID: <request id>.<item id>`, when the batch has a request id. It replaces
    /// what the item set (`replaced`), as the imposed headers do.
    private func requestID(for id: String) -> ItemRequestID? {
        requestIDPrefix.map { ItemRequestID(prefix: $0, suffix: PercentEncoding.encodeSegment(id)) }
    }

    /// The item's headers with the batch's inherited and imposed ones, without the request id.
    private func merged(_ headers: [(name: String, value: String)], room: Int = 0) -> [(name: String, value: String)] {
        guard !shared.isEmpty else { return headers }
        // Sized once: growing it header by header cost two allocations per item (issue 13).
        var out: [(name: String, value: String)] = []
        out.reserveCapacity(headers.count + shared.inherited.count + shared.imposed.count + room)
        if replaced.isEmpty {
            out.append(contentsOf: headers)
        } else {
            for header in headers where !replaced.contains(header.name.lowercased()) { out.append(header) }
        }
        // An item's own field of a name replaces the inherited one; an inherited name on several
        // lines keeps them all (comparing with `out` kept only the first).
        let own = out.count
        for header in shared.inherited {
            let name = header.name.lowercased()
            if replaced.contains(name) || out[..<own].contains(where: { $0.name.lowercased() == name }) { continue }
            out.append(header)
        }
        out.append(contentsOf: shared.imposed)
        return out
    }

    /// What every templated item sends alike: the template's headers merged with the batch's,
    /// built once and shared by all their requests (`UpstreamRequest.batchHeaders`).
    private mutating func templateFields(_ template: [(name: String, value: String)]) -> [(name: String, value: String)] {
        if let cached = templatedFields,
           cached.template.elementsEqual(template, by: { $0.name == $1.name && $0.value == $1.value }) {
            return cached.fields
        }
        let fields = merged(template)
        templatedFields = (template, fields)
        return fields
    }

    public var count: Int { drained + items.count }

    /// Room for `additional` more items, so the item list and the href set do not grow (and
    /// rehash) on the way: a streamed body's chunk says how many elements it completed.
    public mutating func reserve(additional: Int) {
        items.reserveCapacity(items.count + additional)
        if hrefFilter == nil { hrefs.reserveCapacity(min(hrefs.count + additional, Self.exactHrefs)) }
    }

    /// One explicit item. `field` prefixes error fields, e.g. `requests[3]`. `dependsOn`: ids of
    /// items that must succeed first; then the url, header values and `jsonBody` (the body as
    /// parsed JSON) may hold value references `{id:/pointer}` to their answers.
    public mutating func add(field: String, id: String?, method: String?, url: String?,
                             headers: [(name: String, value: String)], body: ByteBuffer?,
                             bodyIsJSON: Bool, dependsOn: [String] = [], jsonBody: JSONValue? = nil) throws(BatchError) {
        let index = items.count
        let id = id ?? String(index)
        guard !id.isEmpty else { throw .badRequest(field: "\(field).id", "must not be empty") }
        guard ids.insert(id).inserted else { throw .badRequest(field: "\(field).id", "duplicate id \"\(id)\"") }
        guard let rawMethod = method else { throw .badRequest(field: "\(field).method", "missing") }
        guard !rawMethod.isEmpty, rawMethod.withUTF8Bytes({ $0.allSatisfy(HTTPSyntax.isTokenByte) }) else {
            throw .badRequest(field: "\(field).method", "\"\(rawMethod)\" is not an HTTP method")
        }
        // CONNECT opens a tunnel (RFC 9110 §9.3.6), not a single-item request; neither engine can send it.
        guard rawMethod.uppercased() != "CONNECT" else {
            throw .badRequest(field: "\(field).method", "CONNECT opens a tunnel, not a single-item request")
        }
        guard let url else { throw .badRequest(field: "\(field).url", "missing") }
        if let body, body.readableBytes > maxItemBodyBytes {
            throw BatchError(status: 413, field: "\(field).body",
                             "is \(body.readableBytes) bytes, more than this route's max_item_body_bytes (\(maxItemBodyBytes))",
                             limit: "max_item_body_bytes")
        }
        var forwarded: [(name: String, value: String)] = []
        forwarded.reserveCapacity(headers.count + 1)
        var hasContentType = false
        // RFC 9110 §7.6.1: what the item's own Connection header names is for that hop only, too.
        let hopOnly = HTTPSyntax.connectionOptions(headers)
        for header in headers {
            guard !header.name.isEmpty, header.name.withUTF8Bytes({ $0.allSatisfy(HTTPSyntax.isTokenByte) }) else {
                throw .badRequest(field: "\(field).headers", "\"\(header.name)\" is not a valid header name")
            }
            guard header.value.withUTF8Bytes({ $0.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) } }) else {
                throw .badRequest(field: "\(field).headers.\(header.name)", "value contains a control character (a value may hold tabs and visible characters only)")
            }
            let lower = header.name.lowercased()
            if HTTPSyntax.hopByHop.contains(lower) || hopOnly.contains(lower) { continue }
            if lower == "content-type" { hasContentType = true }
            forwarded.append(header)
        }
        if bodyIsJSON && !hasContentType { forwarded.append(("content-type", "application/json")) }
        let method = rawMethod.uppercased()
        if !dependsOn.isEmpty {
            dependencyIDs[index] = (dependsOn, "\(field).dependsOn")
            switch try referencing(field: field, method: method, url: url, headers: merged(forwarded), requestID: requestID(for: id),
                                   own: Set(forwarded.map { $0.name.lowercased() }),
                                   body: body, jsonBody: bodyIsJSON ? jsonBody : nil, dependsOn: dependsOn) {
            case nil:
                break
            case .success(let template)?:
                // The href is the url as written, each reference in it encoded as a segment.
                let href = uniqueHref(template.url.href, id: id)
                items.append(BatchItem(id: id, href: href, dependsOn: []) { template.resolve($0) })
                return
            case .failure(let rejection)?:
                items.append(BatchItem(id: id, href: uniqueHref(ItemPath.reportableHref(url), id: id), rejection: rejection.description))
                return
            }
        }
        switch ItemPath.resolve(url, basePath: basePath) {
        case .success(let resolved):
            let request = UpstreamRequest(method: method, path: resolved.upstreamPath, headers: merged(forwarded), body: body,
                                          requestID: requestID(for: id))
            items.append(BatchItem(id: id, href: uniqueHref(resolved.href, id: id), request: request))
        case .failure(let rejection):
            let href = ItemPath.reportableHref(url)
            items.append(BatchItem(id: id, href: uniqueHref(href, id: id), rejection: rejection.description))
        }
    }

    /// The template of an item whose url, headers or JSON body refer to its dependencies'
    /// answers; nil when nothing does. References must name an item in `dependsOn`.
    private func referencing(field: String, method: String, url: String, headers: [(name: String, value: String)],
                             requestID: ItemRequestID?, own: Set<String>, body: ByteBuffer?, jsonBody: JSONValue?, dependsOn: [String]) throws(BatchError)
        -> Result<ItemTemplate, ItemPath.Rejection>? {
        func parse(_ text: String, _ what: String) throws(BatchError) -> ReferencedText {
            let parsed: ReferencedText
            do { parsed = try ReferencedText(text) } catch { throw .badRequest(field: what, error.message) }
            for reference in parsed.references where !dependsOn.contains(reference.id) {
                throw .badRequest(field: what, "\(reference.text) refers to \"\(reference.id)\", which is not in dependsOn")
            }
            return parsed
        }
        let urlText = try parse(url, "\(field).url")
        var headerTexts: [(name: String, value: ReferencedText)] = []
        var referenced = !urlText.references.isEmpty
        for header in headers {
            // Only the item's own headers hold references: what Sheaf adds (forwarding headers,
            // the request id, inherited ones) is sent as it is, braces and all.
            let name = header.name.lowercased()
            guard own.contains(name), !replaced.contains(name) else {
                headerTexts.append((header.name, ReferencedText.plain(header.value)))
                continue
            }
            let text = try parse(header.value, "\(field).headers.\(header.name)")
            referenced = referenced || !text.references.isEmpty
            headerTexts.append((header.name, text))
        }
        var bodyReferences = false
        if let jsonBody {
            var strings: [String] = []
            Self.collectStrings(jsonBody, into: &strings)
            for text in strings {
                let parsed = try parse(text, "\(field).body")
                if parsed.parts.count == 1, case .reference = parsed.parts[0] { bodyReferences = true }
            }
        }
        guard referenced || bodyReferences else { return nil }
        return ReferencedPath.make(urlText, basePath: basePath).map { path in
            ItemTemplate(method: method, dependencyIDs: dependsOn, url: path, headers: headerTexts,
                         requestID: requestID, body: body, jsonBody: bodyReferences ? jsonBody : nil)
        }
    }

    private static func collectStrings(_ value: JSONValue, into out: inout [String]) {
        switch value {
        case .string(let text): out.append(text)
        case .array(let elements): for element in elements { collectStrings(element, into: &out) }
        case .object(let members): for member in members { collectStrings(member.value, into: &out) }
        default: break
        }
    }

    /// The items, in an order where every item comes after its dependencies (otherwise as
    /// requested), with dependencies as indices and identical GET/HEAD items coalesced. Unknown
    /// ids and cycles are errors naming them.
    public mutating func finish() throws(BatchError) -> [BatchItem] {
        if !dependencyIDs.isEmpty { try orderByDependencies() }
        if coalesce { markDuplicates() }
        return items
    }

    /// A streamed batch's items built since the last call, coalesced with each other and with
    /// the recent ones before (a duplicate whose first copy is too far back makes its own call).
    public mutating func drain() -> [BatchItem] {
        if coalesce {
            markDuplicates()
            if firstOnPath.count > 4096 {
                firstOnPath.removeAll(keepingCapacity: true)
                byKey.removeAll(keepingCapacity: true)
                fieldSets.removeAll()
            }
        }
        let out = items
        drained += items.count
        items.removeAll(keepingCapacity: true)
        return out
    }

    private mutating func orderByDependencies() throws(BatchError) {
        var indexOf: [String: Int] = [:]
        for (index, item) in items.enumerated() { indexOf[item.id] = index }
        var edges: [[Int]] = Array(repeating: [], count: items.count)
        for (index, entry) in dependencyIDs {
            for id in entry.ids {
                guard let dependency = indexOf[id] else {
                    throw .badRequest(field: entry.field, "unknown id \"\(id)\"")
                }
                if !edges[index].contains(dependency) { edges[index].append(dependency) }
            }
        }
        // Depth-first, dependencies first, iteratively (a chain may be long); grey means on the
        // current path, so meeting one again is a cycle.
        enum Mark { case white, grey, black }
        var marks = Array(repeating: Mark.white, count: items.count)
        var order: [Int] = []
        order.reserveCapacity(items.count)
        for root in items.indices where marks[root] == .white {
            var stack: [(node: Int, next: Int)] = [(root, 0)]
            marks[root] = .grey
            while let top = stack.last {
                if top.next < edges[top.node].count {
                    stack[stack.count - 1].next += 1
                    let dependency = edges[top.node][top.next]
                    switch marks[dependency] {
                    case .white:
                        marks[dependency] = .grey
                        stack.append((dependency, 0))
                    case .grey:
                        let path = stack.map(\.node)
                        let cycle = path[path.firstIndex(of: dependency)!...].map { items[$0].id } + [items[dependency].id]
                        throw .badRequest(field: dependencyIDs[top.node]?.field,
                                          "dependsOn forms a cycle: " + cycle.map { "\"\($0)\"" }.joined(separator: " → "))
                    case .black:
                        break
                    }
                } else {
                    marks[top.node] = .black
                    order.append(top.node)
                    stack.removeLast()
                }
            }
        }
        var position = Array(repeating: 0, count: items.count)
        for (newIndex, oldIndex) in order.enumerated() { position[oldIndex] = newIndex }
        items = order.map { old in
            var item = items[old]
            item.dependsOn = edges[old].map { position[$0] }
            return item
        }
    }

    /// Later items identical to an earlier GET or HEAD (method, path, headers other than the
    /// per-item request id, no body, no dependencies) report its outcome instead of calling.
    private mutating func markDuplicates() {
        // Keyed by path alone (its storage is hashed, nothing is built per item). Only when a
        // path comes again is a full key (method and headers) built, for the items on that path.
        // Sized up front: growing it rehashed every path seen so far (issue 13). Not past a few
        // thousand: a batch of POSTs puts nothing in it.
        firstOnPath.reserveCapacity(min(firstOnPath.count + items.count, 8192))
        for position in items.indices {
            let index = drained + position
            // Looked at in place: binding the request to a name copied it for every item.
            guard let path = Self.coalescablePath(items[position]) else { continue }
            // One lookup for a new path (the common case): put it in, and only when it was
            // there already put the first one back.
            // The shape goes into the table as a temporary: kept in a local for the key below, it
            // was copied in, retained and released, for every item (+180 instructions an item),
            // where building it again costs only on a path that comes again.
            // The address read first, by a static function: passed to a mutating method of the
            // builder, the array (a part of `self`) was copied, which is the retain this avoids.
            let address = Self.address(of: items[position].request!.batchHeaders)
            let fieldSet = fieldSets.last?.address == address ? fieldSets.count - 1
                : addFieldSet(items[position].request!.batchHeaders, address: address)
            guard let first = firstOnPath.updateValue(CallShape(index: index, items[position].request!, fieldSet: fieldSet),
                                                      forKey: path) else { continue }
            firstOnPath[path] = first
            let firstKey = first.key(path: path, batchHeaders: fieldSets[first.fieldSet].fields)
            if byKey[firstKey] == nil { byKey[firstKey] = first.index }
            let key = CallShape(index: index, items[position].request!, fieldSet: fieldSet)
                .key(path: path, batchHeaders: fieldSets[fieldSet].fields)
            if let leader = byKey[key] {
                items[position].sameAs = leader
            } else {
                byKey[key] = index
            }
        }
    }

    /// Where an array's elements are: while `fieldSets` holds an array, no other array has its
    /// address, so the same address is the same fields.
    private static func address(of fields: borrowing [(name: String, value: String)]) -> UnsafeRawPointer? {
        fields.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
    }

    /// The number in `fieldSets` of `fields`, whose address is not the last one's: an equal
    /// array's (compared by content), or a new one.
    private mutating func addFieldSet(_ fields: [(name: String, value: String)], address: UnsafeRawPointer?) -> Int {
        if let same = fieldSets.firstIndex(where: { $0.fields.elementsEqual(fields, by: { $0.name == $1.name && $0.value == $1.value }) }) {
            return same
        }
        fieldSets.append((fields, address))
        return fieldSets.count - 1
    }

    /// The path of an item that may share its call with others: a GET or HEAD without a body
    /// that waits for no other item.
    private static func coalescablePath(_ item: borrowing BatchItem) -> String? {
        guard item.dependsOn.isEmpty, let method = item.request?.method, method == "GET" || method == "HEAD",
              item.request?.body == nil else { return nil }
        return item.request?.path
    }

    /// One item of a route template. The path needs no normalization: `PathTemplate` refuses dot
    /// segments and bad escapes in its literal text, and substituted values are encoded segments
    /// that are never `.` or `..`.
    public mutating func addTemplated(path: String, method: String, headers: [(name: String, value: String)],
                                      then: ChainTemplate? = nil) {
        let id = String(then == nil ? count : count / 2)
        let href = uniqueHref(path, id: id)
        // Built in place: a request bound to a name first was copied into the item.
        items.append(BatchItem(id: id, href: href, request: UpstreamRequest(method: method, path: basePath.isEmpty ? path : basePath + path,
                                                                             batchHeaders: templateFields(headers), requestID: requestID(for: id))))
        guard let then else { return }
        // The second call depends on the first: it waits for its answer, takes values from it,
        // and gets 424 when the first fails. BatchSession reports the two as one item.
        let first = count - 1
        let chained = ItemTemplate(method: then.method, dependencyIDs: ["answer"],
                                   url: ReferencedPath.make(then.path, basePath: basePath, prevalidated: true),
                                   headers: merged(headers).map { ($0.name, ReferencedText.plain($0.value)) },
                                   requestID: requestID(for: id + ".then"), body: nil, jsonBody: nil)
        var second = BatchItem(id: id + ".then", href: then.text, dependsOn: [first]) { chained.resolve($0) }
        second.dependsOn = [first]
        items.append(second)
    }

    /// RFC 4918 §13: an href appears at most once. The first item (in request order) to address a
    /// path gets it as is; every later one gets the path plus `#` and its (encoded) id.
    private mutating func uniqueHref(_ href: String, id: String) -> String {
        if streamed && hrefFilter == nil && hrefs.count >= Self.exactHrefs {
            hrefFilter = HrefFilter()
            for used in hrefs { _ = hrefFilter!.insert(used) }
            hrefs = []
        }
        if hrefFilter != nil {
            // Ids are unique, so a tagged href needs no checking; an untagged one cannot end in `#id`.
            if hrefFilter!.insert(href) { return href }
            return href + "#" + PercentEncoding.encodeSegment(id)
        }
        if hrefs.insert(href).inserted { return href }
        let tagged = href + "#" + PercentEncoding.encodeSegment(id)
        hrefs.insert(tagged)
        return tagged
    }
}

/// A Bloom filter over hrefs, 4 MiB whatever the batch's size: with a million hrefs, about one
/// in 30,000 new ones is taken for used. Used by streamed batches only.
struct HrefFilter {
    private static let bits = 1 << 25
    private static let probes = 5
    private var words = [UInt64](repeating: 0, count: HrefFilter.bits / 64)

    /// Adds `href`; false when it may have been added before.
    mutating func insert(_ href: String) -> Bool {
        var hasher = Hasher()
        hasher.combine(href)
        let hash = UInt64(bitPattern: Int64(hasher.finalize()))
        // Double hashing: probe i at h1 + i·h2.
        let h1 = hash & 0xFFFF_FFFF, h2 = (hash >> 32) | 1
        var seen = true
        for probe in 0..<UInt64(Self.probes) {
            let bit = Int((h1 &+ probe &* h2) % UInt64(Self.bits))
            let mask: UInt64 = 1 << UInt64(bit & 63)
            if words[bit >> 6] & mask == 0 {
                seen = false
                words[bit >> 6] |= mask
            }
        }
        return !seen
    }
}

/// Headers Sheaf puts on every item of one batch.
public struct BatchHeaders: Sendable {
    /// Copied from the bulk request (a route's `forward_headers`) unless the item sets them itself.
    public var inherited: [(name: String, value: String)]
    /// Set by Sheaf (`X-Forwarded-For`, `Forwarded`, ...): they replace any the item sets.
    public var imposed: [(name: String, value: String)]
    /// When set, each item is sent `X-Request-ID: <requestID>.<item id>` (the id percent-encoded).
    public var requestID: String?

    public init(inherited: [(name: String, value: String)] = [], imposed: [(name: String, value: String)] = [],
                requestID: String? = nil) {
        self.inherited = inherited
        self.imposed = imposed
        self.requestID = requestID
    }

    var isEmpty: Bool { inherited.isEmpty && imposed.isEmpty && requestID == nil }
}

/// What decides whether two requests on one path make the same call: the method and the
/// headers (the per-item request id aside). Kept for the first item on each path instead of its
/// whole request, whose copy retained every part of it for every item (issue 13).
private struct CallShape {
    let index: Int
    let method: String
    /// The request's batch fields, as their number in `ItemBuilder.fieldSets`.
    let fieldSet: Int
    let headers: [(name: String, value: String)]

    init(index: Int, _ request: borrowing UpstreamRequest, fieldSet: Int) {
        self.index = index
        method = request.method
        self.fieldSet = fieldSet
        headers = request.headers
    }

    /// Method, path and headers (`batchHeaders`: the fields `fieldSet` stands for): equal keys
    /// make the same call.
    func key(path: String, batchHeaders: [(name: String, value: String)]) -> String {
        var key = method + "\u{0}" + path
        func add(_ list: [(name: String, value: String)]) {
            for header in list {
                let name = header.name.lowercased()
                if name != ItemRequestID.name { key += "\u{0}" + name + "\u{1}" + header.value }
            }
        }
        add(batchHeaders)
        add(headers)
        return key
    }
}
