import Logging
import NIOCore

/// Errors building a transport from a configuration.
public struct TransportUnavailable: Error, CustomStringConvertible {
    public var description: String
}

/// Builds the engine that speaks an upstream's protocol.
public enum TransportFactory {
    public static func make(_ configuration: UpstreamConfiguration, group: EventLoopGroup,
                            logger: Logger) throws -> UpstreamTransport {
        switch configuration.protocol {
        case .auto where configuration.endpoint.scheme == "https":
            // Until HTTP/2 over TLS (ALPN) exists: TLS upstreams speak HTTP/1.1 through libcurl.
            return CurlTransport(configuration: configuration, logger: logger)
        case .auto:
            return AutoTransport(configuration: configuration, group: group, logger: logger)
        case .h2c:
            return HTTP2Transport(configuration: configuration, group: group, logger: logger)
        case .http1:
            return CurlTransport(configuration: configuration, logger: logger)
        case .h2:
            do {
                let tls = try UpstreamTLS(configuration: configuration)
                return HTTP2Transport(configuration: configuration, group: group, logger: logger, tls: tls)
            } catch {
                throw TransportUnavailable(description: "upstream \(configuration.name): cannot set up TLS: \(error)")
            }
        }
    }
}
