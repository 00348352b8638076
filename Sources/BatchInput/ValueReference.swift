import Codecs
import Foundation
import FanOut
import NIOCore
import Upstream

/// A text (an item's url or a header value) with value references `{id:/pointer}`: an item id,
/// a colon, then an RFC 6901 JSON Pointer into that item's JSON answer, ending at the first `}`.
/// Nothing is evaluated: a reference is replaced by the value it points to, or the item gets 424.
struct ReferencedText {
    enum Part {
        case literal(String)
        case reference(Reference)
    }

    struct Reference {
        /// The placeholder as written, for reasons.
        var text: String
        var id: String
        var pointer: JSONPointer
    }

    var parts: [Part]

    /// Text with no references in it, as is.
    static func plain(_ text: String) -> ReferencedText {
        var plain = ReferencedText()
        plain.parts = text.isEmpty ? [] : [.literal(text)]
        return plain
    }

    private init() {
        parts = []
    }

    var references: [Reference] {
        parts.compactMap { if case .reference(let reference) = $0 { return reference } else { return nil } }
    }

    /// References one text may hold: each costs a scan of the text when it is filled in.
    static let maxReferences = 32

    /// Splits `text` in one pass; a `{` that does not open `{id:/pointer}` (an id, a colon, a
    /// pointer that is empty or starts with `/`, no brace inside) is literal text. Throws for a
    /// pointer that is not a JSON Pointer, or for more than `maxReferences` references.
    init(_ text: String) throws(ReferenceSyntaxError) {
        var parts: [Part] = []
        var literal = ""
        var pending: String?  // text since the last '{', while no '}' has closed it
        var referenceCount = 0
        for character in text {
            if character == "{" {
                if let open = pending { literal += "{" + open }
                pending = ""
            } else if character == "}", let open = pending {
                pending = nil
                guard let colon = open.firstIndex(of: ":"), colon != open.startIndex,
                      open[open.index(after: colon)...].isEmpty || open[open.index(after: colon)...].hasPrefix("/") else {
                    literal += "{" + open + "}"
                    continue
                }
                let pointerText = String(open[open.index(after: colon)...])
                let pointer: JSONPointer
                do { pointer = try JSONPointer(pointerText) } catch { throw ReferenceSyntaxError(message: "\(error)") }
                referenceCount += 1
                guard referenceCount <= Self.maxReferences else {
                    throw ReferenceSyntaxError(message: "more than \(Self.maxReferences) value references")
                }
                if !literal.isEmpty { parts.append(.literal(literal)) }
                literal = ""
                parts.append(.reference(Reference(text: "{" + open + "}", id: String(open[..<colon]), pointer: pointer)))
            } else if pending != nil {
                pending!.append(character)
            } else {
                literal.append(character)
            }
        }
        if let open = pending { literal += "{" + open }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        self.parts = parts
    }

    /// The text with each reference replaced by `value(reference)` (already encoded as the caller wants).
    func substitute(_ value: (Reference) throws(DependencyFailure) -> String) throws(DependencyFailure) -> String {
        var out = ""
        for part in parts {
            switch part {
            case .literal(let text): out += text
            case .reference(let reference): out += try value(reference)
            }
        }
        return out
    }
}

struct ReferenceSyntaxError: Error {
    var message: String
}

/// The answers of an item's dependencies, parsed as JSON when a reference first needs one.
struct DependencyAnswers {
    private let outcomes: [String: ItemOutcome]
    private var parsed: [String: JSONValue] = [:]

    /// `ids` and `outcomes` in the item's `dependsOn` order.
    init(ids: [String], outcomes: [ItemOutcome]) {
        var byID: [String: ItemOutcome] = [:]
        for (id, outcome) in zip(ids, outcomes) { byID[id] = outcome }
        self.outcomes = byID
    }

    /// The value `reference` points to.
    mutating func value(_ reference: ReferencedText.Reference) throws(DependencyFailure) -> JSONValue {
        let document: JSONValue
        if let known = parsed[reference.id] {
            document = known
        } else {
            guard let body = outcomes[reference.id]?.body,
                  let value = try? body.withUnsafeReadableBytes({ try JSONParser.parse($0.bindMemory(to: UInt8.self)) }) else {
                throw DependencyFailure("\(reference.text): the answer of \"\(reference.id)\" is not JSON")
            }
            parsed[reference.id] = value
            document = value
        }
        guard let found = reference.pointer.resolve(in: document) else {
            throw DependencyFailure("\(reference.text): the answer of \"\(reference.id)\" has nothing at \(reference.pointer.description.isEmpty ? "the root" : reference.pointer.description)")
        }
        return found
    }

    /// A value as text for a url segment or a header: strings, numbers and booleans only.
    mutating func text(_ reference: ReferencedText.Reference) throws(DependencyFailure) -> String {
        switch try value(reference) {
        case .string(let text): return text
        case .number(let number): return number
        case .bool(let flag): return flag ? "true" : "false"
        case let other:
            throw DependencyFailure("\(reference.text): the answer of \"\(reference.id)\" has \(other.typeName) there, not a string or number")
        }
    }
}

/// A url with value references, normalized once with a marker standing in for each reference
/// (markers are unreserved characters, which normalization leaves alone), so that the values,
/// encoded as single segments, are put into a path already checked.
struct ReferencedPath: Sendable {
    /// The upstream path and the href, with markers.
    var path: String
    var href: String
    var markers: [(marker: String, reference: ReferencedText.Reference)]

    /// Per process, so a url cannot spell a marker by chance.
    private static let token = String(UInt32.random(in: .min ... .max), radix: 36)

    static func marker(_ index: Int) -> String { "~sheaf\(token)r\(index)~" }

    /// The text with a marker in place of each reference, and which marker stands for which.
    private static func marking(_ url: ReferencedText) -> (String, [(String, ReferencedText.Reference)]) {
        var marked = ""
        var markers: [(String, ReferencedText.Reference)] = []
        for part in url.parts {
            switch part {
            case .literal(let text): marked += text
            case .reference(let reference):
                let marker = marker(markers.count)
                markers.append((marker, reference))
                marked += marker
            }
        }
        return (marked, markers)
    }

    /// A route's own template, checked when the configuration was loaded: its literal text is
    /// joined to the base path as written (as `fan_out.path` is), markers and all.
    static func make(_ url: ReferencedText, basePath: String, prevalidated: Bool) -> ReferencedPath {
        let (marked, markers) = marking(url)
        return ReferencedPath(path: basePath + marked, href: basePath + marked, markers: markers)
    }

    /// Nil, with the rejection, when the url's literal text is not a usable path.
    static func make(_ url: ReferencedText, basePath: String) -> Result<ReferencedPath, ItemPath.Rejection> {
        let (marked, markers) = marking(url)
        return ItemPath.resolve(marked, basePath: basePath).map { resolved in
            var href = resolved.href
            for (marker, reference) in markers {
                href = href.replacingOccurrences(of: marker, with: PercentEncoding.encodeSegment(reference.text))
            }
            return ReferencedPath(path: resolved.upstreamPath, href: href, markers: markers)
        }
    }
}

/// An item whose url, headers or JSON body use its dependencies' answers: everything the
/// request needs, with the references left in, until `resolve` fills them.
struct ItemTemplate: Sendable {
    var method: String
    var dependencyIDs: [String]
    var url: ReferencedPath
    var headers: [(name: String, value: ReferencedText)]
    /// Sent as it is: Sheaf's own, never holding references.
    var requestID: ItemRequestID?
    var body: ByteBuffer?
    /// A JSON body: its strings that are exactly one reference are replaced by the value.
    var jsonBody: JSONValue?

    func resolve(_ outcomes: [ItemOutcome]) -> Result<UpstreamRequest, DependencyFailure> {
        var answers = DependencyAnswers(ids: dependencyIDs, outcomes: outcomes)
        do throws(DependencyFailure) {
            // In the url, each value is one encoded path segment, under the rules template values
            // follow: `..` from an answer must not climb out of the base path.
            var path = url.path
            for (marker, reference) in url.markers {
                switch PathTemplate.segment(try answers.text(reference)) {
                case .success(let segment): path = path.replacingOccurrences(of: marker, with: segment)
                case .failure(let problem): throw DependencyFailure("\(reference.text): \(problem.reason)")
                }
            }
            // A value next to literal dots (`..{a:/v}` with "/x") is a dot segment once decoded.
            if !url.markers.isEmpty && ItemPath.hasDecodedDotSegment(path) {
                throw DependencyFailure("the url with its values, \"\(path)\", holds a dot segment once an upstream decodes %2F")
            }
            var headers: [(name: String, value: String)] = []
            for header in self.headers {
                let value = try header.value.substitute { (reference) throws(DependencyFailure) in try answers.text(reference) }
                guard value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                    throw DependencyFailure("header \(header.name) after substitution holds a control character")
                }
                headers.append((header.name, value))
            }
            var body = self.body
            if let jsonBody {
                var out = ByteBuffer()
                JSONWriter.write(try Self.substitute(jsonBody, &answers), into: &out)
                body = out
            }
            return .success(UpstreamRequest(method: method, path: path, headers: headers, body: body, requestID: requestID))
        } catch {
            return .failure(error)
        }
    }

    private static func substitute(_ value: JSONValue, _ answers: inout DependencyAnswers) throws(DependencyFailure) -> JSONValue {
        switch value {
        case .string(let text):
            guard let template = try? ReferencedText(text), template.parts.count == 1,
                  case .reference(let reference) = template.parts[0] else { return value }
            return try answers.value(reference)
        case .array(let elements):
            var out: [JSONValue] = []
            for element in elements { out.append(try substitute(element, &answers)) }
            return .array(out)
        case .object(let members):
            var out: [(key: String, value: JSONValue)] = []
            for member in members { out.append((member.key, try substitute(member.value, &answers))) }
            return .object(out)
        default:
            return value
        }
    }
}
