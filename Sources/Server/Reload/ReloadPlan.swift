import Config
import Upstream

/// What a reload changes, decided from the running and the new configuration alone (no I/O):
/// which upstream pools carry over, which are started, which drain and close. Settings that the
/// bound listener fixed cannot change without a restart; such a file is refused whole.
struct ReloadPlan: Equatable {
    /// Same configuration and same TLS files: the running transport (and its connections) serve on.
    var kept: [String] = []
    /// New, or changed: a transport is built for it.
    var started: [String] = []
    /// Removed, or changed: the old transport finishes the batches that use it, then closes.
    var retired: [String] = []

    /// A valid file that cannot be applied to the running process.
    struct Refusal: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    /// `filesChanged(name)`: whether the TLS files the upstream reads changed on disk since its
    /// transport was built (a renewed client certificate makes it a changed upstream).
    static func make(from old: SheafConfiguration, to new: SheafConfiguration,
                     filesChanged: (String) -> Bool) throws(Refusal) -> ReloadPlan {
        if new.listen != old.listen {
            throw Refusal(description: "listen changed from \(old.listen) to \(new.listen); that takes a restart")
        }
        if (new.tls == nil) != (old.tls == nil) {
            throw Refusal(description: "tls was \(old.tls == nil ? "added" : "removed"); switching the listener between TLS and cleartext takes a restart")
        }
        if new.tracing != old.tracing {
            throw Refusal(description: "tracing changed; the exporter is set up at start, so that takes a restart")
        }
        if new.demoUpstream != old.demoUpstream {
            throw Refusal(description: "demo_upstream changed; that takes a restart")
        }
        var plan = ReloadPlan()
        for upstream in new.upstreams {
            if let running = old.upstream(named: upstream.name) {
                if running == upstream && !filesChanged(upstream.name) {
                    plan.kept.append(upstream.name)
                } else {
                    plan.started.append(upstream.name)
                    plan.retired.append(upstream.name)
                }
            } else {
                plan.started.append(upstream.name)
            }
        }
        for upstream in old.upstreams where new.upstream(named: upstream.name) == nil {
            plan.retired.append(upstream.name)
        }
        return plan
    }
}
