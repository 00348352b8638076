import Codecs
import CLibXML2
import FanOut
import Foundation
import NIOCore

/// Decodes an explicit XML batch with libxml2's streaming reader, namespace-aware, with no
/// network access, no DTD and no entity references (a DTD is refused outright, which also
/// rules out entity-expansion bombs):
///
/// ```xml
/// <S:batch xmlns:S="urn:sheaf" xmlns:D="DAV:">
///   <S:request id="a" method="DELETE"><D:href>/docs/a.pdf</D:href></S:request>
///   <S:request id="b" method="PUT"><D:href>/docs/b.txt</D:href>
///     <S:header name="Content-Type">text/plain</S:header><S:body>hello</S:body></S:request>
/// </S:batch>
/// ```
/// Elements in other namespaces are skipped; unknown `urn:sheaf` elements are errors. Fields in
/// error messages are named as in the JSON form (`requests[2].method`).
public enum XMLBatchDecoder {
    private final class ErrorSink {
        var message: String?
        var line: Int32 = 0
    }

    private struct Pending {
        var field: String
        var id: String?
        var method: String?
        var href: String?
        var headers: [(name: String, value: String)] = []
        var body: ByteBuffer?
        var dependsOn: [String] = []
    }

    private enum Capture {
        case none, href, header(String), body(base64: Bool), dependsOn
    }

    public static func decode(_ body: ByteBuffer, basePath: String, maxItems: Int,
                              headers: BatchHeaders = BatchHeaders(), coalesce: Bool = false,
                              limits: InputLimits = InputLimits()) throws(BatchError) -> [BatchItem] {
        _ = libxmlInitialized
        let sink = ErrorSink()
        let result: Result<[BatchItem], BatchError> = body.withUnsafeReadableBytes { raw in
            guard let base = raw.bindMemory(to: CChar.self).baseAddress, raw.count > 0 else {
                return .failure(.badRequest(field: "body", "empty XML document"))
            }
            if let crowded = firstCrowdedElement(in: raw) {
                return .failure(.badRequest(field: "body", crowded.problem))
            }
            let options = Int32(XML_PARSE_NONET.rawValue) | Int32(XML_PARSE_NOERROR.rawValue) | Int32(XML_PARSE_NOWARNING.rawValue)
            // Read as UTF-8 whatever the body declares: the attribute scan above reads its bytes as
            // UTF-8, and a UTF-16 name character can be a `>` byte that ended its tag early.
            guard let reader = xmlReaderForMemory(base, Int32(raw.count), nil, "UTF-8", options) else {
                return .failure(.badRequest(field: "body", "body could not be read as XML"))
            }
            defer { xmlFreeTextReader(reader) }
            let context = Unmanaged.passUnretained(sink).toOpaque()  // sink outlives the reader
            xmlTextReaderSetErrorHandler(reader, { arg, message, _, locator in
                let sink = Unmanaged<ErrorSink>.fromOpaque(arg!).takeUnretainedValue()
                guard sink.message == nil, let message else { return }
                sink.message = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
                sink.line = xmlTextReaderLocatorLineNumber(locator)
            }, context)
            return Result { () throws(BatchError) -> [BatchItem] in
                try walk(reader, sink: sink, builder: ItemBuilder(basePath: basePath, headers: headers, coalesce: coalesce,
                                                               maxItemBodyBytes: limits.maxItemBodyBytes),
                         maxItems: maxItems, maxDepth: limits.maxDepth)
            }
        }
        return try result.get()
    }

    /// Attributes one element may have; Sheaf's own elements use two, plus namespace declarations.
    static let maxAttributes = 64
    /// Namespace declarations in scope at any element (the root's `S` and `D` among them).
    static let maxNamespacesInScope = 64

    /// The first start tag with more than `maxAttributes` attributes, or with more than
    /// `maxNamespacesInScope` namespace declarations in scope, and what is wrong with it, found
    /// in one pass before libxml2 reads the body. libxml2 compares an element's attributes with
    /// each other, so 50,000 on one element held the event loop for seconds (and 8 MiB of them
    /// for hours); and it finds a prefix's namespace by walking every declaration in scope, so
    /// 3,800 of them and a body of prefixed elements held it for 11 s.
    /// Counts `=` outside quotes within a start tag, and among them the `xmlns` ones; skips
    /// comments, CDATA, processing instructions and declarations, and takes an element's
    /// declarations out of scope at its end tag. Malformed XML may be miscounted here; libxml2
    /// refuses it afterwards anyway.
    static func firstCrowdedElement(in bytes: UnsafeRawBufferPointer) -> (offset: Int, problem: String)? {
        let limit = maxAttributes
        let lt = UInt8(ascii: "<"), gt = UInt8(ascii: ">")
        func starts(_ text: StaticString, at i: Int) -> Bool {
            let count = text.utf8CodeUnitCount
            guard i + count <= bytes.count else { return false }
            for k in 0..<count where bytes[i + k] != text.utf8Start[k] { return false }
            return true
        }
        /// Index just past the first `terminator` at or after `i` (or the end).
        func skip(to terminator: StaticString, from i: Int) -> Int {
            var j = i
            while j < bytes.count {
                if bytes[j] == terminator.utf8Start[0] && starts(terminator, at: j) { return j + terminator.utf8CodeUnitCount }
                j += 1
            }
            return bytes.count
        }
        /// Whether the attribute whose `=` is at `equals` is a namespace declaration (`xmlns` or `xmlns:p`).
        func declaresNamespace(_ equals: Int) -> Bool {
            func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }
            var end = equals
            while end > 0, isSpace(bytes[end - 1]) { end -= 1 }
            var begin = end
            // A name holds none of these: the walk back is never longer than the name.
            func endsName(_ byte: UInt8) -> Bool {
                isSpace(byte) || byte == UInt8(ascii: "<") || byte == UInt8(ascii: "=") || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'")
            }
            while begin > 0, !endsName(bytes[begin - 1]) { begin -= 1 }
            guard starts("xmlns", at: begin) else { return false }
            return end - begin == 5 || bytes[begin + 5] == UInt8(ascii: ":")
        }
        // Open elements, and the declarations of those that made any: (depth, count).
        var depth = 0
        var declaring: [(depth: Int, count: Int)] = []
        var inScope = 0
        var i = 0
        while i < bytes.count {
            guard bytes[i] == lt else { i += 1; continue }
            let start = i
            if starts("<!--", at: i) { i = skip(to: "-->", from: i + 4); continue }
            if starts("<![CDATA[", at: i) { i = skip(to: "]]>", from: i + 9); continue }
            if starts("<?", at: i) { i = skip(to: "?>", from: i + 2); continue }
            if starts("</", at: i) {
                i = skip(to: ">", from: i + 2)
                depth -= 1
                if let last = declaring.last, last.depth == depth {
                    declaring.removeLast()
                    inScope -= last.count
                }
                continue
            }
            if starts("<!", at: i) { i = skip(to: ">", from: i + 2); continue }
            var attributes = 0, declarations = 0
            var quote: UInt8 = 0
            var closedItself = false
            i += 1
            while i < bytes.count {
                let byte = bytes[i]
                i += 1
                if quote != 0 {
                    if byte == quote { quote = 0 }
                } else if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                    quote = byte
                } else if byte == UInt8(ascii: "=") {
                    attributes += 1
                    if attributes > limit {
                        return (start, "an XML element (at byte \(start)) has more than \(limit) attributes")
                    }
                    if declaresNamespace(i - 1) { declarations += 1 }
                } else if byte == gt || byte == lt {
                    closedItself = byte == gt && bytes[i - 2] == UInt8(ascii: "/")
                    break
                }
            }
            if inScope + declarations > maxNamespacesInScope {
                return (start, "an XML element (at byte \(start)) has more than \(maxNamespacesInScope) namespace declarations in scope")
            }
            if closedItself { continue }
            if declarations > 0 {
                declaring.append((depth, declarations))
                inScope += declarations
            }
            depth += 1
        }
        return nil
    }

    private static func string(_ pointer: UnsafePointer<xmlChar>?) -> String? {
        pointer.map { String(cString: $0) }
    }

    private static func walk(_ reader: xmlTextReaderPtr, sink: ErrorSink, builder: ItemBuilder,
                             maxItems: Int, maxDepth: Int) throws(BatchError) -> [BatchItem] {
        var builder = builder
        var sawRoot = false
        var pending: Pending?
        var capture = Capture.none
        var skipping: Int32?
        var text = ""
        var index = 0

        func finishCapture() throws(BatchError) {
            // Taken out, not copied: with `pending` still holding it, every header appended
            // copied the whole list first (25,000 S:header took 7 s on the event loop).
            guard var item = pending.take() else { return }
            switch capture {
            case .none: break
            case .href:
                guard item.href == nil else { throw .badRequest(field: "\(item.field).url", "more than one D:href") }
                item.href = text.trimmingCharacters(in: .whitespacesAndNewlines)
            case .header(let name):
                item.headers.append((name, text))
            case .dependsOn:
                let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
                guard !id.isEmpty else { throw .badRequest(field: "\(item.field).dependsOn", "S:depends-on must name an item id") }
                guard item.dependsOn.count < 64 else { throw .badRequest(field: "\(item.field).dependsOn", "more than 64 S:depends-on") }
                item.dependsOn.append(id)
            case .body(let base64):
                var buffer = ByteBuffer()
                if base64 {
                    guard let bytes = Base64.decode(text) else {
                        throw .badRequest(field: "\(item.field).body", "not valid base64")
                    }
                    buffer.writeBytes(bytes)
                } else {
                    buffer.writeString(text)
                }
                item.body = buffer
            }
            pending = item
            capture = .none
            text = ""
        }

        func finishRequest() throws(BatchError) {
            guard let item = pending else { return }
            pending = nil
            try builder.add(field: item.field, id: item.id, method: item.method, url: item.href,
                            headers: item.headers, body: item.body, bodyIsJSON: false, dependsOn: item.dependsOn)
        }

        while true {
            let status = xmlTextReaderRead(reader)
            if status == 0 { break }
            if status < 0 {
                let where_ = sink.line > 0 ? " (line \(sink.line))" : ""
                throw .badRequest(field: "body", "body is not well-formed XML: \(sink.message ?? "parse error")\(where_)")
            }
            let type = xmlTextReaderNodeType(reader)
            // Inside an element in another namespace: read through it (not skipped with
            // xmlTextReaderNext, so its depth is checked too), until it ends.
            if let ignoring = skipping {
                let depth = xmlTextReaderDepth(reader)
                if type == Int32(XML_READER_TYPE_ELEMENT.rawValue), Int(depth) >= maxDepth {
                    throw BatchError(status: 400, field: "body", "XML nested deeper than \(maxDepth) levels", limit: "max_nesting_depth")
                }
                if type == Int32(XML_READER_TYPE_END_ELEMENT.rawValue), depth == ignoring { skipping = nil }
                continue
            }
            switch xmlReaderTypes(rawValue: UInt32(type)) {
            case XML_READER_TYPE_DOCUMENT_TYPE:
                throw .badRequest(field: "body", "a DTD (<!DOCTYPE>) is not allowed in a batch")
            case XML_READER_TYPE_ENTITY_REFERENCE, XML_READER_TYPE_ENTITY:
                throw .badRequest(field: "body", "entity references are not allowed in a batch")
            case XML_READER_TYPE_ELEMENT:
                let depth = xmlTextReaderDepth(reader)
                if Int(depth) >= maxDepth { throw BatchError(status: 400, field: "body", "XML nested deeper than \(maxDepth) levels", limit: "max_nesting_depth") }
                let local = string(xmlTextReaderConstLocalName(reader)) ?? ""
                let namespace = string(xmlTextReaderConstNamespaceUri(reader)) ?? ""
                let empty = xmlTextReaderIsEmptyElement(reader) == 1
                if depth == 0 {
                    guard namespace == XMLNamespace.sheaf, local == "batch" else {
                        throw .badRequest(field: "body", "root element must be batch in namespace urn:sheaf, got {\(namespace)}\(local)")
                    }
                    sawRoot = true
                } else if depth == 1 {
                    guard namespace == XMLNamespace.sheaf else {
                        if !empty { skipping = depth }
                        continue
                    }
                    guard local == "request" else {
                        throw .badRequest(field: "body", "unknown element S:\(local) in S:batch (expected S:request)")
                    }
                    guard index < maxItems else {
                        throw .tooManyItems(field: "requests", maxItems: maxItems)
                    }
                    let field = "requests[\(index)]"
                    index += 1
                    var item = Pending(field: field)
                    if xmlTextReaderMoveToFirstAttribute(reader) == 1 {
                        repeat {
                            let name = string(xmlTextReaderConstLocalName(reader)) ?? ""
                            let attributeNamespace = string(xmlTextReaderConstNamespaceUri(reader)) ?? ""
                            let value = string(xmlTextReaderConstValue(reader)) ?? ""
                            guard attributeNamespace.isEmpty else { continue }
                            switch name {
                            case "id": item.id = value
                            case "method": item.method = value
                            default: throw .badRequest(field: "\(field).\(name)", "unknown attribute (expected id, method)")
                            }
                        } while xmlTextReaderMoveToNextAttribute(reader) == 1
                        xmlTextReaderMoveToElement(reader)
                    }
                    pending = item
                    if empty { try finishRequest() }
                } else if depth == 2, let item = pending {
                    switch (namespace, local) {
                    case (XMLNamespace.dav, "href"):
                        capture = .href
                    case (XMLNamespace.sheaf, "header"):
                        let name = string(xmlTextReaderGetAttributeNoNsCopy(reader, "name")) ?? ""
                        guard !name.isEmpty else { throw .badRequest(field: "\(item.field).headers", "S:header without a name attribute") }
                        capture = .header(name)
                    case (XMLNamespace.sheaf, "body"):
                        let encoding = string(xmlTextReaderGetAttributeNoNsCopy(reader, "encoding"))
                        guard encoding == nil || encoding == "base64" else {
                            throw .badRequest(field: "\(item.field).body", "encoding must be base64 when given")
                        }
                        capture = .body(base64: encoding == "base64")
                    case (XMLNamespace.sheaf, "depends-on"):
                        capture = .dependsOn
                    case (XMLNamespace.sheaf, _):
                        throw .badRequest(field: item.field, "unknown element S:\(local) (expected D:href, S:header, S:body, S:depends-on)")
                    default:
                        if !empty { skipping = depth }
                        continue
                    }
                    text = ""
                    if empty { try finishCapture() }
                }
            case XML_READER_TYPE_TEXT, XML_READER_TYPE_CDATA, XML_READER_TYPE_SIGNIFICANT_WHITESPACE, XML_READER_TYPE_WHITESPACE:
                if case .none = capture { continue }
                text += string(xmlTextReaderConstValue(reader)) ?? ""
            case XML_READER_TYPE_END_ELEMENT:
                let depth = xmlTextReaderDepth(reader)
                if depth == 2 { try finishCapture() }
                if depth == 1 { try finishRequest() }
            default:
                continue
            }
        }
        if let message = sink.message {
            throw .badRequest(field: "body", "body is not well-formed XML: \(message) (line \(sink.line))")
        }
        guard sawRoot else { throw .badRequest(field: "body", "empty XML document") }
        return try builder.finish()
    }
}

/// `xmlTextReaderGetAttributeNo` returns a copy the caller frees; this reads it without a leak.
private func xmlTextReaderGetAttributeNoNsCopy(_ reader: xmlTextReaderPtr, _ name: String) -> UnsafePointer<xmlChar>? {
    guard xmlTextReaderMoveToAttribute(reader, name) == 1 else { return nil }
    defer { xmlTextReaderMoveToElement(reader) }
    return xmlTextReaderConstValue(reader)
}
