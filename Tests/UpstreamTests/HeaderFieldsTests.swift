import Testing
@testable import Upstream

private func appended(_ fields: [(String, [UInt8])], lowercasing: Bool = false) -> HeaderFields {
    var headers = HeaderFields()
    for (name, value) in fields {
        Array(name.utf8).withUnsafeBufferPointer { n in
            value.withUnsafeBufferPointer { v in headers.append(name: n, value: v, lowercasingName: lowercasing) }
        }
    }
    return headers
}

/// What an engine appends comes back in order, byte for byte: empty values, repeated names, a
/// value longer than 65,535 bytes, UTF-8 beyond ASCII.
@Test func fieldsComeBackAsAppendedInOrder() {
    let long = [UInt8](repeating: UInt8(ascii: "x"), count: 70_000)
    let given: [(String, [UInt8])] = [
        ("date", Array("Fri, 27 Nov 2026 05:10:00 GMT".utf8)), ("set-cookie", Array("a=1; Expires=Wed, 21 Oct 2026".utf8)),
        ("x-empty", []), ("set-cookie", Array("b=2".utf8)), ("x-long", long), ("x-name", Array("Grüße aus Köln".utf8)), ("", Array("v".utf8)),
    ]
    let headers = appended(given)
    #expect(headers.count == given.count)
    let back = Array(headers)
    #expect(back.map(\.name) == given.map(\.0))
    #expect(back.map { Array($0.value.utf8) } == given.map(\.1))
    headers.withUnsafeFields { fields in
        #expect(fields.map { Array($0.value) } == given.map(\.1))
        #expect(fields.map { $0.name.count } == given.map { $0.0.utf8.count })
    }
    #expect(headers.first("set-cookie") == "a=1; Expires=Wed, 21 Oct 2026")
    #expect(headers.first("x-empty") == "")
    #expect(headers.first("x-long")?.utf8.count == 70_000)
    #expect(headers.first("x-nam") == nil)
    #expect(headers.first("x-namf") == nil)
    #expect(!headers.contains("content-type"))
}

/// HTTP/1.1 names arrive in any case and are stored lower-case; bytes that are not UTF-8 are
/// stored repaired, so a writer may copy what it reads into a 207 as it is.
@Test func namesAreLoweredAndBrokenUTF8IsRepaired() {
    let headers = appended([("Content-Type", Array("text/plain".utf8)), ("X-Bad", [0x61, 0xFF, 0x62]),
                            ("X-\u{00C9}T\u{00C9}", Array("ok".utf8))], lowercasing: true)
    let back = Array(headers)
    #expect(back[0].name == "content-type" && back[0].value == "text/plain")
    #expect(back[1].name == "x-bad" && back[1].value == "a\u{FFFD}b")
    headers.withUnsafeFields { fields in
        for field in fields {
            #expect(String(validating: field.value, as: UTF8.self) != nil)
            #expect(String(validating: field.name, as: UTF8.self) != nil)
        }
    }
    #expect(headers.first("content-type") == "text/plain")
    // Only ASCII letters are lowered: the rest of the name stays as it came.
    #expect(back[2].name == "x-\u{00C9}t\u{00C9}")
}

/// After a 1xx answer the engines forget its fields and fill the same storage again.
@Test func removeAllForgetsEveryFieldAndTheStorageIsFilledAgain() {
    var headers: HeaderFields = [("link", "</style.css>; rel=preload")]
    headers.removeAll()
    #expect(headers.isEmpty && Array(headers).isEmpty && headers.first("link") == nil)
    headers.append(name: "Content-Type", value: "application/json")
    #expect(Array(headers).map(\.name) == ["content-type"])
    #expect(headers.first("content-type") == "application/json")
}

/// Random fields against an array of pairs: the same fields, the same first values.
@Test func randomFieldsMatchAnArrayOfPairs() {
    var generator = SystemRandomNumberGenerator()
    let names = ["a", "date", "set-cookie", "content-type", "x-custom-header-name", "etag"]
    for _ in 0..<300 {
        var reference: [(name: String, value: String)] = []
        var headers = HeaderFields()
        for _ in 0..<Int.random(in: 0...12, using: &generator) {
            let name = names.randomElement(using: &generator)!
            let value = String((0..<Int.random(in: 0...40, using: &generator)).map { _ in "abc ;=,\"é".randomElement(using: &generator)! })
            reference.append((name, value))
            headers.append(name: name, value: value)
        }
        #expect(headers.count == reference.count)
        #expect(Array(headers).map { "\($0.name):\($0.value)" } == reference.map { "\($0.name):\($0.value)" })
        for name in names { #expect(headers.first(name: name) == reference.first { $0.name == name }?.value) }
    }
}

/// Storage grows by doubling what it needs, not by doubling at every append: a check that bound
/// a second reference to the storage made every append copy it into twice the space (found when
/// an answer of 27 fields of 1 KB asked for 34 GB, and an upstream could exhaust memory).
@Test func storageGrowsInProportionToTheFields() {
    let fields = (0..<100).map { ("x-f\($0)", [UInt8](repeating: UInt8(ascii: "v"), count: 1000)) }
    let headers = appended(fields)
    let used = headers.storage!.header.used
    #expect(used == 100 * (8 + 5 + 1000) - 10)  // names x-f0...x-f9 are a byte shorter
    #expect(headers.storage!.header.capacity <= 2 * used + 64, "capacity \(headers.storage!.header.capacity) for \(used) bytes")
    // Copy on write: the copy gets storage of its own, the original keeps its fields.
    var copy = headers
    Array("x-last".utf8).withUnsafeBufferPointer { n in Array("1".utf8).withUnsafeBufferPointer { v in copy.append(name: n, value: v) } }
    #expect(copy.count == 101 && headers.count == 100)
    #expect(copy.storage!.header.capacity <= 2 * (used + 15) + 64)
}
