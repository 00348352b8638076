import NIOCore

/// One upstream's circuit as a value: closed (items go, outcomes are counted over the window)
/// → open when the window's failure ratio reaches the threshold (items fail at once, nothing is
/// sent) → half-open after `openFor` (a few probe items go; all succeeding closes the circuit,
/// one failing opens it again). No clock of its own: callers pass the time.
public struct CircuitBreaker: Sendable {
    public enum State: String, Sendable, CaseIterable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    /// Whether an item may go to the upstream.
    public enum Admission: Equatable, Sendable {
        case allowed
        /// Allowed as one of the half-open circuit's probes; report its outcome with `probe: true`.
        case probe
        case rejected
    }

    /// Probe items a half-open circuit lets through, and must all succeed to close.
    static let probes = 3

    let configuration: CircuitBreakerConfiguration
    public private(set) var state = State.closed
    private var openUntil = NIODeadline.uptimeNanoseconds(0)
    private var outcomes: SlidingWindow
    private var failures: SlidingWindow
    private var probesOut = 0
    private var probesSucceeded = 0

    init(configuration: CircuitBreakerConfiguration) {
        self.configuration = configuration
        outcomes = SlidingWindow(window: configuration.window)
        failures = SlidingWindow(window: configuration.window)
    }

    /// The state change an event caused, for metrics and the log.
    public struct Transition: Equatable, Sendable {
        public var from: State
        public var to: State
    }

    /// The state as an operator should see it at `now`: an open circuit whose `open_for` has
    /// passed lets its next item through as a probe, so it is half-open even before one arrives.
    public func state(at now: NIODeadline) -> State {
        state == .open && now >= openUntil ? .halfOpen : state
    }

    mutating func admit(now: NIODeadline) -> (Admission, Transition?) {
        switch state {
        case .closed:
            return (.allowed, nil)
        case .open:
            guard now >= openUntil else { return (.rejected, nil) }
            let transition = move(to: .halfOpen)
            probesOut = 1
            return (.probe, transition)
        case .halfOpen:
            guard probesOut + probesSucceeded < Self.probes else { return (.rejected, nil) }
            probesOut += 1
            return (.probe, nil)
        }
    }

    /// An admitted item's outcome. Neutral outcomes (cancelled, 4xx) are not reported.
    mutating func record(failed: Bool, probe: Bool, now: NIODeadline) -> Transition? {
        if probe {
            guard state == .halfOpen, probesOut > 0 else { return nil }
            probesOut -= 1
            if failed {
                return trip(now: now)
            }
            probesSucceeded += 1
            guard probesSucceeded >= Self.probes else { return nil }
            outcomes.reset()
            failures.reset()
            return move(to: .closed)
        }
        guard state == .closed else { return nil }
        outcomes.add(now: now)
        if failed { failures.add(now: now) }
        let total = outcomes.total(now: now)
        guard total >= configuration.minRequests,
              Double(failures.total(now: now)) >= configuration.failureRatio * Double(total) else { return nil }
        return trip(now: now)
    }

    /// An admitted probe that ended without an outcome (cancelled): its place goes to another.
    mutating func probeAbandoned() {
        if state == .halfOpen && probesOut > 0 { probesOut -= 1 }
    }

    private mutating func trip(now: NIODeadline) -> Transition? {
        openUntil = now + configuration.openFor
        return move(to: .open)
    }

    private mutating func move(to next: State) -> Transition? {
        let transition = Transition(from: state, to: next)
        state = next
        probesOut = 0
        probesSucceeded = 0
        return transition.from == transition.to ? nil : transition
    }
}
