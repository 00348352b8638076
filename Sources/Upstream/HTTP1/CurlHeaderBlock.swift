import CCurlShim
import Glibc
import TextBytes

/// A request's header fields as the `curl_slist` CURLOPT_HTTPHEADER reads, laid out in one
/// allocation: the list's nodes first, then their NUL-terminated lines. Built from the
/// request's UTF-8 bytes without a Swift string per line, and freed with one `free` of the first
/// node; `curl_slist_append` cost two allocations a line and a C-string copy of each interpolated
/// String, about a tenth of the curl thread's own work per item (issue 13).
enum CurlHeaderBlock {
    /// The list for `request`, with curl's own defaults turned off where the item has no field of
    /// its own (no `Accept: */*`, no form Content-Type, no `Expect: 100-continue`), and `host`
    /// added when the request does not name one. Free the result with `free`.
    static func make(for request: UpstreamRequest, host: String?) -> UnsafeMutablePointer<curl_slist> {
        var hasAccept = false, hasContentType = false, hasHost = false
        // One pass, no lower-cased copies (issue 13); the request id is none of these.
        func look(at name: String) {
            if !hasAccept { hasAccept = HTTPSyntax.isName(name, "accept") }
            if !hasContentType { hasContentType = HTTPSyntax.isName(name, "content-type") }
            if !hasHost { hasHost = HTTPSyntax.isName(name, "host") }
        }
        for header in request.batchHeaders { look(at: header.name) }
        for header in request.headers { look(at: header.name) }
        let host = hasHost ? nil : host
        // Every line, once to count its bytes and once to write it: one description of both.
        func eachLine(_ body: (_ name: String, _ separator: StaticString, _ value: String?, _ valueTail: String?) -> Void) {
            func field(_ name: String, _ value: String) {
                // curl drops "Name:" with a blank value (that is how one removes its own headers);
                // "Name;" is its syntax for a header sent empty.
                if isBlank(value) { body(name, ";", nil, nil) } else { body(name, ": ", value, nil) }
            }
            for header in request.batchHeaders { field(header.name, header.value) }
            for header in request.headers { field(header.name, header.value) }
            // Its two parts written one after the other, not joined first (never blank).
            if let id = request.requestID { body(ItemRequestID.name, ": ", id.prefix, id.suffix) }
            // No "Expect: 100-continue" round trip. No Accept or Content-Type the item does not
            // have: curl adds "Accept: */*", and labels a body application/x-www-form-urlencoded.
            body("Expect", ":", nil, nil)
            if !hasAccept { body("accept", ":", nil, nil) }
            if !hasContentType { body("content-type", ":", nil, nil) }
            if let host { body("Host", ": ", host, nil) }
        }
        var lines = 0, bytes = 0
        eachLine { name, separator, value, valueTail in
            lines += 1
            bytes += name.utf8.count + separator.utf8CodeUnitCount + (value?.utf8.count ?? 0) + (valueTail?.utf8.count ?? 0) + 1  // NUL
        }
        let nodeBytes = lines * MemoryLayout<curl_slist>.stride
        let block = malloc(nodeBytes + bytes)!
        let nodes = block.bindMemory(to: curl_slist.self, capacity: lines)
        var writer = Writer(nodes: nodes, text: (block + nodeBytes).assumingMemoryBound(to: UInt8.self))
        eachLine { name, separator, value, valueTail in writer.line(name, separator: separator, value, valueTail) }
        precondition(writer.count == lines && writer.text == (block + nodeBytes + bytes).assumingMemoryBound(to: UInt8.self),
                     "header block laid out other than counted")
        nodes[lines - 1].next = nil
        return nodes
    }

    private static func isBlank(_ value: String) -> Bool {
        value.withUTF8Bytes { $0.allSatisfy { $0 == 0x20 || $0 == 0x09 } }
    }

    /// Appends lines and links each node to the next.
    private struct Writer {
        let nodes: UnsafeMutablePointer<curl_slist>
        var text: UnsafeMutablePointer<UInt8>
        var count = 0

        mutating func line(_ name: String, separator: StaticString, _ value: String?, _ valueTail: String?) {
            let start = text
            copy(name)
            text.update(from: separator.utf8Start, count: separator.utf8CodeUnitCount)
            text += separator.utf8CodeUnitCount
            if let value { copy(value) }
            if let valueTail { copy(valueTail) }
            text.pointee = 0
            text += 1
            nodes[count].data = UnsafeMutableRawPointer(start).assumingMemoryBound(to: CChar.self)
            if count > 0 { nodes[count - 1].next = nodes + count }
            count += 1
        }

        private mutating func copy(_ string: String) {
            string.withUTF8Bytes { bytes in
                if let base = bytes.baseAddress { text.update(from: base, count: bytes.count) }
                text += bytes.count
            }
        }
    }
}
