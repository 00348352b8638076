import Foundation
import BatchInput
import FanOut
import Codecs
import MultiStatus
import NIOCore
import Upstream
import Yams

/// Reads config.yaml into a `SheafConfiguration`, collecting every problem with its line and
/// column. `sheaf check` prints them; `sheaf serve` refuses to start on any.
public enum ConfigLoader {
    public static func load(path: String) throws(ConfigError) -> SheafConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(problems: [ConfigProblem(file: path, line: 1, column: 1, message: "cannot read the file")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(problems: [ConfigProblem(file: path, line: 1, column: 1, message: "the file is not UTF-8")])
        }
        return try parse(yaml: text, file: path)
    }

    public static func parse(yaml: String, file: String) throws(ConfigError) -> SheafConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw ConfigError(problems: [problem(from: error, file: file)])
        } catch {
            throw ConfigError(problems: [ConfigProblem(file: file, line: 1, column: 1, message: "\(error)")])
        }
        var reader = ConfigReader(file: file)
        guard let root else {
            reader.report(at: nil, "the file is empty; it needs at least upstreams and routes")
            throw ConfigError(problems: reader.problems)
        }
        let configuration = reader.read(root)
        guard reader.problems.isEmpty, let configuration else { throw ConfigError(problems: reader.problems) }
        return configuration
    }

    private static func problem(from error: YamlError, file: String) -> ConfigProblem {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let text = context.map { "\($0.text): \(problem)" } ?? problem
            return ConfigProblem(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(text)")
        default:
            return ConfigProblem(file: file, line: 1, column: 1, message: "YAML: \(error)")
        }
    }
}

/// Walks the YAML node tree; every check reports at the node it is about.
struct ConfigReader {
    let file: String
    var problems: [ConfigProblem] = []

    init(file: String) {
        self.file = file
    }

    mutating func report(at node: Node?, _ message: String) {
        let mark = node?.mark
        problems.append(ConfigProblem(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, message: message))
    }

    /// The mapping's entries, after reporting unknown and duplicate keys.
    mutating func entries(_ node: Node, allowed: [String], what: String) -> [String: (key: Node, value: Node)] {
        guard case .mapping(let mapping) = node else {
            report(at: node, "\(what) must be a mapping")
            return [:]
        }
        var result: [String: (key: Node, value: Node)] = [:]
        for (key, value) in mapping {
            let name = key.string ?? ""
            if !allowed.contains(name) {
                report(at: key, "unknown key '\(name)' in \(what) (expected one of: \(allowed.joined(separator: ", ")))")
            } else if let earlier = result[name] {
                report(at: key, "duplicate key '\(name)' in \(what) (first at line \(earlier.key.mark?.line ?? 0))")
            } else {
                result[name] = (key, value)
            }
        }
        return result
    }

    mutating func string(_ node: Node?, _ what: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let scalar) = node else {
            report(at: node, "\(what) must be a string")
            return nil
        }
        return scalar.string
    }

    /// One of an enum's raw values; anything else is reported with the values allowed.
    /// `what` names the owner ("upstream 'x'"), `key` the field.
    mutating func keyword<T: RawRepresentable & CaseIterable>(_ node: Node?, _ what: String, _ key: String) -> T? where T.RawValue == String {
        guard let node, let text = string(node, "\(what) \(key)") else { return nil }
        if let value = T(rawValue: text) { return value }
        let names = T.allCases.map(\.rawValue)
        let expected = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        report(at: node, "\(what): unknown \(key) \"\(text)\" (expected \(expected))")
        return nil
    }

    mutating func integer(_ node: Node?, _ what: String, range: ClosedRange<Int>) -> Int? {
        guard let node else { return nil }
        guard case .scalar(let scalar) = node, let value = Int(scalar.string) else {
            report(at: node, "\(what) must be a whole number")
            return nil
        }
        guard range.contains(value) else {
            report(at: node, "\(what) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
            return nil
        }
        return value
    }

    /// A scalar read by `parse`; when it does not parse, the problem says what was expected.
    private mutating func parsed<T>(_ node: Node?, _ what: String, expected: String, _ parse: (String) -> T?) -> T? {
        parsed(node, what, expected: expected) { parse($0).map { .success($0) } ?? .failure(.malformed) }
    }

    /// A scalar read by `parse`; the problem says what was expected, or that the value is too large.
    private mutating func parsed<T>(_ node: Node?, _ what: String, expected: String,
                                    _ parse: (String) -> Result<T, ConfigValues.Failure>) -> T? {
        guard let text = string(node, what) else { return nil }
        switch parse(text) {
        case .success(let value):
            return value
        case .failure(.malformed):
            report(at: node, "\(what): \"\(text)\" is not \(expected)")
        case .failure(.tooLarge(let maximum)):
            report(at: node, "\(what): \"\(text)\" is too large (at most \(maximum))")
        }
        return nil
    }

    mutating func duration(_ node: Node?, _ what: String) -> TimeAmount? {
        parsed(node, what, expected: "a duration (write e.g. 250ms, 5s, 1m)", ConfigValues.duration)
    }

    /// `value` when within `range`; otherwise reported at `node` (a size read by `byteSize`).
    mutating func bounded(_ value: Int?, _ node: Node?, _ what: String, _ range: ClosedRange<Int>) -> Int? {
        guard let value, let node else { return nil }
        guard range.contains(value) else {
            report(at: node, "\(what) must be from \(range.lowerBound) to \(range.upperBound) bytes, got \(value)")
            return nil
        }
        return value
    }

    mutating func byteSize(_ node: Node?, _ what: String) -> Int? {
        parsed(node, what, expected: "a size (write e.g. 65536, 512KiB, 8MiB)") { text in
            ConfigValues.byteSize(text).flatMap { $0 > 0 ? .success($0) : .failure(.malformed) }
        }
    }

    /// A header name Sheaf may send upstream: a token, and none of the hop-by-hop headers the
    /// item builder strips from explicit items (the same list).
    mutating func headerName(_ name: String, at node: Node, _ what: String) -> String? {
        guard !name.isEmpty, name.utf8.allSatisfy(HTTPSyntax.isTokenByte) else {
            report(at: node, "\(what): \"\(name)\" is not a header name")
            return nil
        }
        guard !HTTPSyntax.isHopByHop(name) else {
            report(at: node, "\(what): \(name) is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded")
            return nil
        }
        return name
    }

    /// A list of header names; nil when absent or when any is bad (each bad one is reported).
    mutating func headerNames(_ node: Node?, _ what: String) -> [String]? {
        list(node, what, shape: "a list of header names") { reader, text, entry in reader.headerName(text, at: entry, what) }
    }

    /// A list of scalars, each read by `read`; nil when absent or when any is bad (`read`
    /// reports each bad one, at its own line and column).
    private mutating func list<T>(_ node: Node?, _ what: String, shape: String,
                                  _ read: (inout ConfigReader, String, Node) -> T?) -> [T]? {
        guard let node else { return nil }
        guard case .sequence(let entries) = node else {
            report(at: node, "\(what) must be \(shape)")
            return nil
        }
        var values: [T] = []
        var allGood = true
        for entry in entries {
            if let text = string(entry, what), let value = read(&self, text, entry) {
                values.append(value)
            } else {
                allGood = false
            }
        }
        return allGood ? values : nil
    }

    /// A list of WebDAV property names, each kept once; nil when absent or when any is bad.
    mutating func davProperties(_ node: Node?, _ what: String) -> [DAVProperty]? {
        let known = DAVProperty.allCases.map(\.rawValue).joined(separator: ", ")
        let properties = list(node, what, shape: "a list, e.g. [getetag, getcontenttype]") { reader, text, entry in
            let property = DAVProperty(rawValue: text)
            if property == nil { reader.report(at: entry, "\(what): \"\(text)\" is not one of \(known)") }
            return property
        }
        return properties.map { $0.reduce(into: []) { kept, property in if !kept.contains(property) { kept.append(property) } } }
    }

    mutating func httpMethod(_ node: Node?, _ what: String) -> String? {
        parsed(node, what, expected: "an HTTP method") { text in
            !text.isEmpty && text.utf8.allSatisfy(HTTPSyntax.isTokenByte) ? text.uppercased() : nil
        }
    }

    /// A path to a file Sheaf can read (certificates, keys, CA bundles).
    mutating func readableFile(_ node: Node?, _ what: String) -> String? {
        guard let path = string(node, what) else { return nil }
        guard FileManager.default.isReadableFile(atPath: path) else {
            report(at: node, "\(what): cannot read \"\(path)\"")
            return nil
        }
        return path
    }

    mutating func boolean(_ node: Node?, _ what: String) -> Bool? {
        parsed(node, what, expected: "true or false") { ["true": true, "false": false][$0] }
    }

    mutating func hostPort(_ node: Node?, _ what: String) -> HostPort? {
        parsed(node, what, expected: "HOST:PORT", HostPort.parse)
    }

    // MARK: the document

    mutating func read(_ root: Node) -> SheafConfiguration? {
        let top = entries(root, allowed: ["listen", "metrics_path", "demo_upstream", "drain_timeout", "client_timeout", "min_body_rate",
                                       "max_connections_per_client", "max_streams_per_connection", "max_buffered_output",
                                       "max_url_bytes", "max_headers", "max_header_bytes", "http2_initial_window_size",
                                       "http2_max_frame_size", "max_batches", "max_nesting_depth", "max_items_in_flight",
                                       "tls", "access_log", "tracing", "upstreams", "routes"],
                          what: "the top level")
        let listen = top["listen"] == nil ? HostPort(host: "127.0.0.1", port: 8080) : hostPort(top["listen"]?.value, "listen")
        var metricsPath = "/metrics"
        if let entry = top["metrics_path"], let text = string(entry.value, "metrics_path") {
            if text.hasPrefix("/") { metricsPath = text } else { report(at: entry.value, "metrics_path must start with '/'") }
        }
        let demo = hostPort(top["demo_upstream"]?.value, "demo_upstream")

        var upstreams: [UpstreamConfiguration] = []
        if let entry = top["upstreams"] {
            if case .mapping(let mapping) = entry.value {
                if mapping.count == 0 { report(at: entry.value, "upstreams must name at least one upstream") }
                var seen: Set<String> = []
                for (key, value) in mapping {
                    let name = key.string ?? ""
                    guard seen.insert(name).inserted else {
                        report(at: key, "duplicate upstream '\(name)'")
                        continue
                    }
                    if let upstream = readUpstream(name: name, key: key, value) { upstreams.append(upstream) }
                }
            } else {
                report(at: entry.value, "upstreams must be a mapping of names to upstreams")
            }
        } else {
            report(at: root, "missing key 'upstreams'")
        }

        var routes: [RouteConfiguration] = []
        if let entry = top["routes"] {
            if case .sequence(let sequence) = entry.value {
                if sequence.count == 0 { report(at: entry.value, "routes must list at least one route") }
                var seenNames: [String: Int] = [:]
                var seenPaths: [String: (String, Int)] = [:]
                var upstreamNames = Set(upstreams.map(\.name))
                if case .mapping(let mapping) = top["upstreams"]?.value {
                    upstreamNames.formUnion(mapping.compactMap { $0.key.string })
                }
                for node in sequence {
                    guard let route = readRoute(node, upstreamNames: upstreamNames) else { continue }
                    let line = node.mark?.line ?? 0
                    if let earlier = seenNames[route.name] {
                        report(at: node, "duplicate route name '\(route.name)' (first at line \(earlier))")
                    }
                    seenNames[route.name] = line
                    let key = "\(route.method) \(route.path)"
                    if let (other, otherLine) = seenPaths[key] {
                        report(at: node, "duplicate route: \(key) is already handled by route '\(other)' (line \(otherLine))")
                    }
                    seenPaths[key] = (route.name, line)
                    if route.path == metricsPath {
                        report(at: node, "route '\(route.name)' uses the metrics path \(metricsPath)")
                    }
                    routes.append(route)
                }
            } else {
                report(at: entry.value, "routes must be a list")
            }
        } else {
            report(at: root, "missing key 'routes'")
        }
        let tls = top["tls"].flatMap { readTLS(key: $0.key, $0.value) }
        guard let listen else { return nil }
        var configuration = SheafConfiguration(listen: listen, metricsPath: metricsPath, demoUpstream: demo,
                                               upstreams: upstreams, routes: routes)
        if let drain = duration(top["drain_timeout"]?.value, "drain_timeout") { configuration.drainTimeout = drain }
        if let client = duration(top["client_timeout"]?.value, "client_timeout") { configuration.clientTimeout = client }
        if let rate = parsed(top["min_body_rate"]?.value, "min_body_rate", expected: "a size per second (write e.g. 256, 1KiB; 0 for no minimum)",
                             ConfigValues.byteSize) {
            configuration.minBodyRate = rate
        }
        if let entry = top["tracing"] { configuration.tracing = readTracing(key: entry.key, entry.value) }
        if let entry = top["access_log"], let text = string(entry.value, "access_log") {
            switch text {
            case "off": configuration.accessLog = .off
            case "stderr": configuration.accessLog = .stderr
            default:
                var isDirectory: ObjCBool = false
                // Not NSString.deletingLastPathComponent: it traps on some relative paths ("s").
                let slash = text.lastIndex(of: "/")
                let directory = slash.map { $0 == text.startIndex ? "/" : String(text[..<$0]) } ?? ""
                if !text.hasPrefix("/") {
                    report(at: entry.value, "access_log: \"\(text)\" must be stderr, off or an absolute path")
                } else if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) || !isDirectory.boolValue {
                    report(at: entry.value, "access_log: directory \"\(directory)\" does not exist")
                } else {
                    configuration.accessLog = .file(text)
                }
            }
        }
        if let v = integer(top["max_connections_per_client"]?.value, "max_connections_per_client", range: 0...1_000_000) {
            configuration.maxConnectionsPerClient = v
        }
        if let v = byteSize(top["max_buffered_output"]?.value, "max_buffered_output") { configuration.maxBufferedOutput = v }
        if let v = integer(top["max_streams_per_connection"]?.value, "max_streams_per_connection", range: 1...10_000) {
            configuration.maxStreamsPerConnection = v
        }
        if let v = bounded(byteSize(top["max_url_bytes"]?.value, "max_url_bytes"), top["max_url_bytes"]?.value, "max_url_bytes", 256...(64 << 10)) {
            configuration.maxURLBytes = v
        }
        if let v = integer(top["max_headers"]?.value, "max_headers", range: 1...1000) { configuration.maxHeaders = v }
        if let v = bounded(byteSize(top["max_header_bytes"]?.value, "max_header_bytes"), top["max_header_bytes"]?.value, "max_header_bytes",
                           1024...(64 << 10)) {
            configuration.maxHeaderBytes = v
        }
        if let v = bounded(byteSize(top["http2_initial_window_size"]?.value, "http2_initial_window_size"), top["http2_initial_window_size"]?.value,
                           "http2_initial_window_size", 1...Int(Int32.max)) {
            configuration.http2InitialWindowSize = v
        }
        if let v = bounded(byteSize(top["http2_max_frame_size"]?.value, "http2_max_frame_size"), top["http2_max_frame_size"]?.value,
                           "http2_max_frame_size", (16 << 10)...((16 << 20) - 1)) {
            configuration.http2MaxFrameSize = v
        }
        if let v = integer(top["max_batches"]?.value, "max_batches", range: 0...1_000_000) { configuration.maxBatches = v }
        if let v = integer(top["max_nesting_depth"]?.value, "max_nesting_depth", range: 2...64) { configuration.maxNestingDepth = v }
        if let v = integer(top["max_items_in_flight"]?.value, "max_items_in_flight", range: 0...10_000_000) { configuration.maxItemsInFlight = v }
        configuration.tls = tls
        return configuration
    }

    /// The `tls` block; its files are loaded here as `serve` will load them, so a missing file,
    /// a file without a PEM certificate or key, and a key that is not the certificate's are
    /// reported at the value that names them.
    private mutating func readAuth(key: Node, _ node: Node, what: String) -> RouteAuth? {
        let fields = entries(node, allowed: ["tokens_file", "api_key_header"], what: "\(what) auth")
        guard case .mapping = node else { return nil }
        var header: String?
        if let entry = fields["api_key_header"], let text = string(entry.value, "\(what) auth.api_key_header") {
            header = headerName(text, at: entry.value, "\(what) auth.api_key_header")
            if header == nil { return nil }
        }
        guard let entry = fields["tokens_file"] else {
            report(at: key, "\(what) auth is missing 'tokens_file' (one token per line)")
            return nil
        }
        guard let path = readableFile(entry.value, "\(what) auth.tokens_file") else { return nil }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), !RouteAuth.tokens(in: text).isEmpty else {
            report(at: entry.value, "\(what) auth.tokens_file: \"\(path)\" holds no token (one per line)")
            return nil
        }
        return RouteAuth(tokensFile: path, apiKeyHeader: header)
    }

    private mutating func readRateLimit(key: Node, _ node: Node, what: String) -> RateLimit? {
        let fields = entries(node, allowed: ["requests_per_second", "burst"], what: "\(what) rate_limit")
        guard case .mapping = node else { return nil }
        guard let entry = fields["requests_per_second"] else {
            report(at: key, "\(what) rate_limit is missing 'requests_per_second'")
            return nil
        }
        guard case .scalar(let scalar) = entry.value, let rate = Double(scalar.string), rate >= 0.001, rate <= 1_000_000 else {
            report(at: entry.value, "\(what) rate_limit.requests_per_second must be a number from 0.001 to 1000000")
            return nil
        }
        // By default one second's worth may come at once.
        let burst = integer(fields["burst"]?.value, "\(what) rate_limit.burst", range: 1...1_000_000) ?? max(1, Int(rate.rounded(.up)))
        return RateLimit(requestsPerSecond: rate, burst: burst)
    }

    private mutating func readTracing(key: Node, _ node: Node) -> TracingConfiguration? {
        let fields = entries(node, allowed: ["otlp_endpoint", "service_name", "sample_ratio"], what: "tracing")
        guard case .mapping = node else { return nil }
        guard let entry = fields["otlp_endpoint"] else {
            report(at: key, "tracing is missing 'otlp_endpoint' (an http:// or https:// URL)")
            return nil
        }
        guard let endpoint = string(entry.value, "tracing otlp_endpoint") else { return nil }
        guard let url = URLComponents(string: endpoint), ["http", "https"].contains(url.scheme?.lowercased() ?? ""),
              !(url.host ?? "").isEmpty else {
            report(at: entry.value, "tracing otlp_endpoint: \"\(endpoint)\" must be an http:// or https:// URL")
            return nil
        }
        var tracing = TracingConfiguration(otlpEndpoint: endpoint)
        if let name = fields["service_name"].flatMap({ string($0.value, "tracing service_name") }) {
            if name.isEmpty { report(at: fields["service_name"]!.value, "tracing service_name must not be empty") } else { tracing.serviceName = name }
        }
        if let ratio = fraction(fields["sample_ratio"]?.value, "tracing sample_ratio", allowZero: true) { tracing.sampleRatio = ratio }
        return tracing
    }

    private mutating func readTLS(key: Node, _ node: Node) -> FrontTLSConfiguration? {
        let fields = entries(node, allowed: ["certificate", "private_key", "client_ca"], what: "tls")
        guard case .mapping = node else { return nil }
        var paths: [FrontTLSError.Field: String] = [:]
        for field in [FrontTLSError.Field.certificate, .privateKey, .clientCA] {
            if let entry = fields[field.rawValue] {
                guard let path = string(entry.value, "tls \(field.rawValue)") else { continue }
                if path.isEmpty { report(at: entry.value, "tls \(field.rawValue) must be a file path") } else { paths[field] = path }
            } else if field != .clientCA {
                report(at: key, "tls is missing '\(field.rawValue)' (a PEM file)")
            }
        }
        guard let certificate = paths[.certificate], let privateKey = paths[.privateKey],
              fields["client_ca"] == nil || paths[.clientCA] != nil else { return nil }
        let tls = FrontTLSConfiguration(certificate: certificate, privateKey: privateKey, clientCA: paths[.clientCA])
        do {
            _ = try tls.makeServerContext()
        } catch {
            for problem in error.problems { report(at: fields[problem.field.rawValue]?.value, problem.description) }
            return nil
        }
        return tls
    }

    private mutating func readUpstream(name: String, key: Node, _ node: Node) -> UpstreamConfiguration? {
        let what = "upstream '\(name)'"
        let fields = entries(node, allowed: ["url", "protocol", "connections", "timeout", "connect_timeout", "max_response_bytes", "ca_file",
                                             "server_name", "client_certificate", "client_key", "insecure_skip_verify",
                                             "max_request_header_bytes", "max_response_header_bytes", "ping_interval", "ping_timeout",
                                             "max_queued", "retry", "circuit_breaker", "balance"], what: what)
        guard !fields.isEmpty || problems.isEmpty else { return nil }
        var endpoint: UpstreamEndpoint?
        if let entry = fields["url"] {
            if let text = string(entry.value, "\(what) url") {
                endpoint = readURL(text, at: entry.value, what: what)
            }
        } else {
            report(at: key, "\(what) is missing 'url'")
        }
        let proto: UpstreamProtocol = keyword(fields["protocol"]?.value, what, "protocol") ?? .auto
        if let endpoint, endpoint.scheme == "http", proto == .h2 {
            report(at: fields["url"]?.value, "\(what): protocol h2 is HTTP/2 over TLS and needs an https url (use h2c for cleartext)")
        }
        if let endpoint, endpoint.scheme == "https", proto == .h2c {
            report(at: fields["url"]?.value, "\(what): h2c is cleartext HTTP/2; an https url takes protocol h2, http1 or auto")
        }
        var configuration = UpstreamConfiguration(name: name, endpoint: endpoint ?? UpstreamEndpoint(scheme: "http", host: "", port: 0, basePath: ""),
                                                  protocol: proto)
        if let v = integer(fields["connections"]?.value, "\(what) connections", range: 1...256) { configuration.connections = v }
        if let v = duration(fields["timeout"]?.value, "\(what) timeout") { configuration.timeout = v }
        if let v = duration(fields["connect_timeout"]?.value, "\(what) connect_timeout") { configuration.connectTimeout = v }
        if let v = byteSize(fields["max_response_bytes"]?.value, "\(what) max_response_bytes") { configuration.maxResponseBodyBytes = v }
        if let v = byteSize(fields["max_request_header_bytes"]?.value, "\(what) max_request_header_bytes") {
            configuration.maxRequestHeaderBytes = v
        }
        if let node = fields["max_response_header_bytes"]?.value, let v = byteSize(node, "\(what) max_response_header_bytes") {
            // The engines' own limits are below anything larger: nghttp2 takes a header block of
            // nine 16 KiB frames and no field over 64 KiB, libcurl 300 KiB with no line over 100 KiB.
            if v > 128 << 10 {
                report(at: node, "\(what) max_response_header_bytes: at most 128KiB (HTTP/2 and HTTP/1.1 libraries refuse larger heads themselves)")
            } else if v < 1 << 10 {
                report(at: node, "\(what) max_response_header_bytes: at least 1KiB (a status line and a date take a good part of that)")
            } else {
                configuration.maxResponseHeaderBytes = v
            }
        }
        if let v = duration(fields["ping_interval"]?.value, "\(what) ping_interval") { configuration.pingInterval = v }
        if let v = duration(fields["ping_timeout"]?.value, "\(what) ping_timeout") { configuration.pingTimeout = v }
        readUpstreamTLS(fields, what: what, https: endpoint?.scheme == "https", into: &configuration)
        if let v = integer(fields["max_queued"]?.value, "\(what) max_queued", range: 0...10_000_000) { configuration.maxQueued = v }
        if let entry = fields["balance"] {
            if proto == .http1 {
                report(at: entry.value, "\(what) balance only applies to HTTP/2 (protocol auto, h2c or h2): HTTP/1.1 has one curl thread")
            } else if let value: UpstreamBalance = keyword(entry.value, what, "balance") {
                configuration.balance = value
            }
        }
        if let node = fields["retry"]?.value, let retry = readRetry(node, what: "\(what) retry") { configuration.retry = retry }
        if let node = fields["circuit_breaker"]?.value {
            configuration.circuitBreaker = readCircuitBreaker(node, what: "\(what) circuit_breaker")
        }
        return endpoint == nil ? nil : configuration
    }

    /// `ca_file`, `server_name`, `client_certificate` + `client_key`, `insecure_skip_verify`: only
    /// on an https url, files readable, and the files loadable together (a key that does not
    /// belong to its certificate is found here, not at the first item).
    private mutating func readUpstreamTLS(_ fields: [String: (key: Node, value: Node)], what: String, https: Bool,
                                          into configuration: inout UpstreamConfiguration) {
        let before = problems.count
        for key in ["ca_file", "server_name", "client_certificate", "client_key", "insecure_skip_verify"] where !https {
            if let entry = fields[key] { report(at: entry.value, "\(what) \(key) only applies to an https url") }
        }
        guard https else { return }
        configuration.caFile = readableFile(fields["ca_file"]?.value, "\(what) ca_file")
        configuration.serverName = string(fields["server_name"]?.value, "\(what) server_name")
        configuration.clientCertificate = readableFile(fields["client_certificate"]?.value, "\(what) client_certificate")
        configuration.clientKey = readableFile(fields["client_key"]?.value, "\(what) client_key")
        if let v = boolean(fields["insecure_skip_verify"]?.value, "\(what) insecure_skip_verify") { configuration.insecureSkipVerify = v }
        if let entry = fields["client_certificate"], fields["client_key"] == nil {
            report(at: entry.value, "\(what) client_certificate needs client_key (both or neither)")
        }
        if let entry = fields["client_key"], fields["client_certificate"] == nil {
            report(at: entry.value, "\(what) client_key needs client_certificate (both or neither)")
        }
        guard problems.count == before, let problem = TransportFactory.tlsProblem(configuration) else { return }
        report(at: fields[problem.field]?.value, "\(what) \(problem.field): \(problem.message)")
    }

    private mutating func readRetry(_ node: Node, what: String) -> RetryConfiguration? {
        let before = problems.count
        let fields = entries(node, allowed: ["attempts", "backoff", "max_backoff", "on", "budget", "min_retries"], what: what)
        var retry = RetryConfiguration()
        if let v = integer(fields["attempts"]?.value, "\(what) attempts", range: 1...10) { retry.attempts = v }
        if let v = duration(fields["backoff"]?.value, "\(what) backoff") { retry.backoff = v }
        if let v = duration(fields["max_backoff"]?.value, "\(what) max_backoff") { retry.maxBackoff = v }
        if retry.maxBackoff < retry.backoff, let entry = fields["max_backoff"] ?? fields["backoff"] {
            report(at: entry.value, "\(what) max_backoff (\(retry.maxBackoff.configText)) is shorter than backoff (\(retry.backoff.configText))")
        }
        if let entry = fields["on"] {
            if case .sequence(let list) = entry.value, list.count > 0 {
                retry.on = []
                for item in list {
                    guard let text = string(item, "\(what) on") else { continue }
                    if let condition = RetryCondition(configText: text) {
                        retry.on.insert(condition)
                    } else {
                        report(at: item, "\(what) on: \"\(text)\" is not connect-failure, reset, refused-stream or a status 400-599")
                    }
                }
            } else {
                report(at: entry.value, "\(what) on must be a list, e.g. [connect-failure, reset, 503]")
            }
        }
        if let v = fraction(fields["budget"]?.value, "\(what) budget", allowZero: true) { retry.budget = v }
        if let v = integer(fields["min_retries"]?.value, "\(what) min_retries", range: 0...100_000) { retry.minRetries = v }
        return problems.count == before ? retry : nil
    }

    private mutating func readCircuitBreaker(_ node: Node, what: String) -> CircuitBreakerConfiguration? {
        let before = problems.count
        let fields = entries(node, allowed: ["failure_ratio", "min_requests", "window", "open_for"], what: what)
        var breaker = CircuitBreakerConfiguration()
        if let v = fraction(fields["failure_ratio"]?.value, "\(what) failure_ratio", allowZero: false) { breaker.failureRatio = v }
        if let v = integer(fields["min_requests"]?.value, "\(what) min_requests", range: 1...1_000_000) { breaker.minRequests = v }
        if let v = duration(fields["window"]?.value, "\(what) window") { breaker.window = v }
        if let v = duration(fields["open_for"]?.value, "\(what) open_for") { breaker.openFor = v }
        return problems.count == before ? breaker : nil
    }

    /// `20%` or `0.2`: a share between 0 (or just above) and 1.
    mutating func fraction(_ node: Node?, _ what: String, allowZero: Bool) -> Double? {
        parsed(node, what, expected: allowZero ? "a share from 0 to 1 (write e.g. 20% or 0.2)" : "a share above 0, at most 1 (write e.g. 50% or 0.5)") { text in
            let value = text.hasSuffix("%") ? Double(text.dropLast()).map { $0 / 100 } : Double(text)
            guard let value, value.isFinite, value <= 1, allowZero ? value >= 0 : value > 0 else { return nil }
            return value
        }
    }

    private mutating func readURL(_ text: String, at node: Node, what: String) -> UpstreamEndpoint? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
              let host = components.host, !host.isEmpty else {
            report(at: node, "\(what): url \"\(text)\" must look like http://HOST:PORT/optional/base")
            return nil
        }
        guard scheme == "http" || scheme == "https" else {
            report(at: node, "\(what): url scheme must be http, got \"\(scheme)\"")
            return nil
        }
        if components.user != nil || components.password != nil || components.query != nil || components.fragment != nil {
            report(at: node, "\(what): url \"\(text)\" must not have credentials, a query or a fragment")
            return nil
        }
        let port = components.port ?? (scheme == "https" ? 443 : 80)
        return UpstreamEndpoint(scheme: scheme, host: host, port: port, basePath: components.percentEncodedPath)
    }

    private mutating func readRoute(_ node: Node, upstreamNames: Set<String>) -> RouteConfiguration? {
        let before = problems.count
        let fields = entries(node, allowed: ["name", "method", "path", "upstream", "fan_out", "concurrency", "max_items", "max_body_bytes", "deadline", "forward_headers", "order",
                                           "forwarded", "response_headers", "on_error", "depends_on_success", "coalesce", "auth",
                                           "max_batches", "max_item_body_bytes", "properties", "rate_limit"],
                                   what: "a route")
        guard case .mapping = node else { return nil }
        let name = string(fields["name"]?.value, "route name")
        let what = "route '\(name ?? "?")'"
        if fields["name"] == nil { report(at: node, "a route is missing 'name'") }
        let method = httpMethod(fields["method"]?.value, "\(what) method")
        if fields["method"] == nil { report(at: node, "\(what) is missing 'method'") }
        var path: String?
        if let entry = fields["path"], let text = string(entry.value, "\(what) path") {
            if !text.hasPrefix("/") || text.contains("{") || text.contains("?") || text.contains(" ") {
                report(at: entry.value, "\(what): path \"\(text)\" must be a plain absolute path such as /bulk/users")
            } else {
                path = text
            }
        } else if fields["path"] == nil {
            report(at: node, "\(what) is missing 'path'")
        }
        var upstream: String?
        if let entry = fields["upstream"], let text = string(entry.value, "\(what) upstream") {
            if upstreamNames.contains(text) {
                upstream = text
            } else {
                report(at: entry.value, "\(what): unknown upstream \"\(text)\" (defined: \(upstreamNames.sorted().joined(separator: ", ")))")
            }
        } else if fields["upstream"] == nil {
            report(at: node, "\(what) is missing 'upstream'")
        }
        var fanOut: FanOutTemplate?
        if let entry = fields["fan_out"] { fanOut = readFanOut(entry.value, what: what) }
        var route = RouteConfiguration(name: name ?? "", method: method ?? "POST", path: path ?? "/", upstream: upstream ?? "", fanOut: fanOut)
        if let v = integer(fields["concurrency"]?.value, "\(what) concurrency", range: 1...10_000) { route.concurrency = v }
        // A template route streams its body and holds only the items in flight; an explicit
        // batch is held whole, so its count stays bounded by memory.
        let itemCap = fanOut == nil && fields["fan_out"] == nil ? 1_000_000 : 100_000_000
        if let v = integer(fields["max_items"]?.value, "\(what) max_items", range: 1...itemCap) { route.maxItems = v }
        if let v = byteSize(fields["max_body_bytes"]?.value, "\(what) max_body_bytes") { route.maxBodyBytes = v }
        if let v = byteSize(fields["max_item_body_bytes"]?.value, "\(what) max_item_body_bytes") { route.maxItemBodyBytes = v }
        if let v = integer(fields["max_batches"]?.value, "\(what) max_batches", range: 0...1_000_000) { route.maxBatches = v }
        if let v = duration(fields["deadline"]?.value, "\(what) deadline") { route.deadline = v }
        if let entry = fields["order"], let text = string(entry.value, "\(what) order") {
            switch text {
            case "completion": route.requestOrder = false
            case "request": route.requestOrder = true
            default: report(at: entry.value, "\(what) order: \"\(text)\" is not completion or request")
            }
        }
        if let names = headerNames(fields["forward_headers"]?.value, "\(what) forward_headers") { route.forwardHeaders = names }
        if let v = boolean(fields["forwarded"]?.value, "\(what) forwarded") { route.forwarded = v }
        if let v = boolean(fields["coalesce"]?.value, "\(what) coalesce") { route.coalesce = v }
        if let entry = fields["auth"] { route.auth = readAuth(key: entry.key, entry.value, what: what) }
        if let entry = fields["rate_limit"] { route.rateLimit = readRateLimit(key: entry.key, entry.value, what: what) }
        if let entry = fields["on_error"], let text = string(entry.value, "\(what) on_error") {
            switch text {
            case "continue": route.policy.stopOnError = false
            case "stop": route.policy.stopOnError = true
            default: report(at: entry.value, "\(what) on_error: \"\(text)\" is not continue or stop")
            }
        }
        let accepted = list(fields["depends_on_success"]?.value, "\(what) depends_on_success",
                            shape: "a list such as [2xx, 404]") { reader, text, node -> (classes: Int?, code: Int?)? in
            let lower = text.lowercased()
            if lower.count == 3, lower.hasSuffix("xx"), let digit = Int(lower.prefix(1)), (1...5).contains(digit) { return (digit, nil) }
            if let code = Int(text), (100...599).contains(code) { return (nil, code) }
            reader.report(at: node, "\(what) depends_on_success: \"\(text)\" is not a status (100-599) or a class (1xx-5xx)")
            return nil
        }
        if let accepted {
            route.policy.dependencySuccess = StatusSet(classes: Set(accepted.compactMap(\.classes)), codes: Set(accepted.compactMap(\.code)))
        }
        if let names = headerNames(fields["response_headers"]?.value, "\(what) response_headers") {
            route.responseHeaders = ReportedHeaders(names)
        }
        if let properties = davProperties(fields["properties"]?.value, "\(what) properties") { route.properties = properties }
        return problems.count == before ? route : nil
    }

    private mutating func readFanOut(_ node: Node, what: String) -> FanOutTemplate? {
        let fields = entries(node, allowed: ["items", "method", "path", "headers", "then"], what: "\(what) fan_out")
        var pointer: JSONPointer?
        if let entry = fields["items"], let text = string(entry.value, "\(what) fan_out.items") {
            do { pointer = try JSONPointer(text) } catch { report(at: entry.value, "\(what) fan_out.items: \(error)") }
        } else if fields["items"] == nil {
            report(at: node, "\(what) fan_out is missing 'items' (a JSON Pointer such as /ids)")
        }
        let method = fields["method"] == nil ? "GET" : httpMethod(fields["method"]?.value, "\(what) fan_out.method")
        var template: PathTemplate?
        if let entry = fields["path"], let text = string(entry.value, "\(what) fan_out.path") {
            do { template = try PathTemplate(text) } catch { report(at: entry.value, "\(what) fan_out.path: \(error)") }
        } else if fields["path"] == nil {
            report(at: node, "\(what) fan_out is missing 'path' (a template such as /users/{item})")
        }
        var headers: [(name: String, value: String)] = []
        if let entry = fields["headers"] {
            if case .mapping(let mapping) = entry.value {
                for (key, value) in mapping {
                    // Sent as written on every item, so they need the filter explicit items get.
                    guard let text = string(key, "\(what) fan_out.headers name"),
                          let name = headerName(text, at: key, "\(what) fan_out.headers") else { continue }
                    guard let text = string(value, "\(what) fan_out.headers.\(name)"),
                          text.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                        report(at: value, "\(what) fan_out.headers.\(name): value must be text without control characters")
                        continue
                    }
                    headers.append((name, text))
                }
            } else {
                report(at: entry.value, "\(what) fan_out.headers must be a mapping of names to values")
            }
        }
        var then: ChainTemplate?
        if let entry = fields["then"] {
            let thenFields = entries(entry.value, allowed: ["method", "path"], what: "\(what) fan_out.then")
            let thenMethod = thenFields["method"] == nil ? "GET" : httpMethod(thenFields["method"]?.value, "\(what) fan_out.then.method")
            if let pathEntry = thenFields["path"], let text = string(pathEntry.value, "\(what) fan_out.then.path"), let thenMethod {
                do { then = try ChainTemplate(method: thenMethod, path: text) } catch {
                    report(at: pathEntry.value, "\(what) fan_out.then.path: \(error)")
                }
            } else if case .mapping = entry.value, thenFields["path"] == nil {
                report(at: entry.value, "\(what) fan_out.then is missing 'path' (a template such as /accounts/{/account_id})")
            }
        }
        guard let pointer, let method, let template else { return nil }
        return FanOutTemplate(items: pointer, method: method, path: template, headers: headers, then: then)
    }
}
