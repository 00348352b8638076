import Config
import NIOHTTP1
@testable import Server
import Testing

@Test func tokensAreComparedByDigest() {
    let tokens = TokenSet(["alpha-token", "beta"])
    #expect(tokens.accepts("alpha-token"))
    #expect(tokens.accepts("beta"))
    #expect(!tokens.accepts("alpha-tokeN"))
    #expect(!tokens.accepts("alpha"))
    #expect(!tokens.accepts(""))
    #expect(!TokenSet([]).accepts("anything"))
}

@Test func theGuardReadsBearerOrTheAPIKeyHeader() throws {
    let file = "/tmp/sheaf-guard-test-tokens"
    try "t0ken\n".write(toFile: file, atomically: true, encoding: .utf8)
    let bearer = try RouteGuard(RouteAuth(tokensFile: file))
    #expect(bearer.check(["authorization": "Bearer t0ken"]) == nil)
    #expect(bearer.check(["authorization": "bearer   t0ken"]) == nil)
    #expect(bearer.check(["authorization": "Bearer nope"]) == .invalid)
    #expect(bearer.check(["authorization": "Basic dDBrZW4="]) == .missing)
    #expect(bearer.check([:]) == .missing)
    #expect(bearer.challenge(.invalid) == "Bearer realm=\"sheaf\", error=\"invalid_token\"")
    let key = try RouteGuard(RouteAuth(tokensFile: file, apiKeyHeader: "X-Api-Key"))
    #expect(key.check(["x-api-key": "t0ken"]) == nil)
    #expect(key.check(["authorization": "Bearer t0ken"]) == .missing)
    #expect(key.challenge(.missing) == "ApiKey realm=\"sheaf\", header=\"X-Api-Key\"")
}
