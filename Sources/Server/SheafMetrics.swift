import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import Upstream

/// Sheaf's Prometheus metrics. Label sets are cached so the item path does one dictionary
/// lookup under a lock per distinct (route, status) per batch, not a registry lookup per item.
public final class SheafMetrics: @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let lock = NIOLock()
    private var batchCounters: [String: Counter] = [:]
    private var itemCounters: [String: Counter] = [:]
    private var itemHistograms: [String: ValueHistogram] = [:]
    private var batchHistograms: [String: DurationHistogram] = [:]
    private var resendCounters: [String: Counter] = [:]
    private var lostCounters: [String: Counter] = [:]
    private var stallCounters: [String: Counter] = [:]
    private var coalescedCounters: [String: Counter] = [:]
    private var authCounters: [String: Counter] = [:]
    private var limitCounters: [String: Counter] = [:]
    private var tlsFailureCounters: [String: Counter] = [:]
    private var retryCounters: [String: Counter] = [:]
    private var budgetCounters: [String: Counter] = [:]
    private var transitionCounters: [String: Counter] = [:]
    private var goawayCounters: [String: Counter] = [:]
    private var upstreamHistograms: [String: ValueHistogram] = [:]
    private var engineGauges: [String: Gauge] = [:]
    /// The engine gauges the scrape in progress set; the others (an upstream a reload removed, a
    /// protocol `auto` moved away from) are unregistered rather than left at a stale value.
    private var touchedGauges: Set<String> = []
    /// Read at each scrape: what the engines hold now, and each circuit's state.
    private var watched: [(name: String, transport: UpstreamTransport)] = []
    private let inFlight: Gauge
    private let refusedConnections: Counter
    private let reloadCounters: [String: Counter]
    private let lastReloadSuccess: Gauge
    private let lastReloadSuccessful: Gauge
    private let accessLogDrops: Counter

    static let itemBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    ]
    /// `itemBuckets` in seconds. The per-item histograms hold `Double`s: a `Duration` histogram
    /// compared each observation with every bound through the runtime's 128-bit `Duration.<`, a
    /// call apiece, twice per item (issue 13). The bounds print the same either way ("0.001").
    static let itemBucketSeconds: [Double] = itemBuckets.map(seconds)

    /// A duration in seconds.
    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// What the per-item histograms record for an item that took `nanoseconds`. Both sides are
    /// correctly rounded doubles, so an item of exactly a bound's length counts in that bound's
    /// bucket, and one a nanosecond longer does not, as with `Duration`s.
    public static func seconds(nanoseconds: UInt64) -> Double {
        Double(nanoseconds) / 1e9
    }

    static let batchBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
        .seconds(10), .seconds(30), .seconds(60),
    ]

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "sheaf", metricName: metric, unitName: unit, helpText: help)
    }

    public init() {
        inFlight = registry.makeGauge(descriptor: Self.name("items", "in_flight",
            "Items accepted by Sheaf whose outcome is not known yet"))
        refusedConnections = registry.makeCounter(descriptor: Self.name("connections_refused", "total",
            "Client connections refused at accept because their address held max_connections_per_client"))
        // Every outcome exists from the start, so `increase(...[1h]) > 0` sees the first failure.
        var reloads: [String: Counter] = [:]
        for outcome in ["success", "invalid", "failed"] {
            reloads[outcome] = registry.makeCounter(descriptor: Self.name("config_reloads", "total",
                "Configuration reloads (SIGHUP) by outcome: success, invalid (the file has problems), failed (valid but not applicable)"),
                labels: [("outcome", outcome)])
        }
        reloadCounters = reloads
        lastReloadSuccess = registry.makeGauge(descriptor: Self.name("config_last_reload_success_timestamp", "seconds",
            "Unix time the running configuration was loaded (at start, or by the last successful reload)"))
        lastReloadSuccessful = registry.makeGauge(descriptor: Self.name("config_last_reload_successful", "",
            "1 if the last reload (or the start) applied its file, 0 if it was refused"))
        accessLogDrops = registry.makeCounter(descriptor: Self.name("access_log_dropped", "total",
            "Access log lines dropped because the log's writer fell more than 4 MiB behind (a stalled disk)"))
        configurationLoaded()
    }

    /// An access log line was dropped: the log's writer was more than its buffer behind.
    public func accessLogDropped() {
        accessLogDrops.increment()
    }

    /// The running configuration was loaded: at start, or by a successful reload.
    public func configurationLoaded(reload: Bool = false) {
        if reload { reloadCounters["success"]?.increment() }
        lastReloadSuccess.set(to: Date().timeIntervalSince1970)
        lastReloadSuccessful.set(to: 1)
    }

    /// A reload was refused: `outcome` is invalid or failed; the running configuration stays.
    public func reloadRefused(outcome: String) {
        reloadCounters[outcome]?.increment()
        lastReloadSuccessful.set(to: 0)
    }

    /// A batch ended: outcome is complete, partial, failed, rejected or cancelled.
    public func batchFinished(route: String, outcome: String, duration: Duration?) {
        let (counter, histogram) = lock.withLock { () -> (Counter, DurationHistogram?) in
            let key = route + "\u{0}" + outcome
            let counter = batchCounters[key] ?? {
                let c = registry.makeCounter(descriptor: Self.name("batches", "total", "Bulk requests by route and outcome"),
                                             labels: [("route", route), ("outcome", outcome)])
                batchCounters[key] = c
                return c
            }()
            guard duration != nil else { return (counter, nil) }
            let histogram = batchHistograms[route] ?? {
                let h = registry.makeDurationHistogram(
                    descriptor: Self.name("batch_duration", "seconds", "Time from a bulk request's arrival to the end of its 207"),
                    labels: [("route", route)], buckets: Self.batchBuckets)
                batchHistograms[route] = h
                return h
            }()
            return (counter, histogram)
        }
        counter.increment()
        if let duration { histogram?.record(duration) }
    }

    public func itemsAccepted(_ count: Int) {
        inFlight.increment(by: Double(count))
    }

    /// One item got its outcome.
    public func itemSettled() {
        inFlight.decrement()
    }

    /// The latency histogram of a route's items; fetched once per batch, recorded into per item.
    public func itemHistogram(route: String) -> ValueHistogram {
        lock.withLock {
            cachedHistogram(&itemHistograms, "item_duration", "Time from an item's start to its outcome", label: ("route", route))
        }
    }

    /// The item-bucket histogram of `metric` for one label value, made on first use. Called under `lock`.
    private func cachedHistogram(_ cache: inout [String: ValueHistogram], _ metric: String, _ help: String,
                                 label: (String, String)) -> ValueHistogram {
        if let histogram = cache[label.1] { return histogram }
        let histogram = registry.makeValueHistogram(descriptor: Self.name(metric, "seconds", help), labels: [label],
                                                    buckets: Self.itemBucketSeconds)
        cache[label.1] = histogram
        return histogram
    }

    /// Items by status, added once per batch from the batch's own tally.
    public func itemsCounted(route: String, statusCounts: [Int: Int]) {
        let counters = lock.withLock { () -> [(Counter, Int)] in
            statusCounts.map { status, count in
                let key = route + "\u{0}" + String(status)
                let counter = itemCounters[key] ?? {
                    let c = registry.makeCounter(
                        descriptor: Self.name("items", "total", "Items by route and the status each item got (upstream's or Sheaf's)"),
                        labels: [("route", route), ("status", String(status))])
                    itemCounters[key] = c
                    return c
                }()
                return (counter, count)
            }
        }
        for (counter, count) in counters { counter.increment(by: Int64(count)) }
    }

    /// Re-sends (items sent again after a connection closed under them unprocessed) and items
    /// the fan-out watchdog settled because their transport lost them, added once per batch.
    public func transportTally(upstream: String, resends: Int, lost: Int) {
        guard resends > 0 || lost > 0 else { return }
        let (resent, lostCounter) = lock.withLock { () -> (Counter, Counter) in
            (cachedCounter(&resendCounters, "upstream_resends", "Item requests sent again to an upstream after it left them unprocessed",
                           label: ("upstream", upstream)),
             cachedCounter(&lostCounters, "items_lost", "Items a transport never reported, settled 502 by the fan-out watchdog",
                           label: ("upstream", upstream)))
        }
        if resends > 0 { resent.increment(by: Int64(resends)) }
        if lost > 0 { lostCounter.increment(by: Int64(lost)) }
    }

    /// A request refused for passing a limit; `limit` is its config key (max_url_bytes, max_items, ...).
    public func limitRefused(_ limit: String) {
        let counter = lock.withLock {
            cachedCounter(&limitCounters, "limit_refusals", "Requests refused for passing a limit, by the limit's config key",
                          label: ("limit", limit))
        }
        counter.increment()
    }

    /// A bulk request refused by its route's `auth`: `reason` is missing or invalid.
    public func authRefused(route: String, reason: String) {
        let counter = lock.withLock {
            cachedCounter(&authCounters, "auth_refusals", "Bulk requests refused with 401 by their route's auth, by reason (missing, invalid)",
                          labels: [("route", route), ("reason", reason)])
        }
        counter.increment()
    }

    /// Items of a batch that reported an identical earlier item's outcome instead of calling.
    public func itemsCoalesced(route: String, count: Int) {
        guard count > 0 else { return }
        let counter = lock.withLock {
            cachedCounter(&coalescedCounters, "items_coalesced", "Items that made no upstream call because an identical GET or HEAD in the same batch did",
                          label: ("route", route))
        }
        counter.increment(by: Int64(count))
    }

    /// A client stopped reading its 207 for client_timeout: the batch was cancelled, the connection closed.
    public func clientStalled(route: String) {
        let counter = lock.withLock {
            cachedCounter(&stallCounters, "client_stalls", "Bulk requests cancelled because the client took no byte of the 207 for client_timeout",
                          label: ("route", route))
        }
        counter.increment()
    }

    /// A client connection refused at accept: its address already held max_connections_per_client.
    public func connectionRefused() {
        refusedConnections.increment()
    }

    /// The transports whose gauges (connections, streams, queue, circuit) each scrape reads.
    public func watch(_ transports: [String: UpstreamTransport]) {
        lock.withLock { watched = transports.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
    }

    /// What transports report (retries, the budget, circuit transitions, GOAWAYs, TLS
    /// failures), counted here.
    public var upstreamEvents: UpstreamEvents {
        var events = UpstreamEvents()
        events.tlsFailure = { [weak self] upstream, kind in self?.tlsFailure(upstream: upstream, kind: kind) }
        events.retry = { [weak self] upstream, reason in
            self?.count(\.retryCounters, "upstream_retries", "Item requests sent again by the retry policy, by what failed",
                        labels: [("upstream", upstream), ("reason", reason)])
        }
        events.retryBudgetExhausted = { [weak self] upstream in
            self?.count(\.budgetCounters, "upstream_retry_budget_exhausted", "Retries the policy wanted and the retry budget refused",
                        labels: [("upstream", upstream)])
        }
        events.circuitTransition = { [weak self] upstream, _, to in
            self?.count(\.transitionCounters, "upstream_circuit_transitions", "Circuit breaker state changes, by the state entered",
                        labels: [("upstream", upstream), ("to", to.rawValue)])
        }
        events.goaway = { [weak self] upstream in
            self?.count(\.goawayCounters, "upstream_goaways", "HTTP/2 GOAWAY frames received from upstreams",
                        labels: [("upstream", upstream)])
        }
        return events
    }

    private func count(_ cache: ReferenceWritableKeyPath<SheafMetrics, [String: Counter]>, _ metric: String, _ help: String,
                       labels: [(String, String)]) {
        let counter = lock.withLock { cachedCounter(&self[keyPath: cache], metric, help, labels: labels) }
        counter.increment()
    }

    /// The duration histogram of an upstream's requests (hand-over to outcome, retries included).
    public func upstreamHistogram(upstream: String) -> ValueHistogram {
        lock.withLock {
            cachedHistogram(&upstreamHistograms, "upstream_request_duration",
                            "Time from an item's hand-over to an upstream to its outcome, retries included", label: ("upstream", upstream))
        }
    }

    /// Called under `lock` before each scrape.
    private func refreshGauges() {
        touchedGauges.removeAll(keepingCapacity: true)
        defer {
            for (key, gauge) in engineGauges where !touchedGauges.contains(key) {
                registry.unregisterGauge(gauge)
                engineGauges[key] = nil
            }
        }
        for (name, transport) in watched {
            for engine in transport.gauges {
                let labels = [("upstream", name), ("protocol", engine.protocolName)]
                gauge("upstream_connections", "Open connections to an upstream, by protocol", labels).set(to: Double(engine.connections.load(ordering: .relaxed)))
                gauge("upstream_streams_in_use", "Requests on the wire to an upstream (HTTP/2 streams, HTTP/1.1 transfers on a connection)", labels)
                    .set(to: Double(engine.streams.load(ordering: .relaxed)))
                gauge("upstream_queued_items", "Items waiting for a stream or a connection to an upstream", labels)
                    .set(to: Double(engine.queued.load(ordering: .relaxed)))
            }
            if let resilient = transport as? ResilientTransport, resilient.configuration.circuitBreaker != nil {
                let now = resilient.circuitState
                for state in CircuitBreaker.State.allCases {
                    gauge("upstream_circuit_state", "1 for the state an upstream's circuit breaker is in (closed, open, half_open), 0 for the others",
                          [("upstream", name), ("state", state.rawValue)]).set(to: state == now ? 1.0 : 0.0)
                }
            }
        }
    }

    private func gauge(_ metric: String, _ help: String, _ labels: [(String, String)]) -> Gauge {
        let key = metric + "\u{0}" + labels.map(\.1).joined(separator: "\u{0}")
        touchedGauges.insert(key)
        if let gauge = engineGauges[key] { return gauge }
        let gauge = registry.makeGauge(descriptor: Self.name(metric, "", help), labels: labels)
        engineGauges[key] = gauge
        return gauge
    }

    /// A TLS connection to an upstream failed (both engines classify the failure the same way).
    public func tlsFailure(upstream: String, kind: TLSFailureKind) {
        let counter = lock.withLock {
            cachedCounter(&tlsFailureCounters, "upstream_tls_failures",
                          "TLS connections to an upstream that failed, by kind (certificate, hostname, alpn, handshake)",
                          labels: [("upstream", upstream), ("kind", kind.rawValue)])
        }
        counter.increment()
    }

    /// The counter of `metric` for one label value, made on first use. Called under `lock`.
    private func cachedCounter(_ cache: inout [String: Counter], _ metric: String, _ help: String,
                               label: (String, String)) -> Counter {
        cachedCounter(&cache, metric, help, labels: [label])
    }

    private func cachedCounter(_ cache: inout [String: Counter], _ metric: String, _ help: String,
                               labels: [(String, String)]) -> Counter {
        let key = labels.map(\.1).joined(separator: "\u{0}")
        if let counter = cache[key] { return counter }
        let counter = registry.makeCounter(descriptor: Self.name(metric, "total", help), labels: labels)
        cache[key] = counter
        return counter
    }

    /// Prometheus text exposition format.
    public func render() -> ByteBuffer {
        lock.withLock { refreshGauges() }
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return ByteBuffer(bytes: bytes)
    }
}
