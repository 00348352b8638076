import Logging
import NIOCore

/// Errors building a transport from a configuration.
public struct TransportUnavailable: Error, CustomStringConvertible {
    public var description: String
}

/// Builds the engine that speaks an upstream's protocol.
public enum TransportFactory {
    public static func make(_ configuration: UpstreamConfiguration, group: EventLoopGroup,
                            logger: Logger, events: UpstreamEvents = .none) throws -> UpstreamTransport {
        let engine = try makeEngine(configuration, group: group, logger: logger, events: events)
        guard configuration.retry.enabled || configuration.circuitBreaker != nil else { return engine }
        return ResilientTransport(wrapping: engine, group: group, logger: logger, events: events)
    }

    private static func makeEngine(_ configuration: UpstreamConfiguration, group: EventLoopGroup,
                                   logger: Logger, events: UpstreamEvents) throws -> UpstreamTransport {
        if configuration.insecureSkipVerify {
            logger.warning("insecure_skip_verify: the upstream's certificate and name are not checked; use it only for tests",
                           metadata: ["upstream": "\(configuration.name)"])
        }
        do {
            switch configuration.protocol {
            case .auto:
                return try AutoTransport(configuration: configuration, group: group, logger: logger, events: events)
            case .h2c:
                return HTTP2Transport(configuration: configuration, group: group, logger: logger, events: events)
            case .http1:
                return CurlTransport(configuration: configuration, logger: logger, events: events)
            case .h2:
                let tls = try UpstreamTLS(configuration: configuration, events: events)
                return HTTP2Transport(configuration: configuration, group: group, logger: logger, tls: tls, events: events)
            }
        } catch {
            throw TransportUnavailable(description: "upstream \(configuration.name): cannot set up TLS: \(error)")
        }
    }

    /// Which of the upstream's TLS files (`ca_file`, `client_certificate`, `client_key`) cannot
    /// be used and why, or nil. `sheaf check` reports it at that key.
    public static func tlsProblem(_ configuration: UpstreamConfiguration) -> (field: String, message: String)? {
        UpstreamTLS.problem(with: configuration)
    }
}
