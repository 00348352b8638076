import BatchInput
import FanOut
import Testing

private func rejection(_ url: String) -> String? {
    if case .failure(let rejection) = ItemPath.resolve(url, basePath: "/api") { return rejection.description }
    return nil
}

// nginx decodes %2F (and %5C on some servers) before it resolves dot segments, so each of these
// reached /secret instead of a path under /api.
@Test(arguments: [
    ("/x/..%2f..%2fsecret", "%2f"), ("/x/..%2F..%2Fsecret", "%2F"), ("/%2e%2e%2fsecret", "%2f"),
    ("/x/%2e%2e%2f%2e%2e%2fsecret", "%2f"), ("/x/..%5c..%5csecret", "%5c"), ("/x/..%5C..%5Csecret", "%5C"),
    ("/users/a%2Fb", "%2F"),
])
func encodedSlashesInThePathAreRefused(url: String, sequence: String) {
    let reason = rejection(url)
    let separator = sequence.lowercased() == "%2f" ? "slash" : "backslash"
    #expect(reason == "url contains an encoded \(separator) (\"\(sequence)\"), which upstreams may decode into a path separator")
}

@Test func encodedSlashesInTheQueryAreKept() throws {
    let resolved = try ItemPath.resolve("/login?next=%2Fhome%2F..%5Cx", basePath: "/api").get()
    #expect(resolved.upstreamPath == "/api/login?next=%2Fhome%2F..%5Cx")
}

@Test(arguments: ["/%2e%2e", "/a/%2E%2e/b", "/a/.%2e", "/a/%2e"])
func encodedDotSegmentsAreRefused(url: String) {
    #expect(rejection(url)?.hasPrefix("url contains an encoded dot segment") == true)
}

@Test func encodedDotsInsideALongerSegmentAreOrdinaryBytes() throws {
    #expect(try ItemPath.resolve("/files/%2e%2e%2e", basePath: "/api").get().upstreamPath == "/api/files/%2e%2e%2e")
    #expect(try ItemPath.resolve("/files/a%2e%2ejson", basePath: "/api").get().upstreamPath == "/api/files/a%2e%2ejson")
}

// Found by the FuzzPaths fuzz target: dot segments removed in front of an empty segment left an
// href starting with "//", a network-path reference that a client resolving the 207's hrefs
// would read as another host.
@Test(arguments: ["/.//evil.example/x", "/a/..//evil.example/x", "/.//'9u1%7e"])
func dotSegmentsCannotLeaveANetworkPathReference(url: String) {
    #expect(rejection(url)?.contains("network-path reference") == true)
}

@Test func anEmptySegmentAfterTheFirstIsKept() throws {
    #expect(try ItemPath.resolve("/a//b/./c", basePath: "/api").get().href == "/a//b/c")
}
