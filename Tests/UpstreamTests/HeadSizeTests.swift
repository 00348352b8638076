import NIOCore
import Testing
import Upstream

@Test func headTooLargeNamesTheSizeAndTheLimit() {
    var configuration = UpstreamConfiguration(name: "legacy", endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: 80, basePath: ""))
    configuration.maxRequestHeaderBytes = 1000
    let small = UpstreamRequest(method: "GET", path: "/a", headers: [("x", "y")])
    #expect(configuration.headTooLarge(small) == nil)
    let big = UpstreamRequest(method: "GET", path: "/a", headers: [("x-big", String(repeating: "v", count: 2000))])
    let error = configuration.headTooLarge(big)
    #expect(error?.status == 431)
    #expect(error?.message.contains("max_request_header_bytes (1000)") == true)
    #expect(error?.attempts == 0)
    let peer = configuration.headTooLarge(UpstreamRequest(method: "GET", path: "/a", headers: [("x", String(repeating: "v", count: 600))]),
                                          peerLimit: 500)
    #expect(peer?.message.contains("SETTINGS_MAX_HEADER_LIST_SIZE") == true)
}

@Test(arguments: ["127.0.0.1", "::1", "api.example.com", "fe80::1:2"])
func theAuthoritysSizeIsCountedWithoutBuildingIt(host: String) {
    for port in [1, 9, 10, 99, 100, 443, 999, 1000, 8080, 9999, 10000, 65535] {
        let endpoint = UpstreamEndpoint(scheme: "http", host: host, port: port, basePath: "")
        #expect(endpoint.authorityByteCount == endpoint.authority.utf8.count, "\(host):\(port)")
    }
}
