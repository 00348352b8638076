import NIOCore

/// `retry:` of an upstream. `attempts: 1` (the default) turns retries off.
public struct RetryConfiguration: Sendable, Equatable {
    /// Tries per item in all, the first one included.
    public var attempts = 1
    /// The first backoff; each retry doubles it, up to `maxBackoff`, with full jitter.
    public var backoff: TimeAmount = .milliseconds(50)
    public var maxBackoff: TimeAmount = .seconds(1)
    /// What is retried.
    public var on: Set<RetryCondition> = RetryCondition.defaults
    /// Over a sliding 10 s window, retries may be at most this share of first attempts...
    public var budget = 0.2
    /// ...plus this many, so that a quiet upstream can still be retried.
    public var minRetries = 3

    public init() {}

    public var enabled: Bool { attempts > 1 }
}

/// One entry of `retry.on`.
public enum RetryCondition: Hashable, Sendable, CustomStringConvertible {
    /// No connection could be made: nothing was sent, so any method may go again.
    case connectFailure
    /// The stream was reset or the connection broke after the request may have arrived.
    case reset
    /// The upstream refused the stream unprocessed each time it was sent: any method may go again.
    case refusedStream
    /// The upstream answered with this status.
    case status(Int)

    public static let defaults: Set<RetryCondition> = [.connectFailure, .reset, .refusedStream, .status(502), .status(503), .status(504), .status(429)]

    /// `connect-failure`, `reset`, `refused-stream`, or a status code 400–599.
    public init?(configText: String) {
        switch configText {
        case "connect-failure": self = .connectFailure
        case "reset": self = .reset
        case "refused-stream": self = .refusedStream
        default:
            guard let code = Int(configText), (400...599).contains(code) else { return nil }
            self = .status(code)
        }
    }

    public var description: String {
        switch self {
        case .connectFailure: return "connect-failure"
        case .reset: return "reset"
        case .refusedStream: return "refused-stream"
        case .status(let code): return String(code)
        }
    }
}

/// `circuit_breaker:` of an upstream; absent, the circuit never opens.
public struct CircuitBreakerConfiguration: Sendable, Equatable {
    /// The circuit opens when at least this share of the window's outcomes failed...
    public var failureRatio = 0.5
    /// ...and the window holds at least this many outcomes.
    public var minRequests = 20
    public var window: TimeAmount = .seconds(10)
    /// How long an open circuit fails items at once before probe items may go.
    public var openFor: TimeAmount = .seconds(5)

    public init() {}
}
