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
                try JSONParser.parse(raw.bindMemory(to: UInt8.self), countingArrayAt: items, upTo: maxItems, maxDepth: maxDepth)
            }
        } catch is JSONParser.TooManyElements {
            throw .tooManyItems(field: field, maxItems: maxItems)
        } catch let error as JSONParser.Error {
            throw BatchError(status: 400, field: nil, "body is not valid JSON: \(error)", limit: error.tooDeep ? "max_nesting_depth" : nil)
        } catch {
            throw .badRequest("body is not valid JSON")
        }
    }

    /// The template form: one upstream request per element of the array at `template.items`.
    public static func decode(_ body: ByteBuffer, template: FanOutTemplate, basePath: String,
                              maxItems: Int, headers: BatchHeaders = BatchHeaders(), coalesce: Bool = false,
                              limits: InputLimits = InputLimits()) throws(BatchError) -> [BatchItem] {
        let pointer = template.items.description
        let field = pointer.isEmpty ? "body" : pointer
        let document = try parse(body, items: template.items.tokens, field: field, maxItems: maxItems, maxDepth: limits.maxDepth)
        guard let target = template.items.resolve(in: document) else {
            throw .badRequest(field: field, "not found in the body")
        }
        guard case .array(let elements) = target else {
            throw .badRequest(field: field, "must be an array, got \(target.typeName)")
        }
        var builder = ItemBuilder(basePath: basePath, expectedCount: elements.count, headers: headers, coalesce: coalesce)
        for (index, element) in elements.enumerated() {
            switch template.path.expand(element, at: "\(pointer)/\(index)") {
            case .success(let path):
                builder.addTemplated(path: path, method: template.method, headers: template.headers, then: template.then)
            case .failure(let error):
                throw error
            }
        }
        return try builder.finish()
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
