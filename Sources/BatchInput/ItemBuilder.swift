import Codecs
import FanOut
import NIOCore
import Upstream

/// Turns the fields of one requested item, from whichever batch format, into a `BatchItem`:
/// one place for the rules every format shares (method token, ids unique, header syntax,
/// hop-by-hop headers removed, url resolved against the upstream, each href used once).
public struct ItemBuilder {
    public let basePath: String
    public private(set) var items: [BatchItem] = []
    private var ids: Set<String> = []
    private var hrefs: Set<String> = []

    /// What Sheaf adds to every item of this batch.
    public let shared: BatchHeaders
    /// Lower-case names an item may not set itself, because Sheaf sets them.
    private let replaced: [String]

    public init(basePath: String, expectedCount: Int = 0, headers: BatchHeaders = BatchHeaders()) {
        self.basePath = basePath
        self.shared = headers
        var replaced = headers.imposed.map { $0.name.lowercased() }
        if headers.requestID != nil { replaced.append("x-request-id") }
        self.replaced = replaced
        items.reserveCapacity(expectedCount)
    }

    /// The item's own headers plus the batch's: imposed ones and the request id replace what the
    /// item set, inherited ones fill in only what it did not.
    private func withShared(_ headers: [(name: String, value: String)], id: String) -> [(name: String, value: String)] {
        guard !shared.isEmpty else { return headers }
        var out = headers
        if !replaced.isEmpty { out.removeAll { replaced.contains($0.name.lowercased()) } }
        for header in shared.inherited {
            let name = header.name.lowercased()
            if replaced.contains(name) || out.contains(where: { $0.name.lowercased() == name }) { continue }
            out.append(header)
        }
        out.append(contentsOf: shared.imposed)
        if let requestID = shared.requestID {
            out.append(("x-request-id", requestID + "." + PercentEncoding.encodeSegment(id)))
        }
        return out
    }

    public var count: Int { items.count }

    /// One explicit item. `field` prefixes error fields, e.g. `requests[3]`.
    public mutating func add(field: String, id: String?, method: String?, url: String?,
                             headers: [(name: String, value: String)], body: ByteBuffer?,
                             bodyIsJSON: Bool) throws(BatchError) {
        let index = items.count
        let id = id ?? String(index)
        guard !id.isEmpty else { throw .badRequest(field: "\(field).id", "must not be empty") }
        guard ids.insert(id).inserted else { throw .badRequest(field: "\(field).id", "duplicate id \"\(id)\"") }
        guard let rawMethod = method else { throw .badRequest(field: "\(field).method", "missing") }
        guard !rawMethod.isEmpty, rawMethod.utf8.allSatisfy(HTTPSyntax.isTokenByte) else {
            throw .badRequest(field: "\(field).method", "\"\(rawMethod)\" is not an HTTP method")
        }
        // CONNECT opens a tunnel (RFC 9110 §9.3.6), not a single-item request; neither engine can send it.
        guard rawMethod.uppercased() != "CONNECT" else {
            throw .badRequest(field: "\(field).method", "CONNECT opens a tunnel, not a single-item request")
        }
        guard let url else { throw .badRequest(field: "\(field).url", "missing") }
        var forwarded: [(name: String, value: String)] = []
        forwarded.reserveCapacity(headers.count + 1)
        var hasContentType = false
        for header in headers {
            guard !header.name.isEmpty, header.name.utf8.allSatisfy(HTTPSyntax.isTokenByte) else {
                throw .badRequest(field: "\(field).headers", "\"\(header.name)\" is not a valid header name")
            }
            guard header.value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                throw .badRequest(field: "\(field).headers.\(header.name)", "value contains a control character (CR, LF or NUL)")
            }
            let lower = header.name.lowercased()
            if HTTPSyntax.hopByHop.contains(lower) { continue }
            if lower == "content-type" { hasContentType = true }
            forwarded.append(header)
        }
        if bodyIsJSON && !hasContentType { forwarded.append(("content-type", "application/json")) }
        let method = rawMethod.uppercased()
        switch ItemPath.resolve(url, basePath: basePath) {
        case .success(let resolved):
            let request = UpstreamRequest(method: method, path: resolved.upstreamPath, headers: withShared(forwarded, id: id), body: body)
            items.append(BatchItem(id: id, href: uniqueHref(resolved.href, id: id), request: request))
        case .failure(let rejection):
            let href = ItemPath.reportableHref(url)
            items.append(BatchItem(id: id, href: uniqueHref(href, id: id), rejection: rejection.description))
        }
    }

    /// One item of a route template. The path needs no normalization: `PathTemplate` refuses dot
    /// segments and bad escapes in its literal text, and substituted values are encoded segments
    /// that are never `.` or `..`.
    public mutating func addTemplated(path: String, method: String, headers: [(name: String, value: String)]) {
        let id = String(items.count)
        let request = UpstreamRequest(method: method, path: basePath + path, headers: withShared(headers, id: id))
        items.append(BatchItem(id: id, href: uniqueHref(path, id: id), request: request))
    }

    /// RFC 4918 §13: an href appears at most once. The first item (in request order) to address a
    /// path gets it as is; every later one gets the path plus `#` and its (encoded) id.
    private mutating func uniqueHref(_ href: String, id: String) -> String {
        if hrefs.insert(href).inserted { return href }
        let tagged = href + "#" + PercentEncoding.encodeSegment(id)
        hrefs.insert(tagged)
        return tagged
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
