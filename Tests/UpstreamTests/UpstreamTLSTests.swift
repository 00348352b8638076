import Testing
@testable import Upstream

/// The name check Sheaf adds on top of swift-nio-ssl's (which also accepts a certificate whose IP
/// address SAN matches the connected address, whatever name was asked for).
struct UpstreamTLSNameTests {
    @Test func aNameMatchesExactlyOrThroughOneWildcardLabel() {
        #expect(UpstreamTLS.certificateNames(["api.example.com"], match: "API.example.com"))
        #expect(UpstreamTLS.certificateNames(["api.example.com."], match: "api.example.com"))
        #expect(UpstreamTLS.certificateNames(["*.example.com"], match: "api.example.com"))
        #expect(!UpstreamTLS.certificateNames(["*.example.com"], match: "a.b.example.com"))
        #expect(!UpstreamTLS.certificateNames(["*.example.com"], match: "example.com"))
        #expect(!UpstreamTLS.certificateNames(["localhost"], match: "wrong.example"))
        #expect(!UpstreamTLS.certificateNames(["*"], match: "localhost"))
        #expect(!UpstreamTLS.certificateNames(["api*.example.com"], match: "api1.example.com"))
    }
}
