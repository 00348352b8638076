import BatchInput
import Codecs
import NIOCore
import Testing

@Test func parsesNestedDocumentsKeepingNumbersAndOrder() throws {
    let value = try JSONParser.parse(#"{"b":[1,2.50,-3e2],"a":{"x":null,"y":true},"s":"h\u00e9\ud83d\ude00\n"}"#)
    guard case .object(let members) = value else { Issue.record("not an object"); return }
    #expect(members.map(\.key) == ["b", "a", "s"])
    #expect(value["b"] == .array([.number("1"), .number("2.50"), .number("-3e2")]))
    #expect(value["s"] == .string("hé😀\n"))
    #expect(value.serialized == #"{"b":[1,2.50,-3e2],"a":{"x":null,"y":true},"s":"hé😀\n"}"#)
}

@Test(arguments: [
    ("{", "unexpected end"), ("[1,]", "unexpected character"), ("01", "leading zero"), ("[-01]", "leading zero"), ("1.", "a digit must follow '.'"), ("[1e]", "a digit must follow the exponent"), ("-", "a digit must follow '-'"), ("\"a", "unterminated"),
    ("{\"a\" 1}", "expected ':'"), ("\"\\ud800\"", "unpaired surrogate"), ("[1] x", "unexpected data"),
    ("\"\u{01}\"", "control character"), ("tru", "unexpected end"),
])
func rejectsMalformedJSON(input: String, message: String) {
    #expect {
        try JSONParser.parse(input)
    } throws: { error in
        (error as? JSONParser.Error)?.message.contains(message) == true
    }
}

@Test func limitsNestingDepth() {
    let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
    #expect(throws: JSONParser.Error.self) { try JSONParser.parse(deep) }
    let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
    #expect((try? JSONParser.parse(fine)) != nil)
}

@Test func validatesWithoutBuilding() {
    for (text, valid) in [("{\"a\":[1,2,{\"b\":\"c\"}]}", true), ("{\"a\":", false), ("", false), (" 3 ", true)] {
        let ok = Array(text.utf8).withUnsafeBufferPointer { JSONParser.isValid($0) }
        #expect(ok == valid, "\(text)")
    }
}

@Test func writerEscapesStrings() {
    var out = ByteBuffer()
    JSONWriter.writeString("a\"b\\c\n\u{01}é", into: &out)
    #expect(String(buffer: out) == #""a\"b\\c\n\u0001é""#)
}

/// U+2028, U+2029 and U+0085 are valid raw in JSON, but readers that split NDJSON on every line
/// break (Python's `splitlines`, editors) cut a record at them: they are written escaped. Other
/// characters that share their first bytes (`—`, `©`) stay as they are.
@Test func writerEscapesUnicodeLineBreaks() {
    var out = ByteBuffer()
    JSONWriter.writeString("a\u{2028}b\u{2029}c\u{85}d—e©f\u{2028}", into: &out)
    #expect(String(buffer: out) == #""a\u2028b\u2029c\u0085d—e©f\u2028""#)
    #expect(!String(buffer: out).contains { $0.isNewline })
}

/// Both ways through the writer, the one-write path for strings that need no escape and the
/// escaping one, round-trip through the parser; and numbers are written without a String.
@Test func writerRoundTripsPlainAndEscapedStrings() throws {
    for text in ["", "a", "plain id 42", "/users/1", String(repeating: "x", count: 5000), "tab\there", "q\"", "\\", "é ü 😀", "x\u{2028}\u{2029}\u{85}y", "—©"] {
        var out = ByteBuffer()
        JSONWriter.writeString(text, into: &out)
        #expect(try JSONParser.parse(String(buffer: out)) == .string(text), "\(text.prefix(20))")
    }
    for value in [0, 7, 10, 200, 599, 1_234_567, Int.max, -5] {
        var out = ByteBuffer()
        JSONWriter.writeDecimal(value, into: &out)
        #expect(String(buffer: out) == String(value))
    }
}

@Test func jsonPointerResolves() throws {
    let doc = try JSONParser.parse(#"{"data":{"ids":[10,20]},"a/b":1,"m~n":2}"#)
    #expect(try JSONPointer("/data/ids/1").resolve(in: doc) == .number("20"))
    #expect(try JSONPointer("/a~1b").resolve(in: doc) == .number("1"))
    #expect(try JSONPointer("/m~0n").resolve(in: doc) == .number("2"))
    #expect(try JSONPointer("").resolve(in: doc) == doc)
    #expect(try JSONPointer("/data/ids/2").resolve(in: doc) == nil)
    #expect(try JSONPointer("/data/ids/01").resolve(in: doc) == nil)
    #expect(throws: JSONPointer.SyntaxError.self) { try JSONPointer("ids") }
    #expect(throws: JSONPointer.SyntaxError.self) { try JSONPointer("/a~2") }
}
