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
           let header = outcome.headers.first("retry-after"),
           let wait = RetryPolicy.parseRetryAfter(header, now: Date()) {
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
        var bytes: [UInt8] = [], spans: [Range<Int>] = []
        for name in kept {
            spans.append(bytes.count..<(bytes.count + name.utf8.count))
            bytes.append(contentsOf: name.utf8)
        }
        self.bytes = bytes
        self.spans = spans
        lengths = kept.reduce(0) { $0 | (1 << UInt64(min($1.utf8.count, 63))) }
    }
    /// `names`' bytes end to end, and where each lies: compared with an upstream field's name as
    /// it lies in its `HeaderFields`, without a string or a retain per name.
    private let bytes: [UInt8]
    private let spans: [Range<Int>]
    /// Bit n set when a reported name is n bytes long (63: that long or longer). Most of an
    /// answer's fields (`server`, `date`, `content-length`) are ruled out by their length alone,
    /// without comparing them with each name (issue 13).
    private let lengths: UInt64

    public static let standard = ReportedHeaders(["content-type", "etag", "last-modified", "location", "retry-after", "cache-control"])

    /// `name` must be lower-case, as both transports deliver it.
    func allows(_ name: String) -> Bool {
        names.contains(name)
    }

    /// Whether `field`'s name is reported (names are stored lower-case).
    func allows(_ field: HeaderFields.Field) -> Bool {
        guard lengths & (1 << UInt64(min(field.name.count, 63))) != 0 else { return false }
        return bytes.withUnsafeBufferPointer { bytes in
            for span in spans where field.isNamed(UnsafeBufferPointer(rebasing: bytes[span])) {
                return true
            }
            return false
        }
    }
}

/// How an upstream body is carried inside the 207.
enum BodyForm {
    case none, json, text, binary

    /// JSON when labelled JSON and valid; text when valid UTF-8 without C0 control characters
    /// other than tab, LF and CR (the XML 207 replaces U+FFFE and U+FFFF with U+FFFD); otherwise
    /// binary (base64).
    static func classify(_ body: ByteBuffer?, headers: HeaderFields) -> BodyForm {
        guard let body, body.readableBytes > 0 else { return .none }
        let labelledJSON = headers.withFirst("content-type") { $0.map(MediaType.isJSON(bytes:)) ?? false }
        return body.withUnsafeReadableBytes { raw -> BodyForm in
            let bytes = raw.bindMemory(to: UInt8.self)
            if labelledJSON, JSONParser.isValid(bytes) { return .json }
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
/// and its values, as bytes inside `headers` (valid only during the call). Allocates nothing.
func forEachReportableHeader(_ headers: HeaderFields, _ reported: ReportedHeaders,
                             _ body: (_ name: UnsafeBufferPointer<UInt8>, HeaderValues) -> Void) {
    headers.withUnsafeFields { fields in
        for field in fields where reported.allows(field) && !fields.nameAppearsBefore(field) {
            body(field.name, HeaderValues(fields, from: field))
        }
    }
}

/// The values one header name has in an upstream response, in the order they came, as bytes.
/// They are kept apart, never joined with ", ": a `set-cookie` holds commas of its own (in `Expires`).
struct HeaderValues: Sequence, IteratorProtocol {
    private var rest: HeaderFields.UnsafeFields.Iterator
    private let name: UnsafeBufferPointer<UInt8>
    /// The value of the name's first occurrence.
    let first: UnsafeBufferPointer<UInt8>
    /// True when the name occurs more than once.
    let isRepeated: Bool

    init(_ fields: HeaderFields.UnsafeFields, from field: HeaderFields.Field) {
        rest = fields.starting(at: field)
        name = field.name
        first = field.value
        var later = rest
        _ = later.next()
        var repeated = false
        while !repeated, let other = later.next() { repeated = other.isNamed(field.name) }
        isRepeated = repeated
    }

    mutating func next() -> UnsafeBufferPointer<UInt8>? {
        while let field = rest.next() {
            if field.isNamed(name) { return field.value }
        }
        return nil
    }
}
