import Testing
@testable import Upstream

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

/// Connection's options: every field and every comma-separated entry, blanks around it dropped,
/// in lower case; empty entries and other fields' values are not options.
@Test func connectionOptionsAreEveryListedNameInLowerCase() {
    let fields: [(name: String, value: String)] = [
        ("connection", " X-Hop ,\tkeep-alive"), ("X-Other", "x-not-an-option"), ("CONNECTION", "x-second,,  ")]
    #expect(HTTPSyntax.connectionOptions(fields) == ["x-hop", "keep-alive", "x-second"])
    #expect(HTTPSyntax.connectionOptions([(name: String, value: String)]()).isEmpty)
}
