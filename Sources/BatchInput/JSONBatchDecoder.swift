import Codecs
import FanOut
import NIOCore

/// Decodes the two JSON request forms: a route template over an array in the body, and the
/// explicit `{"requests":[...]}` batch.
public enum JSONBatchDecoder {
    /// Parses the body, stopping with the 413 as soon as the item array (at `items`, JSON
    /// Pointer tokens) has more than `maxItems` elements: the rest is never read.
    static func parse(_ body: ByteBuffer, items: [String], field: String, maxItems: Int, maxDepth: Int) throws(BatchError) -> JSONValue {
        do {
            return try body.withUnsafeReadableBytes { raw in
                try JSONParser.parse(raw.bindMemory(to: UInt8.self), countingArrayAt: items, upTo: maxItems, maxDepth: maxDepth,
                                     uniqueNames: true)
            }
        } catch is JSONParser.TooManyElements {
            throw .tooManyItems(field: field, maxItems: maxItems)
        } catch let error as JSONParser.Error where error.duplicate != nil {
            // Named as the explicit form names its fields: requests[0].method.
            var name = ""
            for (index, token) in error.duplicate!.enumerated() {
                if index == 1, Int(token) != nil { name += "[\(token)]" } else { name += (name.isEmpty ? "" : ".") + token }
            }
            throw duplicateName(error, field: name)
        } catch let error as JSONParser.Error {
            throw BatchError(status: 400, field: "body", "body is not valid JSON: \(error)", limit: error.tooDeep ? "max_nesting_depth" : nil)
        } catch {
            throw .badRequest(field: "body", "body is not valid JSON")
        }
    }

    /// A member name given twice in one object (`JSONParser`'s `uniqueNames`).
    static func duplicateName(_ error: JSONParser.Error, field: String?) -> BatchError {
        BatchError(status: 400, field: field, "\(error.message): readers disagree on which one counts (RFC 8259 §4)")
    }

    /// The template form: one upstream request per element of the array at `template.items`.
    /// The whole body at once, through the same reader a streamed body goes through.
    public static func decode(_ body: ByteBuffer, template: FanOutTemplate, basePath: String,
                              maxItems: Int, headers: BatchHeaders = BatchHeaders(), coalesce: Bool = false,
                              limits: InputLimits = InputLimits()) throws(BatchError) -> [BatchItem] {
        var decoder = StreamingTemplateDecoder(template: template, basePath: basePath, maxItems: maxItems, headers: headers,
                                               coalesce: coalesce, limits: limits, streamed: false)
        var (items, error) = decoder.feed(body)
        if let error { throw error }
        let (rest, failure) = decoder.finish()
        if let failure { throw failure }
        // Unstreamed, every item comes from finish(): handed over, not copied element by element.
        if items.isEmpty { return rest }
        items += rest
        return items
    }

    /// The explicit form: `{"requests":[{"id":"a","method":"GET","url":"/users/1","headers":{},"body":...}]}`.
    public static func decodeExplicit(_ body: ByteBuffer, basePath: String, maxItems: Int,
                                      headers: BatchHeaders = BatchHeaders(), coalesce: Bool = false,
                                      limits: InputLimits = InputLimits()) throws(BatchError) -> [BatchItem] {
        let document = try parse(body, items: ["requests"], field: "requests", maxItems: maxItems, maxDepth: limits.maxDepth)
        guard case .object(let members) = document else {
            throw .badRequest(field: "body", "must be a JSON object with a \"requests\" array, got \(document.typeName)")
        }
        for member in members where member.key != "requests" {
            throw .badRequest(field: member.key, "unknown field (a batch has only \"requests\")")
        }
        guard let requests = document["requests"] else { throw .badRequest(field: "requests", "missing") }
        guard case .array(let elements) = requests else {
            throw .badRequest(field: "requests", "must be an array, got \(requests.typeName)")
        }
        var builder = ItemBuilder(basePath: basePath, expectedCount: elements.count, headers: headers, coalesce: coalesce,
                                  maxItemBodyBytes: limits.maxItemBodyBytes)
        for (index, element) in elements.enumerated() {
            let field = "requests[\(index)]"
            guard case .object(let fields) = element else {
                throw .badRequest(field: field, "must be an object, got \(element.typeName)")
            }
            var id: String?, method: String?, url: String?
            var headers: [(name: String, value: String)] = []
            var itemBody: ByteBuffer?
            var bodyIsJSON = false
            var jsonBody: JSONValue?
            var dependsOn: [String] = []
            for (key, value) in fields {
                switch key {
                case "id":
                    switch value {
                    case .string(let s): id = s
                    case .number(let n) where !n.contains(".") && !n.contains("e") && !n.contains("E"): id = n
                    default: throw .badRequest(field: "\(field).id", "must be a string, got \(value.typeName)")
                    }
                case "method":
                    guard case .string(let s) = value else { throw .badRequest(field: "\(field).method", "must be a string, got \(value.typeName)") }
                    method = s
                case "url":
                    guard case .string(let s) = value else { throw .badRequest(field: "\(field).url", "must be a string, got \(value.typeName)") }
                    url = s
                case "headers":
                    guard case .object(let pairs) = value else { throw .badRequest(field: "\(field).headers", "must be an object, got \(value.typeName)") }
                    for (name, headerValue) in pairs {
                        guard case .string(let s) = headerValue else {
                            throw .badRequest(field: "\(field).headers.\(name)", "must be a string, got \(headerValue.typeName)")
                        }
                        headers.append((name, s))
                    }
                case "body":
                    var buffer = ByteBuffer()
                    switch value {
                    case .string(let s): buffer.writeString(s)
                    case .null: continue
                    default:
                        JSONWriter.write(value, into: &buffer)
                        bodyIsJSON = true
                        jsonBody = value
                    }
                    itemBody = buffer
                case "dependsOn":
                    guard case .array(let ids) = value else {
                        throw .badRequest(field: "\(field).dependsOn", "must be an array of item ids, got \(value.typeName)")
                    }
                    guard ids.count <= 64 else {
                        throw .badRequest(field: "\(field).dependsOn", "names \(ids.count) items; at most 64")
                    }
                    for (position, entry) in ids.enumerated() {
                        guard case .string(let id) = entry, !id.isEmpty else {
                            throw .badRequest(field: "\(field).dependsOn[\(position)]", "must be an item id (a non-empty string)")
                        }
                        dependsOn.append(id)
                    }
                default:
                    throw .badRequest(field: "\(field).\(key)", "unknown field (expected id, method, url, headers, body, dependsOn)")
                }
            }
            try builder.add(field: field, id: id, method: method, url: url, headers: headers, body: itemBody, bodyIsJSON: bodyIsJSON,
                            dependsOn: dependsOn, jsonBody: jsonBody)
        }
        return try builder.finish()
    }
}

/// Decodes a template route's body as it arrives: each element of the array at `template.items`
/// becomes an item as soon as it is complete (`JSONArrayStream`), so a batch of any size is
/// never held whole. An error ends the decoding; the items built before it are still returned.
public struct StreamingTemplateDecoder {
    private var stream: JSONArrayStream
    private var builder: ItemBuilder
    private let template: FanOutTemplate
    private let pointer: String
    private let field: String
    private let maxItems: Int
    private var failure: BatchError?

    /// `streamed`: items leave with each `feed` (the builder keeps bounded state); otherwise
    /// they are all returned by `finish`, coalesced across the whole batch.
    public init(template: FanOutTemplate, basePath: String, maxItems: Int, headers: BatchHeaders = BatchHeaders(),
                coalesce: Bool = false, limits: InputLimits = InputLimits(), streamed: Bool = true) {
        self.template = template
        self.pointer = template.items.description
        self.field = pointer.isEmpty ? "body" : pointer
        self.maxItems = maxItems
        self.stream = JSONArrayStream(path: template.items.tokens, maxElements: maxItems, maxDepth: limits.maxDepth)
        self.builder = ItemBuilder(basePath: basePath, headers: headers, coalesce: coalesce, streamed: streamed)
        self.streamed = streamed
    }

    private let streamed: Bool

    /// Elements read so far.
    public var count: Int { stream.elements }

    /// The items whose elements completed in `part`, and the error that stopped the decoding, if one did.
    public mutating func feed(_ part: ByteBuffer) -> (items: [BatchItem], error: BatchError?) {
        guard failure == nil else { return ([], failure) }
        var elements: [(Int, JSONValue)] = []
        do throws(JSONArrayStream.Failure) {
            try part.withUnsafeReadableBytes { raw throws(JSONArrayStream.Failure) in
                try stream.feed(raw) { index, value in elements.append((index, value)) }
            }
        } catch {
            failure = batchError(error)
        }
        return build(elements)
    }

    /// The body ended: the last items, and what was wrong with the body, if anything.
    public mutating func finish() -> (items: [BatchItem], error: BatchError?) {
        guard failure == nil else { return ([], failure) }
        var elements: [(Int, JSONValue)] = []
        do throws(JSONArrayStream.Failure) {
            try stream.finish { index, value in elements.append((index, value)) }
        } catch {
            failure = batchError(error)
        }
        var (items, error) = build(elements)
        if error == nil && !streamed {
            do throws(BatchError) { items = try builder.finish() } catch { failure = error }
        }
        return (items, failure)
    }

    private mutating func build(_ elements: [(Int, JSONValue)]) -> (items: [BatchItem], error: BatchError?) {
        builder.reserve(additional: elements.count)
        // An element error found after a syntax error further on still comes first: it is earlier in the body.
        for (index, element) in elements {
            switch template.path.expand(element, at: "\(pointer)/\(index)") {
            case .success(let path):
                builder.addTemplated(path: path, method: template.method, headers: template.headers, then: template.then)
            case .failure(let error):
                failure = error
                return (streamed ? builder.drain() : [], error)
            }
        }
        return (streamed ? builder.drain() : [], failure)
    }

    private func batchError(_ failure: JSONArrayStream.Failure) -> BatchError {
        switch failure {
        case .syntax(let error) where error.duplicate != nil:
            return JSONBatchDecoder.duplicateName(error, field: error.duplicatePointer)
        case .syntax(let error):
            return BatchError(status: 400, field: "body", "body is not valid JSON: \(error)", limit: error.tooDeep ? "max_nesting_depth" : nil)
        case .tooManyElements:
            return .tooManyItems(field: field, maxItems: maxItems)
        case .notFound:
            return .badRequest(field: field, "not found in the body")
        case .notAnArray(let typeName):
            return .badRequest(field: field, "must be an array, got \(typeName)")
        }
    }
}
