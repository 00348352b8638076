import Testing
@testable import Upstream

private func value(_ recent: inout RecentHeaderValues, _ name: String, _ text: String) -> String {
    Array(text.utf8).withUnsafeBufferPointer { recent.value(for: name, $0) }
}

/// What the engines report must not depend on the reuse: each answer gets its own value.
@Test func aRepeatedHeaderValueIsReportedAsItCameAndAChangedOneReplacesIt() {
    var recent = RecentHeaderValues()
    let date1 = "Thu, 26 Nov 2026 11:05:46 GMT", date2 = "Thu, 26 Nov 2026 11:05:47 GMT"
    #expect(value(&recent, "date", date1) == date1)
    #expect(value(&recent, "date", date1) == date1)
    #expect(value(&recent, "date", date2) == date2)
    #expect(value(&recent, "date", date1) == date1)
    // Same bytes under another name are that name's own value.
    #expect(value(&recent, "content-type", date2) == date2)
    #expect(value(&recent, "content-type", "application/json") == "application/json")
    #expect(value(&recent, "date", date2) == date2)
    // Short values, a longer and a shorter one with the same start, non-ASCII bytes.
    #expect(value(&recent, "server", "nginx") == "nginx")
    #expect(value(&recent, "content-type", "application/json; charset=utf-8") == "application/json; charset=utf-8")
    #expect(value(&recent, "content-type", "application/json") == "application/json")
    #expect(value(&recent, "x-name", "Grüße aus Köln, Straße 12") == "Grüße aus Köln, Straße 12")
}

@Test func namesBeyondTheKeptOnesAreStillReportedRight() {
    var recent = RecentHeaderValues()
    for round in 0..<3 {
        for n in 0..<20 {
            let text = "a value long enough to be kept #\(n) round \(round)"
            #expect(value(&recent, "x-header-\(n)", text) == text)
        }
    }
}

/// The engines decide by `isName` whether an item set `Accept`, `Content-Type`, `Host`, or a
/// per-item field: any case matches, nothing else does.
@Test func aHeaderNameMatchesInAnyCaseAndOnlyItself() {
    #expect(HTTPSyntax.isName("x-request-id", "x-request-id"))
    #expect(HTTPSyntax.isName("X-Request-ID", "x-request-id"))
    #expect(HTTPSyntax.isName("CONTENT-TYPE", "content-type"))
    #expect(!HTTPSyntax.isName("x-request-ie", "x-request-id"))
    #expect(!HTTPSyntax.isName("x-request-id2", "x-request-id"))
    #expect(!HTTPSyntax.isName("accep", "accept"))
    #expect(!HTTPSyntax.isName("", "host"))
    #expect(!HTTPSyntax.isName("hÖst", "host"))
    // A long name is stored out of line, a short one inside the string: both ways are read.
    #expect(HTTPSyntax.isName("Access-Control-Request-Headers", "access-control-request-headers"))
}

/// Every name comes back as it was given: the common ones (as literals), names of the same
/// length that differ in one byte, and names no table holds.
@Test func internedNamesAreTheNamesGiven() {
    let names = ["content-type", "content-length", "date", "server", "location", "etag", "last-modified",
                 "cache-control", "vary", "expires", "set-cookie", "content-encoding", "x-request-id",
                 "retry-after", "connection", "keep-alive", "transfer-encoding", "accept-ranges",
                 "datf", "etah", "servers", "x-custom", "", "a", "content-typf", "transfer-encodinf", "strict-transport-security"]
    for name in names {
        let interned = Array(name.utf8).withUnsafeBufferPointer { HeaderName.intern($0) }
        #expect(interned == name)
    }
}
