import Codecs
import NIOCore
import TextBytes

/// Writes XML straight into the 207's bytes, escaped as libxml2's text writer escaped (but `"`
/// is left alone in text, where XML does not need it escaped: JSON bodies are full of them),
/// without libxml2's allocations per element: the XML 207 had cost 2.5× the JSON one per item
/// in the pipeline benchmark (issue 13). An item's XML is gathered in a `ByteScratch` and reaches
/// the 207 in one write.
/// Element names are static; text and attribute values go through `withXMLText`, so the 207
/// stays well-formed whatever a client or an upstream sent.
struct XMLTextWriter {
    /// Open elements, innermost last.
    private var open: [StaticString] = []
    /// The innermost start tag still lacks its ">": ending it now writes "<name/>".
    private var tagPending = false

    init() {
        open.reserveCapacity(8)
    }

    static func declaration(into out: inout ByteScratch) {
        out.appendStatic("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
    }

    mutating func start(_ name: StaticString, into out: inout ByteScratch) {
        if tagPending {
            out.writeStatic(">", "<", name)
            tagPending = false
        } else {
            out.writeStatic("<", name)
        }
        open.append(name)
        tagPending = true
    }

    /// ` name="value"` on the start tag just written.
    mutating func attribute(_ name: StaticString, _ value: String, into out: inout ByteScratch) {
        precondition(tagPending, "an attribute after the start tag was closed")
        out.writeStatic(" ", name, "=\"")
        Self.escaped(value, attribute: true, into: &out)
        out.appendByte(UInt8(ascii: "\""))
    }

    /// ` name="value"` from UTF-8 bytes.
    mutating func attribute(_ name: StaticString, bytes value: UnsafeBufferPointer<UInt8>, into out: inout ByteScratch) {
        precondition(tagPending, "an attribute after the start tag was closed")
        out.writeStatic(" ", name, "=\"")
        Self.escaped(value, attribute: true, into: &out)
        out.appendByte(UInt8(ascii: "\""))
    }

    mutating func text(_ value: String, into out: inout ByteScratch) {
        closeTag(&out)
        Self.escaped(value, attribute: false, into: &out)
    }

    mutating func text<Out: ByteOutput>(bytes: UnsafeBufferPointer<UInt8>, into out: inout Out) {
        closeTag(&out)
        Self.escaped(bytes, attribute: false, into: &out)
    }

    /// Text written as is: only for what needs no escape (base64).
    mutating func raw<Out: ByteOutput>(_ value: String, into out: inout Out) {
        closeTag(&out)
        out.appendUTF8(value)
    }

    mutating func end(into out: inout ByteScratch) {
        let name = open.removeLast()
        if tagPending {
            out.appendStatic("/>")
            tagPending = false
        } else {
            out.writeStatic("</", name, ">")
        }
    }

    /// `<name>content</name>`: the tag pair even when the content is empty.
    mutating func element(_ name: StaticString, _ content: String, into out: inout ByteScratch) {
        start(name, into: &out)
        text(content, into: &out)
        end(into: &out)
    }

    private mutating func closeTag<Out: ByteOutput>(_ out: inout Out) {
        if tagPending {
            out.appendByte(UInt8(ascii: ">"))
            tagPending = false
        }
    }

    private static func escaped<Out: ByteOutput>(_ value: String, attribute: Bool, into out: inout Out) {
        value.withUTF8Bytes { escaped($0, attribute: attribute, into: &out) }
    }

    /// The leading run of plain ASCII (nothing to escape or replace) is found a word at a time
    /// and copied as is; the rest, from the first byte that may need work, goes the long way.
    /// Splitting there changes nothing: every byte before it is ASCII, so it starts a character.
    private static func escaped<Out: ByteOutput>(_ bytes: UnsafeBufferPointer<UInt8>, attribute: Bool, into out: inout Out) {
        let plain = PlainRun.end(in: bytes, from: 0, stops: attribute ? PlainRun.xmlAttribute : PlainRun.xmlText,
                                 stopAtNonASCII: true)
        if plain > 0 { out.appendBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes)[0..<plain])) }
        guard plain < bytes.count else { return }
        withXMLText(UnsafeBufferPointer(rebasing: bytes[plain...])) { escape($0, attribute: attribute, into: &out) }
    }

    /// libxml2's escapes: `& < >` everywhere and `"` in attributes, CR as a character reference
    /// (so a parser does not fold it into LF), and in attributes tab and LF too (so value
    /// normalization keeps them). Measured first, then written in one go.
    private static func escape<Out: ByteOutput>(_ bytes: UnsafeBufferPointer<UInt8>, attribute: Bool, into out: inout Out) {
        var length = bytes.count
        for byte in bytes { length += reference(for: byte, attribute: attribute).utf8CodeUnitCount }
        guard length > bytes.count else {
            out.appendBytes(UnsafeRawBufferPointer(bytes))
            return
        }
        out.append(upTo: length) { raw in
            let target = raw.bindMemory(to: UInt8.self)
            var at = 0
            for byte in bytes {
                let entity = reference(for: byte, attribute: attribute)
                if entity.utf8CodeUnitCount == 0 {
                    target[at] = byte
                    at += 1
                } else {
                    for i in 0..<entity.utf8CodeUnitCount { target[at + i] = entity.utf8Start[i] }
                    at += entity.utf8CodeUnitCount
                }
            }
            return at
        }
    }

    /// The reference that stands for `byte`, or "" when it stands for itself.
    @inline(__always)
    private static func reference(for byte: UInt8, attribute: Bool) -> StaticString {
        switch byte {
        case UInt8(ascii: "&"): return "&amp;"
        case UInt8(ascii: "<"): return "&lt;"
        case UInt8(ascii: ">"): return "&gt;"
        case 0x0D: return "&#13;"
        case UInt8(ascii: "\"") where attribute: return "&quot;"
        case 0x0A where attribute: return "&#10;"
        case 0x09 where attribute: return "&#9;"
        default: return ""
        }
    }

    /// Every text that enters the 207 passes here: ids, reasons and urls can hold whatever a
    /// client sent, headers and bodies whatever an upstream sent. XML 1.0 (§2.2 Char) cannot
    /// carry C0 controls other than tab, LF and CR, nor U+FFFE or U+FFFF, even escaped; those and
    /// invalid UTF-8 become U+FFFD. Clean text, the common case, is passed without a copy.
    static func withXMLText<R>(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        if isXMLText(bytes) { return body(bytes) }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
            UTF8.encode(isXMLChar(scalar.value) ? scalar : "\u{FFFD}") { out.append($0) }
        }
        return out.withUnsafeBufferPointer(body)
    }

    /// The common case, checked without decoding: valid UTF-8 with no code point XML forbids.
    private static func isXMLText(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        for i in bytes.indices {
            let byte = bytes[i]
            if byte < 0x20 && byte != 0x09 && byte != 0x0A && byte != 0x0D { return false }
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            if byte == 0xEF, i + 2 < bytes.count, bytes[i + 1] == 0xBF, bytes[i + 2] & 0xFE == 0xBE { return false }
        }
        return JSONParser.isValidUTF8(bytes)
    }

    private static func isXMLChar(_ value: UInt32) -> Bool {
        switch value {
        case 0x09, 0x0A, 0x0D, 0x20...0xD7FF, 0xE000...0xFFFD, 0x10000...0x10FFFF: return true
        default: return false
        }
    }
}

extension ByteScratch {
    /// Two or three static strings.
    fileprivate func writeStatic(_ a: StaticString, _ b: StaticString, _ c: StaticString = "") {
        appendStatic(a)
        appendStatic(b)
        if c.utf8CodeUnitCount > 0 { appendStatic(c) }
    }
}
