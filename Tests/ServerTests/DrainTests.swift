import Config
import Logging
import NIOCore
import NIOHTTP1
import Server
import Testing

@Test func readyzAnswers503OnceDrainingStarts() {
    let configuration = SheafConfiguration(listen: HostPort(host: "127.0.0.1", port: 1), upstreams: [], routes: [])
    let service = try! SheafService(configuration: configuration, transports: [:], metrics: SheafMetrics(), logger: Logger(label: "test"))
    func status(_ path: String) -> HTTPResponseStatus? {
        guard case .respond(let response) = service.decide(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: ["host": "sheaf"]),
                                                                 from: ClientConnection(address: nil, secure: false)) else { return nil }
        return response.status
    }
    #expect(status("/readyz") == .ok)
    service.startDraining()
    #expect(status("/readyz") == .serviceUnavailable)
    #expect(status("/healthz") == .ok)  // alive, just not taking work
}
