import FanOut

/// A WebDAV live property (RFC 4918 §15) a route reports for each item (`properties`), read from
/// the upstream answer's headers. The XML 207 lists them in `D:propstat`s as a PROPFIND answer
/// would; JSON and NDJSON under `"properties"`.
public enum DAVProperty: String, Sendable, CaseIterable {
    case getetag, getcontenttype, getcontentlength, getlastmodified

    /// Its element name in the 207, in the `D:` (DAV:) namespace.
    var qualifiedName: StaticString {
        switch self {
        case .getetag: return "D:getetag"
        case .getcontenttype: return "D:getcontenttype"
        case .getcontentlength: return "D:getcontentlength"
        case .getlastmodified: return "D:getlastmodified"
        }
    }

    /// The value the upstream's answer gives, or nil when it does not say.
    func value(in outcome: ItemOutcome) -> String? {
        switch self {
        case .getetag: return Self.header("etag", outcome)
        case .getcontenttype: return Self.header("content-type", outcome)
        case .getlastmodified: return Self.header("last-modified", outcome)
        case .getcontentlength:
            if let declared = Self.header("content-length", outcome) { return declared }
            // A body cut at max_response_bytes is not the resource's length.
            return outcome.bodyTruncated ? nil : String(outcome.body?.readableBytes ?? 0)
        }
    }

    /// Both transports deliver lower-case names.
    private static func header(_ name: StaticString, _ outcome: ItemOutcome) -> String? {
        outcome.headers.first(name)
    }
}

extension ItemOutcome {
    /// True when the status is the upstream's own; Sheaf's own statuses (refused, unreachable,
    /// timed out, ...) carry a reason instead, and no upstream headers to take properties from.
    var isUpstreamAnswer: Bool { reason == nil }
}
