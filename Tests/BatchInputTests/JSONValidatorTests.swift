import PropertyBased
import Testing
@testable import Codecs

/// The reference: a document is valid when the parser builds it.
private func parses(_ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBufferPointer { (try? JSONParser.parse($0)) != nil }
}

private func validates(_ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBufferPointer { JSONValidator.isValid($0) }
}

/// Inputs at each rule's edge: both must say the same of every one.
@Test(arguments: [
    "", " ", "0", "-0", "01", "-", "1.", "1.5", ".5", "1e", "1e5", "1E+5", "1e-0", "-1.2E-3", "2x", "1 2",
    "true", "tru", "truex", "false", "null", "nul", "\"\"", "\"a", "\"\\\"\"", "\"\\/\"", "\"\\q\"", "\"\\u00e9\"",
    "\"\\u00G9\"", "\"\\ud83d\\ude00\"", "\"\\ud83d\"", "\"\\ud83dx\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"", "\"\\u12\"",
    "{}", "[]", "{ }", "[ ]", "[,]", "[1,]", "[1,,2]", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":}", "{1:2}", "{\"a\":1 \"b\":2}",
    "[1]]", "[[1]", "{\"a\":[{},[]]}", "[{\"a\":{\"b\":[null,true,false,\"x\",-1.5e3]}}]", "\t\n\r [1] \t\n\r",
    "{\"a\":1}x", "]", "}", "[}", "{]", "\"tab\there\"", "\"nl\nhere\"", "\u{7F}", "\"\u{7F}\"", "\"é ü 😀\"",
] as [String])
func validatorAgreesWithTheParserAtTheEdges(text: String) {
    let bytes = Array(text.utf8)
    #expect(validates(bytes) == parses(bytes), "\(text.debugDescription)")
}

@Test func validatorAgreesOnBytesThatAreNotUTF8() {
    let cases: [[UInt8]] = [
        [0x22, 0xC3, 0xA9, 0x22],              // é
        [0x22, 0xC0, 0xAF, 0x22],              // overlong
        [0x22, 0xE0, 0x80, 0xAF, 0x22],        // overlong, 3 bytes
        [0x22, 0xED, 0xA0, 0x80, 0x22],        // an encoded surrogate
        [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],  // past U+10FFFF
        [0x22, 0xF0, 0x9F, 0x98, 0x80, 0x22],  // 😀
        [0x22, 0xF0, 0x9F, 0x98, 0x22],        // cut short
        [0x22, 0x80, 0x22], [0x22, 0xFF, 0x22], [0xEF, 0xBB, 0xBF, 0x31],
    ]
    for bytes in cases { #expect(validates(bytes) == parses(bytes), "\(bytes)") }
}

@Test func validatorKeepsTheParsersNestingLimit() {
    for depth in [63, 64, 65, 100] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let bytes = Array((String(repeating: open, count: depth) + "1" + String(repeating: close, count: depth)).utf8)
            #expect(validates(bytes) == parses(bytes), "depth \(depth) \(open)")
        }
    }
    #expect(validates(Array((String(repeating: "[", count: 64) + String(repeating: "]", count: 64)).utf8)))
}

/// Token soup: strings of JSON's own pieces, most of them invalid in some small way.
@Test func validatorAgreesWithTheParserOnGeneratedDocuments() async {
    let pieces = ["{", "}", "[", "]", ",", ":", " ", "\"k\"", "\"\\u00e9\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\n\"", "1", "-",
                  "0", ".5", "e3", "true", "null", "fals", "\"", "\\", "é", "\u{01}", "x"]
    await propertyCheck(count: 2000, input: Gen.element(of: pieces).compactMap { $0 }.array(of: 0...14)) { chosen in
        let bytes = Array(chosen.joined().utf8)
        #expect(validates(bytes) == parses(bytes), "\(chosen.joined().debugDescription)")
    }
}
