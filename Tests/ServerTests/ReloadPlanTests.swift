import Config
@testable import Server
import Testing
import Upstream

private func configuration(listen: Int = 8080, _ upstreams: [UpstreamConfiguration]) -> SheafConfiguration {
    SheafConfiguration(listen: HostPort(host: "127.0.0.1", port: listen), upstreams: upstreams, routes: [])
}

private func upstream(_ name: String, port: Int = 9000, timeout: Int64 = 5) -> UpstreamConfiguration {
    UpstreamConfiguration(name: name, endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: port, basePath: ""),
                          timeout: .seconds(timeout))
}

@Test func reloadKeepsUnchangedPoolsAndReplacesChangedOnes() throws {
    let old = configuration([upstream("same"), upstream("changed"), upstream("gone")])
    let new = configuration([upstream("same"), upstream("changed", timeout: 7), upstream("added")])
    let plan = try ReloadPlan.make(from: old, to: new) { _ in false }
    #expect(plan == ReloadPlan(kept: ["same"], started: ["changed", "added"], retired: ["changed", "gone"]))
}

@Test func renewedTLSFilesMakeAnUpstreamChanged() throws {
    let old = configuration([upstream("a"), upstream("b")])
    let plan = try ReloadPlan.make(from: old, to: old) { $0 == "b" }
    #expect(plan == ReloadPlan(kept: ["a"], started: ["b"], retired: ["b"]))
}

@Test func listenerSettingsFixedAtBindRefuseTheReload() {
    let old = configuration([upstream("a")])
    #expect(throws: ReloadPlan.Refusal(description: "listen changed from 127.0.0.1:8080 to 127.0.0.1:8081; that takes a restart")) {
        try ReloadPlan.make(from: old, to: configuration(listen: 8081, [upstream("a")])) { _ in false }
    }
    var tls = old
    tls.tls = FrontTLSConfiguration(certificate: "c.pem", privateKey: "k.pem")
    #expect(throws: ReloadPlan.Refusal.self) { try ReloadPlan.make(from: old, to: tls) { _ in false } }
    var traced = old
    traced.tracing = TracingConfiguration(otlpEndpoint: "http://127.0.0.1:4318/v1/traces")
    #expect(throws: ReloadPlan.Refusal.self) { try ReloadPlan.make(from: old, to: traced) { _ in false } }
    var demo = old
    demo.demoUpstream = HostPort(host: "127.0.0.1", port: 9090)
    #expect(throws: ReloadPlan.Refusal(description: "demo_upstream changed; that takes a restart")) {
        try ReloadPlan.make(from: old, to: demo) { _ in false }
    }
}
