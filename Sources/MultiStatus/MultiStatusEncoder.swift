import Codecs
import Foundation
import FanOut
import NIOCore
import Upstream

/// Counts for the end of a 207: every item is either succeeded (status < 400) or failed.
public struct BatchSummary: Sendable, Equatable {
    public var total = 0
    public var succeeded = 0
    public var failed = 0
    /// The longest `Retry-After` (in seconds) of the items that ended 429 or 503: when a client
    /// may try those again. The 207's head is sent before the items end, so it travels in the body.
    public var retryAfter: Int64?
    /// Set when a streamed batch's body went wrong after its 207 had begun: the items read
    /// before are reported above it, the rest of the body was never read as items.
    public var inputError: InputProblem?

    public init() {}

    public mutating func count(_ outcome: ItemOutcome) {
        total += 1
        if outcome.succeeded { succeeded += 1 } else { failed += 1 }
        if outcome.status == 429 || outcome.status == 503,
           let header = outcome.headers.first(where: { $0.name == "retry-after" }),
           let wait = RetryPolicy.parseRetryAfter(header.value, now: Date()) {
            let seconds = (wait.nanoseconds + 999_999_999) / 1_000_000_000
            retryAfter = max(retryAfter ?? 0, seconds)
        }
    }
}

/// What was wrong with a streamed batch's body, found after its 207 had begun (before, it is a
/// 4xx of its own): the status, the field and the detail that 4xx's problem would have named.
public struct InputProblem: Sendable, Equatable {
    public var status: Int
    public var field: String?
    public var detail: String

    public init(status: Int, field: String?, detail: String) {
        self.status = status
        self.field = field
        self.detail = detail
    }
}

/// Writes a 207 body incrementally, so that it can be sent while items are still settling:
/// `begin`, one `item` per settled item (in any order), then `end`. Not thread-safe; the
/// caller serializes calls.
public protocol MultiStatusEncoder: AnyObject {
    /// The response's Content-Type.
    var contentType: String { get }
    func begin(into out: inout ByteBuffer)
    func item(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer)
    func end(_ summary: BatchSummary, into out: inout ByteBuffer)
}

/// The 207 formats Sheaf writes.
public enum ResponseFormat: Sendable, Equatable {
    /// RFC 4918 `DAV:multistatus`, with the media type the client asked for.
    case xml(mediaType: String)
    case json
    /// One JSON result per line as items settle, then a summary line.
    case ndjson

    /// `reporting`: the upstream headers each item reports (a route's `response_headers`);
    /// `properties`: the WebDAV properties each answered item reports (a route's `properties`).
    public func makeEncoder(reporting: ReportedHeaders = .standard, properties: [DAVProperty] = []) -> MultiStatusEncoder {
        switch self {
        case .xml(let mediaType): return XMLMultiStatusEncoder(mediaType: mediaType, reporting: reporting, properties: properties)
        case .json: return JSONMultiStatusEncoder(reporting: reporting, properties: properties)
        case .ndjson: return NDJSONMultiStatusEncoder(reporting: reporting, properties: properties)
        }
    }
}

/// The upstream response headers a route reports for each item (`response_headers`); the rest
/// (cookies, server banners, internal tokens) stay out of the 207. Connection-level headers are
/// never reported, whatever the list says.
public struct ReportedHeaders: Sendable, Equatable {
    /// Lower-case, each once, in the order given.
    public let names: [String]

    public init(_ names: [String]) {
        var kept: [String] = []
        for name in names.map({ $0.lowercased() }) where !HTTPSyntax.hopByHop.contains(name) && !kept.contains(name) {
            kept.append(name)
        }
        self.names = kept
        self.lengths = kept.map(\.utf8.count)
    }
    /// `names`' byte counts: most upstream header names are ruled out without a string compare.
    private let lengths: [Int]

    public static let standard = ReportedHeaders(["content-type", "etag", "last-modified", "location", "retry-after", "cache-control"])

    /// `name` must be lower-case, as both transports deliver it.
    func allows(_ name: String) -> Bool {
        let length = name.utf8.count
        for index in names.indices where lengths[index] == length && names[index] == name { return true }
        return false
    }
}

/// How an upstream body is carried inside the 207.
enum BodyForm {
    case none, json, text, binary

    /// JSON when labelled JSON and valid; text when valid UTF-8 without C0 control characters
    /// other than tab, LF and CR (the XML 207 replaces U+FFFE and U+FFFF with U+FFFD); otherwise
    /// binary (base64).
    static func classify(_ body: ByteBuffer?, contentType: String?) -> BodyForm {
        guard let body, body.readableBytes > 0 else { return .none }
        return body.withUnsafeReadableBytes { raw -> BodyForm in
            let bytes = raw.bindMemory(to: UInt8.self)
            if let contentType, MediaType.isJSON(contentType), JSONParser.isValid(bytes) { return .json }
            for byte in bytes where byte < 0x20 && byte != 0x09 && byte != 0x0A && byte != 0x0D {
                return .binary
            }
            return JSONParser.isValidUTF8(bytes) ? .text : .binary
        }
    }
}

/// The JSON and XML writers gather an item's bytes in a `ByteScratch` and write them into the
/// 207 at once. A body up to this size is gathered with the rest; a larger one goes straight
/// into the 207 after what was gathered before it, so the scratch never holds a second copy of
/// it (nor grows for it).
let gatheredBodyLimit = 4096

/// Calls `body` with each upstream header name `reported` allows, in order of first appearance,
/// and its values. Allocates nothing.
func forEachReportableHeader(_ headers: [(name: String, value: String)], _ reported: ReportedHeaders,
                             _ body: (String, HeaderValues) -> Void) {
    for i in headers.indices {
        // Both transports deliver lower-case names (HTTP/2 requires it; the curl engine lowers them).
        let name = headers[i].name
        if !reported.allows(name) { continue }
        var seenEarlier = false
        for j in 0..<i where headers[j].name == name {
            seenEarlier = true
            break
        }
        if seenEarlier { continue }
        body(name, HeaderValues(headers, from: i))
    }
}

/// The values one header name has in an upstream response, in the order they came. They are
/// kept apart, never joined with ", ": a `set-cookie` holds commas of its own (in `Expires`).
struct HeaderValues: Sequence, IteratorProtocol {
    private let headers: [(name: String, value: String)]
    private let name: String
    private var index: Int
    /// The value of the name's first occurrence.
    let first: String
    /// True when the name occurs more than once.
    let isRepeated: Bool

    init(_ headers: [(name: String, value: String)], from index: Int) {
        self.headers = headers
        self.index = index
        let name = headers[index].name
        self.name = name
        first = headers[index].value
        isRepeated = headers[(index + 1)...].contains { $0.name == name }
    }

    mutating func next() -> String? {
        while index < headers.count {
            defer { index += 1 }
            if headers[index].name == name { return headers[index].value }
        }
        return nil
    }
}
