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

/// BoringSSL's reason codes, not NIOSSL's description of its error values.
@Test func tlsFailureDetailsAreBoringSSLsReasons() {
    let dump = "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /x/handshake.cc:320]))"
    #expect(TLSFailure.libraryReasons(dump) == "CERTIFICATE_VERIFY_FAILED")
    #expect(TLSFailure.libraryReasons("connection reset by peer") == "connection reset by peer")
}
