import Config
import FanOut
import BatchInput
import Codecs
import MultiStatus
import Testing
import Upstream

private let valid = """
listen: "127.0.0.1:8080"
metrics_path: /metrics
upstreams:
  users:
    url: http://127.0.0.1:9090/api
    protocol: h2c
    connections: 2
    timeout: 5s
  legacy:
    url: http://localhost:8081
    protocol: http1
routes:
  - name: users-by-id
    method: POST
    path: /bulk/users
    upstream: users
    fan_out:
      items: /ids
      method: GET
      path: /users/{item}
    concurrency: 100
    max_items: 1000
    deadline: 2500ms
  - name: batch
    method: POST
    path: /batch
    upstream: legacy
"""

private func problems(_ yaml: String) -> [ConfigProblem] {
    do {
        _ = try ConfigLoader.parse(yaml: yaml, file: "c.yaml")
        return []
    } catch {
        return error.problems
    }
}

@Test func validConfigurationIsTyped() throws {
    let config = try ConfigLoader.parse(yaml: valid, file: "c.yaml")
    #expect(config.listen == HostPort(host: "127.0.0.1", port: 8080))
    #expect(config.upstreams.count == 2)
    let users = try #require(config.upstream(named: "users"))
    #expect(users.endpoint.basePath == "/api")
    #expect(users.endpoint.port == 9090)
    #expect(users.protocol == .h2c)
    #expect(users.timeout == .seconds(5))
    #expect(config.upstream(named: "legacy")?.endpoint.port == 8081)
    #expect(config.upstream(named: "legacy")?.protocol == .http1)
    #expect(config.routes.map(\.name) == ["users-by-id", "batch"])
    #expect(config.routes[0].fanOut?.items == (try JSONPointer("/ids")))
    #expect(config.routes[0].fanOut?.path.description == "/users/{item}")
    #expect(config.routes[1].fanOut == nil)
    #expect(config.routes[0].deadline == .milliseconds(2500))
    #expect(config.routes[1].deadline == nil)
}

@Test func unknownKeyIsReportedWithLineAndColumn() {
    let yaml = valid.replacingOccurrences(of: "    connections: 2\n", with: "    connectons: 2\n")
    let found = problems(yaml)
    #expect(found.count == 1)
    #expect(found.first?.line == 7)
    #expect(found.first?.column == 5)
    #expect(found.first?.description.hasPrefix("c.yaml:7:5: unknown key 'connectons'") == true)
}

@Test func unknownUpstreamNamesTheRoute() {
    let yaml = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: nosuch")
    let found = problems(yaml)
    #expect(found.count == 1)
    #expect(found.first?.message.contains("route 'batch': unknown upstream \"nosuch\"") == true)
    #expect(found.first?.line == 27)
    #expect(found.first?.column == 15)
}

@Test func badDurationAndBadTemplateAreBothReported() {
    let yaml = valid
        .replacingOccurrences(of: "timeout: 5s", with: "timeout: 5")
        .replacingOccurrences(of: "/users/{item}", with: "/users/{item")
    let found = problems(yaml)
    #expect(found.count == 2)
    #expect(found.contains { $0.message.contains("\"5\" is not a duration") && $0.line == 8 })
    #expect(found.contains { $0.message.contains("never closed") && $0.line == 20 })
}

@Test func duplicateRoutesAreRefused() {
    let yaml = valid + """

  - name: again
    method: POST
    path: /bulk/users
    upstream: users
"""
    let found = problems(yaml)
    #expect(found.count == 1)
    #expect(found.first?.message.contains("duplicate route: POST /bulk/users is already handled by route 'users-by-id'") == true)
}

@Test func h2NeedsAnHTTPSURL() throws {
    let cleartext = valid.replacingOccurrences(of: "protocol: h2c", with: "protocol: h2")
    #expect(problems(cleartext).first?.message.contains("protocol h2 is HTTP/2 over TLS and needs an https url") == true)
    let tls = cleartext.replacingOccurrences(of: "url: http://127.0.0.1:9090/api", with: "url: https://127.0.0.1:9090/api")
    #expect(try ConfigLoader.parse(yaml: tls, file: "c.yaml").upstreams.contains { $0.protocol == .h2 })
}

@Test func yamlSyntaxErrorsHaveAPosition() {
    let found = problems("listen: [\n")
    #expect(found.count == 1)
    #expect(found.first?.message.hasPrefix("YAML syntax") == true)
}

@Test func missingSectionsAreReported() {
    let found = problems("listen: \"127.0.0.1:1\"\n")
    #expect(found.map(\.message).contains("missing key 'upstreams'"))
    #expect(found.map(\.message).contains("missing key 'routes'"))
}

@Test func durationsAndSizes() {
    #expect(ConfigValues.duration("250ms") == .success(.milliseconds(250)))
    #expect(ConfigValues.duration("1m30s") == .success(.seconds(90)))
    #expect(ConfigValues.duration("1.5s") == .success(.milliseconds(1500)))
    #expect(ConfigValues.duration("5") == .failure(.malformed))
    #expect(ConfigValues.duration("-1s") == .failure(.malformed))
    #expect(ConfigValues.byteSize("8MiB") == .success(8 << 20))
    #expect(ConfigValues.byteSize("100kB") == .success(100_000))
    #expect(ConfigValues.byteSize("12 parsecs") == .failure(.malformed))
}

@Test func hostPorts() {
    #expect(HostPort.parse("[::1]:8080") == HostPort(host: "::1", port: 8080))
    #expect(HostPort.parse("0.0.0.0:80") == HostPort(host: "0.0.0.0", port: 80))
    #expect(HostPort.parse("localhost") == nil)
    #expect(HostPort.parse("a:99999") == nil)
}

@Test func theShippedConfigIsValid() throws {
    let config = try ConfigLoader.load(path: "config.yaml")
    #expect(config.demoUpstream != nil)
    #expect(!config.routes.isEmpty)
}

@Test func forwardHeadersAreValidated() throws {
    let good = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    forward_headers: [Authorization, X-Tenant]")
    #expect(try ConfigLoader.parse(yaml: good, file: "c.yaml").routes[1].forwardHeaders == ["Authorization", "X-Tenant"])
    let bad = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    forward_headers: [Connection, \"a b\"]")
    let found = problems(bad)
    #expect(found.count == 2)
    #expect(found.first?.message.contains("Connection is a header Sheaf handles itself") == true)
    #expect(found.last?.message.contains("\"a b\" is not a header name") == true)
    // A client's Expect is for its own hop: Sheaf holds the body and forwards no expectation.
    let expect = problems(valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    forward_headers: [Expect]"))
    #expect(expect.map(\.message) == ["route 'batch' forward_headers: Expect is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded"])
}

@Test func orderIsCompletionOrRequest() throws {
    let ordered = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    order: request")
    #expect(try ConfigLoader.parse(yaml: ordered, file: "c.yaml").routes[1].requestOrder)
    #expect(try !ConfigLoader.parse(yaml: valid, file: "c.yaml").routes[1].requestOrder)
    let bad = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    order: random")
    #expect(problems(bad).first?.message == "route 'batch' order: \"random\" is not completion or request")
}

@Test func httpsNeedsHTTP1AndAReadableCAFile() throws {
    let https1 = valid.replacingOccurrences(of: "url: http://localhost:8081", with: "url: https://localhost:8443")
    #expect(try ConfigLoader.parse(yaml: https1, file: "c.yaml").upstream(named: "legacy")?.endpoint.scheme == "https")
    let httpsH2c = valid.replacingOccurrences(of: "url: http://127.0.0.1:9090/api", with: "url: https://127.0.0.1:9090/api")
    #expect(problems(httpsH2c).first?.message.contains("an https url takes protocol h2, http1 or auto") == true)
    let missingCA = https1.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    ca_file: /nonexistent/ca.pem")
    #expect(problems(missingCA).first?.message == "upstream 'legacy' ca_file: cannot read \"/nonexistent/ca.pem\"")
    let caOnHTTP = valid.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    ca_file: Package.swift")
    #expect(problems(caOnHTTP).first?.message == "upstream 'legacy' ca_file only applies to an https url")
}

@Test func upstreamTLSKeysAreCheckedAndNamed() throws {
    let https = valid.replacingOccurrences(of: "url: http://localhost:8081", with: "url: https://localhost:8443")
    let good = https.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    server_name: api.internal\n    insecure_skip_verify: true")
    let upstream = try #require(try ConfigLoader.parse(yaml: good, file: "c.yaml").upstream(named: "legacy"))
    #expect(upstream.serverName == "api.internal" && upstream.insecureSkipVerify)
    let certOnly = https.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    client_certificate: Package.swift")
    #expect(problems(certOnly).map(\.message) == ["upstream 'legacy' client_certificate needs client_key (both or neither)"])
    #expect(problems(certOnly).first?.line == 12)
    let keyOnly = https.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    client_key: Package.swift")
    #expect(problems(keyOnly).map(\.message) == ["upstream 'legacy' client_key needs client_certificate (both or neither)"])
    let missing = https.replacingOccurrences(of: "    protocol: http1",
                                             with: "    protocol: http1\n    client_certificate: /nonexistent/c.pem\n    client_key: /nonexistent/c.key")
    #expect(problems(missing).map(\.message) == ["upstream 'legacy' client_certificate: cannot read \"/nonexistent/c.pem\"",
                                                   "upstream 'legacy' client_key: cannot read \"/nonexistent/c.key\""])
    let notPEM = https.replacingOccurrences(of: "    protocol: http1",
                                            with: "    protocol: http1\n    client_certificate: Package.swift\n    client_key: Package.swift")
    #expect(problems(notPEM).map(\.message) == ["upstream 'legacy' client_certificate: Package.swift holds no PEM certificate"])
    let sniOnHTTP = valid.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    server_name: x.example")
    #expect(problems(sniOnHTTP).map(\.message) == ["upstream 'legacy' server_name only applies to an https url"])
    let notBool = https.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    insecure_skip_verify: maybe")
    #expect(problems(notBool).map(\.message) == ["upstream 'legacy' insecure_skip_verify: \"maybe\" is not true or false"])
}

@Test func balanceIsReadAndChecked() throws {
    let spread = valid.replacingOccurrences(of: "    protocol: http1", with: "    protocol: h2c\n    balance: connections")
    #expect(try #require(try ConfigLoader.parse(yaml: spread, file: "c.yaml").upstream(named: "legacy")).balance == .connections)
    let onHTTP1 = valid.replacingOccurrences(of: "    protocol: http1", with: "    protocol: http1\n    balance: connections")
    #expect(problems(onHTTP1).map(\.message) == ["upstream 'legacy' balance only applies to HTTP/2 (protocol auto, h2c or h2): HTTP/1.1 has one curl thread"])
    #expect(try #require(try ConfigLoader.parse(yaml: valid, file: "c.yaml").upstream(named: "legacy")).balance == .loop)
    let bad = valid.replacingOccurrences(of: "    protocol: http1", with: "    protocol: h2c\n    balance: random")
    let found = problems(bad)
    #expect(found.map(\.message) == ["upstream 'legacy': unknown balance \"random\" (expected loop or connections)"])
    #expect(found.first?.line != nil && found.first?.column != nil)
}

@Test func retryCircuitBreakerAndMaxQueuedAreReadAndChecked() throws {
    let block = """
        protocol: http1
        max_queued: 500
        retry:
          attempts: 3
          backoff: 50ms
          max_backoff: 1s
          on: [connect-failure, reset, refused-stream, 502, 503, 504, 429]
          budget: 20%
          min_retries: 3
        circuit_breaker:
          failure_ratio: 0.5
          min_requests: 20
          window: 10s
          open_for: 5s
    """
    let good = valid.replacingOccurrences(of: "    protocol: http1", with: block)
    let upstream = try #require(try ConfigLoader.parse(yaml: good, file: "c.yaml").upstream(named: "legacy"))
    #expect(upstream.maxQueued == 500)
    #expect(upstream.retry.attempts == 3 && upstream.retry.budget == 0.2 && upstream.retry.minRetries == 3)
    #expect(upstream.retry.on == RetryCondition.defaults && upstream.retry.maxBackoff == .seconds(1))
    #expect(upstream.circuitBreaker?.minRequests == 20 && upstream.circuitBreaker?.openFor == .seconds(5))
    // Defaults: no retries, no breaker, 10000 queued.
    let plain = try #require(try ConfigLoader.parse(yaml: valid, file: "c.yaml").upstream(named: "legacy"))
    #expect(plain.retry.attempts == 1 && plain.circuitBreaker == nil && plain.maxQueued == 10_000)

    let bad = good.replacingOccurrences(of: "[connect-failure, reset, refused-stream, 502, 503, 504, 429]", with: "[reset, 200, sometimes]")
        .replacingOccurrences(of: "budget: 20%", with: "budget: 150%")
        .replacingOccurrences(of: "failure_ratio: 0.5", with: "failure_ratio: 0")
        .replacingOccurrences(of: "attempts: 3", with: "attempts: 0")
    #expect(problems(bad).map(\.message) == [
        "upstream 'legacy' retry attempts must be between 1 and 10, got 0",
        "upstream 'legacy' retry on: \"200\" is not connect-failure, reset, refused-stream or a status 400-599",
        "upstream 'legacy' retry on: \"sometimes\" is not connect-failure, reset, refused-stream or a status 400-599",
        "upstream 'legacy' retry budget: \"150%\" is not a share from 0 to 1 (write e.g. 20% or 0.2)",
        "upstream 'legacy' circuit_breaker failure_ratio: \"0\" is not a share above 0, at most 1 (write e.g. 50% or 0.5)",
    ])
    let backwards = good.replacingOccurrences(of: "max_backoff: 1s", with: "max_backoff: 10ms")
    #expect(problems(backwards).map(\.message) == ["upstream 'legacy' retry max_backoff (10ms) is shorter than backoff (50ms)"])
    let unknown = good.replacingOccurrences(of: "min_retries: 3", with: "min_retries: 3\n      jitter: none")
    #expect(problems(unknown).first?.message.contains("jitter") == true)
}

@Test func fanOutHeadersRefuseHopByHopNames() throws {
    let headers = """
          path: /users/{item}
          headers:
            X-Api-Version: "2"
            Host: internal.example
            content-length: "5"
            Connection: close
            Transfer-Encoding: chunked
    """
    let yaml = valid.replacingOccurrences(of: "      path: /users/{item}", with: headers)
    let found = problems(yaml)
    #expect(found.map(\.description) == [
        "c.yaml:23:9: route 'users-by-id' fan_out.headers: Host is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded",
        "c.yaml:24:9: route 'users-by-id' fan_out.headers: content-length is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded",
        "c.yaml:25:9: route 'users-by-id' fan_out.headers: Connection is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded",
        "c.yaml:26:9: route 'users-by-id' fan_out.headers: Transfer-Encoding is a header Sheaf handles itself (hop-by-hop, or set or settled by Sheaf) and is never forwarded",
    ])
    let fine = valid.replacingOccurrences(of: "      path: /users/{item}", with: "      path: /users/{item}\n      headers:\n        X-Api-Version: \"2\"")
    let headersSent = try ConfigLoader.parse(yaml: fine, file: "c.yaml").routes[0].fanOut?.headers
    #expect(headersSent?.map(\.name) == ["X-Api-Version"])
}

@Test(arguments: [
    ("    timeout: 5s", "    timeout: 99999999999999999999s", 8, 14, "upstream 'users' timeout: \"99999999999999999999s\" is too large (at most 1000000h)"),
    ("    timeout: 5s", "    timeout: 9999999999h", 8, 14, "upstream 'users' timeout: \"9999999999h\" is too large (at most 1000000h)"),
    ("    timeout: 5s", "    timeout: 1e400s", 8, 14, "upstream 'users' timeout: \"1e400s\" is not a duration (write e.g. 250ms, 5s, 1m)"),
    ("    timeout: 5s", "    max_response_bytes: 99999999999999GiB", 8, 25, "upstream 'users' max_response_bytes: \"99999999999999GiB\" is too large (at most 9223372036854775807 bytes)"),
    ("    timeout: 5s", "    max_response_bytes: 99999999999999999999", 8, 25, "upstream 'users' max_response_bytes: \"99999999999999999999\" is too large (at most 9223372036854775807 bytes)"),
    ("    deadline: 2500ms", "    max_body_bytes: 9999999999999999MB", 23, 21, "route 'users-by-id' max_body_bytes: \"9999999999999999MB\" is too large (at most 9223372036854775807 bytes)"),
    ("    timeout: 5s", "    timeout: 1000000h1ms", 8, 14, "upstream 'users' timeout: \"1000000h1ms\" is too large (at most 1000000h)"),
    ("    deadline: 2500ms", "    deadline: 5000000000000000m", 23, 15, "route 'users-by-id' deadline: \"5000000000000000m\" is too large (at most 1000000h)"),
])
func hugeDurationsAndSizesAreProblemsNotCrashes(line: String, replacement: String, row: Int, column: Int, message: String) {
    let found = problems(valid.replacingOccurrences(of: line, with: replacement))
    #expect(found.map(\.description) == ["c.yaml:\(row):\(column): \(message)"])
}

@Test func theLargestValuesAreAccepted() throws {
    let yaml = valid.replacingOccurrences(of: "    timeout: 5s", with: "    timeout: 1000000h\n    max_response_bytes: 9223372036854775807")
    let users = try #require(try ConfigLoader.parse(yaml: yaml, file: "c.yaml").upstream(named: "users"))
    #expect(users.timeout == .hours(1_000_000))
    #expect(users.maxResponseBodyBytes == Int.max)
}

// MARK: tls (the front listener)

/// `valid` with a `tls` block first: `certificate` is on line 2, `private_key` on line 3, each
/// value at column 16.
private func withTLS(_ lines: String...) -> String {
    "tls:\n" + lines.map { "  \($0)\n" }.joined() + valid
}

@Test func tlsIsTyped() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    let config = try ConfigLoader.parse(yaml: withTLS("certificate: \(files.certificate)", "private_key: \(files.key)",
                                                      "client_ca: \(files.certificate)"), file: "c.yaml")
    #expect(config.tls == FrontTLSConfiguration(certificate: files.certificate, privateKey: files.key, clientCA: files.certificate))
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").tls == nil)
}

@Test func tlsCertificateThatCannotBeReadIsReportedAtItsValue() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    let found = problems(withTLS("certificate: /nonexistent/cert.pem", "private_key: \(files.key)"))
    #expect(found.map(\.description) == ["c.yaml:2:16: tls certificate: cannot read \"/nonexistent/cert.pem\""])
}

@Test func tlsCertificateThatIsNotAPEMCertificateIsReported() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    // A key where the certificate belongs, and the other way round.
    let found = problems(withTLS("certificate: \(files.key)", "private_key: \(files.certificate)"))
    #expect(found.map(\.description) == [
        "c.yaml:2:16: tls certificate: \"\(files.key)\" holds no PEM certificate",
        "c.yaml:3:16: tls private_key: \"\(files.certificate)\" holds no PEM private key Sheaf can read (an encrypted key must be decrypted first)",
    ])
}

/// BoringSSL checks the pair when the context is made (SSL_CTX_use_PrivateKey): both files are
/// fine on their own, and only that check can tell.
@Test func tlsKeyThatDoesNotMatchTheCertificateIsReported() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    let found = problems(withTLS("certificate: \(files.certificate)", "private_key: \(files.otherKey)"))
    #expect(found.map(\.description) == [
        "c.yaml:3:16: tls private_key: \"\(files.otherKey)\" does not match the certificate in \"\(files.certificate)\"",
    ])
}

@Test func tlsUnknownKeysAndAMissingPrivateKeyAreReported() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    let found = problems(withTLS("certificate: \(files.certificate)", "key: \(files.key)"))
    #expect(found.map(\.description) == [
        "c.yaml:3:3: unknown key 'key' in tls (expected one of: certificate, private_key, client_ca)",
        "c.yaml:1:1: tls is missing 'private_key' (a PEM file)",
    ])
}

@Test func tlsClientCAMustHoldACertificate() throws {
    let files = try TLSFiles()
    defer { files.remove() }
    let found = problems(withTLS("certificate: \(files.certificate)", "private_key: \(files.key)", "client_ca: \(files.key)"))
    #expect(found.map(\.description) == ["c.yaml:4:14: tls client_ca: \"\(files.key)\" holds no PEM certificate"])
    #expect(problems("tls: yes\n" + valid).map(\.description) == ["c.yaml:1:6: tls must be a mapping"])
}

@Test func forwardedAndResponseHeadersArePerRoute() throws {
    let defaults = try ConfigLoader.parse(yaml: valid, file: "c.yaml").routes[1]
    #expect(defaults.forwarded)
    #expect(defaults.responseHeaders == ReportedHeaders.standard)
    #expect(ReportedHeaders.standard.names == ["content-type", "etag", "last-modified", "location", "retry-after", "cache-control"])
    let custom = valid.replacingOccurrences(of: "    upstream: legacy",
                                            with: "    upstream: legacy\n    forwarded: false\n    response_headers: [ETag, X-Trace-Id]")
    let route = try ConfigLoader.parse(yaml: custom, file: "c.yaml").routes[1]
    #expect(!route.forwarded)
    #expect(route.responseHeaders.names == ["etag", "x-trace-id"])
    let none = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    response_headers: []")
    #expect(try ConfigLoader.parse(yaml: none, file: "c.yaml").routes[1].responseHeaders.names.isEmpty)
    let bad = valid.replacingOccurrences(of: "    upstream: legacy",
                                         with: "    upstream: legacy\n    forwarded: sometimes\n    response_headers: [Transfer-Encoding, \"a b\"]")
    let found = problems(bad).map(\.message)
    #expect(found.count == 3)
    #expect(found.contains { $0.contains("route 'batch' forwarded") && $0.contains("true or false") })
    #expect(found.contains { $0.contains("route 'batch' response_headers: Transfer-Encoding is a header Sheaf handles itself") })
    #expect(found.contains { $0.contains("route 'batch' response_headers: \"a b\" is not a header name") })
}

@Test func accessLogIsStderrOffOrAFile() throws {
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").accessLog == .stderr)
    #expect(try ConfigLoader.parse(yaml: "access_log: off\n" + valid, file: "c.yaml").accessLog == .off)
    #expect(try ConfigLoader.parse(yaml: "access_log: /tmp/sheaf-access.log\n" + valid, file: "c.yaml").accessLog
            == .file("/tmp/sheaf-access.log"))
    let relative = problems("access_log: logs/access.log\n" + valid)
    #expect(relative.first?.message == "access_log: \"logs/access.log\" must be stderr, off or an absolute path")
    #expect(relative.first?.line == 1)
    let missingDirectory = problems("access_log: /nonexistent-dir/access.log\n" + valid)
    #expect(missingDirectory.first?.message == "access_log: directory \"/nonexistent-dir\" does not exist")
}

// Found by the FuzzConfig fuzz target: a one-letter relative access_log ("s") crashed the loader
// inside Foundation's NSString.deletingLastPathComponent before the problem was reported.
@Test(arguments: ["s", "x/", "a"])
func aShortRelativeAccessLogIsAProblemNotACrash(value: String) {
    let found = problems("access_log: \(value)\n" + valid)
    #expect(found.first?.message == "access_log: \"\(value)\" must be stderr, off or an absolute path")
}

@Test func anAccessLogAtTheRootNamesTheRootDirectory() throws {
    #expect(try ConfigLoader.parse(yaml: "access_log: /sheaf-access.log\n" + valid, file: "c.yaml").accessLog == .file("/sheaf-access.log"))
}

@Test func tracingNeedsAnOTLPEndpoint() throws {
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").tracing == nil)
    let on = try ConfigLoader.parse(yaml: "tracing: {otlp_endpoint: \"http://127.0.0.1:4318/v1/traces\", sample_ratio: 25%}\n" + valid,
                                    file: "c.yaml").tracing
    #expect(on?.otlpEndpoint == "http://127.0.0.1:4318/v1/traces")
    #expect(on?.serviceName == "sheaf")
    #expect(on?.sampleRatio == 0.25)
    #expect(problems("tracing: {service_name: edge}\n" + valid).first?.message == "tracing is missing 'otlp_endpoint' (an http:// or https:// URL)")
    #expect(problems("tracing: {otlp_endpoint: \"collector:4318\"}\n" + valid).first?.message
            == "tracing otlp_endpoint: \"collector:4318\" must be an http:// or https:// URL")
    #expect(problems("tracing: {otlp_endpoint: \"http://c:4318\", sample_ratio: 2}\n" + valid).first?.message.contains("tracing sample_ratio") == true)
}

@Test func batchSemanticsKeysArePerRoute() throws {
    let defaults = try ConfigLoader.parse(yaml: valid, file: "c.yaml").routes[1]
    #expect(defaults.policy == FanOutPolicy())
    #expect(defaults.coalesce)
    let custom = valid.replacingOccurrences(of: "    upstream: legacy",
                                            with: "    upstream: legacy\n    on_error: stop\n    depends_on_success: [2xx, 404]\n    coalesce: false")
    let route = try ConfigLoader.parse(yaml: custom, file: "c.yaml").routes[1]
    #expect(route.policy == FanOutPolicy(stopOnError: true, dependencySuccess: StatusSet(classes: [2], codes: [404])))
    #expect(!route.coalesce)
    let bad = valid.replacingOccurrences(of: "    upstream: legacy",
                                         with: "    upstream: legacy\n    on_error: halt\n    depends_on_success: [2xx, 700, 6xx]")
    let found = problems(bad).map(\.message)
    #expect(found.count == 3)
    #expect(found.contains("route 'batch' on_error: \"halt\" is not continue or stop"))
    #expect(found.contains("route 'batch' depends_on_success: \"700\" is not a status (100-599) or a class (1xx-5xx)"))
    #expect(found.contains("route 'batch' depends_on_success: \"6xx\" is not a status (100-599) or a class (1xx-5xx)"))
}

@Test func routeAuthNeedsATokensFile() throws {
    let file = "/tmp/sheaf-config-test-tokens"
    try "s3cret\n\n  other-token  \n".write(toFile: file, atomically: true, encoding: .utf8)
    let bearer = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    auth: {tokens_file: \(file)}")
    #expect(try ConfigLoader.parse(yaml: bearer, file: "c.yaml").routes[1].auth == RouteAuth(tokensFile: file))
    let apiKey = valid.replacingOccurrences(of: "    upstream: legacy",
                                            with: "    upstream: legacy\n    auth: {tokens_file: \(file), api_key_header: X-Api-Key}")
    #expect(try ConfigLoader.parse(yaml: apiKey, file: "c.yaml").routes[1].auth == RouteAuth(tokensFile: file, apiKeyHeader: "X-Api-Key"))
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").routes[1].auth == nil)
    let missing = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    auth: {tokens_file: /nonexistent/tokens}")
    #expect(problems(missing).first?.message == "route 'batch' auth.tokens_file: cannot read \"/nonexistent/tokens\"")
    try "\n   \n".write(toFile: file + "-empty", atomically: true, encoding: .utf8)
    let empty = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    auth: {tokens_file: \(file)-empty}")
    #expect(problems(empty).first?.message == "route 'batch' auth.tokens_file: \"\(file)-empty\" holds no token (one per line)")
    let noFile = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    auth: {api_key_header: X-Api-Key}")
    #expect(problems(noFile).first?.message == "route 'batch' auth is missing 'tokens_file' (one token per line)")
}

@Test func limitsHaveDefaultsAndBounds() throws {
    let defaults = try ConfigLoader.parse(yaml: valid, file: "c.yaml")
    #expect(defaults.maxURLBytes == 8 << 10 && defaults.maxHeaders == 100 && defaults.maxHeaderBytes == 32 << 10)
    #expect(defaults.http2InitialWindowSize == 1 << 20 && defaults.http2MaxFrameSize == 16 << 10)
    #expect(defaults.maxBatches == 1024 && defaults.maxNestingDepth == 64)
    #expect(defaults.routes[1].maxBatches == 0 && defaults.routes[1].maxItemBodyBytes == 1 << 20)
    let custom = try ConfigLoader.parse(yaml: """
        max_url_bytes: 2KiB
        max_headers: 20
        max_header_bytes: 4KiB
        http2_initial_window_size: 64KiB
        http2_max_frame_size: 32KiB
        max_batches: 10
        max_nesting_depth: 8
        """ + "\n" + valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    max_batches: 2\n    max_item_body_bytes: 10KiB"),
        file: "c.yaml")
    #expect(custom.maxURLBytes == 2048 && custom.maxHeaders == 20 && custom.maxHeaderBytes == 4096)
    #expect(custom.http2InitialWindowSize == 65536 && custom.http2MaxFrameSize == 32768 && custom.maxBatches == 10)
    #expect(custom.maxNestingDepth == 8 && custom.routes[1].maxBatches == 2 && custom.routes[1].maxItemBodyBytes == 10240)
    let bad = problems("http2_max_frame_size: 1KiB\nmax_nesting_depth: 65\n" + valid).map(\.message)
    #expect(bad.count == 2)
    #expect(bad.contains { $0.hasPrefix("http2_max_frame_size") })
    #expect(bad.contains { $0.hasPrefix("max_nesting_depth") })
}

@Test func propertiesAreWebDAVPropertyNamesPerRoute() throws {
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").routes[1].properties.isEmpty)
    let custom = valid.replacingOccurrences(of: "    upstream: legacy",
                                            with: "    upstream: legacy\n    properties: [getetag, getcontenttype, getcontentlength, getlastmodified]")
    #expect(try ConfigLoader.parse(yaml: custom, file: "c.yaml").routes[1].properties
            == [.getetag, .getcontenttype, .getcontentlength, .getlastmodified])
    let bad = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    properties: [getetag, displayname]")
    let found = problems(bad)
    #expect(found.count == 1)
    #expect(found.first?.message == "route 'batch' properties: \"displayname\" is not one of getetag, getcontenttype, getcontentlength, getlastmodified")
    #expect(found.first?.line == 28)
    #expect(found.first?.column == 27)
    let scalar = valid.replacingOccurrences(of: "    upstream: legacy", with: "    upstream: legacy\n    properties: getetag")
    #expect(problems(scalar).map(\.message) == ["route 'batch' properties must be a list, e.g. [getetag, getcontenttype]"])
    #expect(problems(scalar).first?.line == 28)
}

@Test func aTemplateRouteMayTakeMillionsOfItemsAnExplicitOneNot() throws {
    let streamed = valid.replacingOccurrences(of: "max_items: 1000\n", with: "max_items: 5000000\n")
    #expect(try ConfigLoader.parse(yaml: streamed, file: "c.yaml").routes[0].maxItems == 5_000_000)
    let explicit = valid + "\n    max_items: 5000000\n"
    let found = problems(explicit)
    #expect(found.count == 1)
    #expect(found.first?.message.contains("route 'batch' max_items must be between 1 and 1000000, got 5000000") == true, "\(found)")
}

@Test func aRateTooSmallToWaitForIsAProblem() {
    let yaml = valid + "\n    rate_limit: {requests_per_second: 1e-300}\n"
    let found = problems(yaml)
    #expect(found.count == 1)
    #expect(found.first?.message.contains("rate_limit.requests_per_second must be a number from 0.001") == true, "\(found)")
}

@Test func minBodyRateIsReadAndChecked() throws {
    #expect(try ConfigLoader.parse(yaml: valid, file: "c.yaml").minBodyRate == 256)
    #expect(try ConfigLoader.parse(yaml: "min_body_rate: 1KiB\n" + valid, file: "c.yaml").minBodyRate == 1024)
    #expect(try ConfigLoader.parse(yaml: "min_body_rate: 0\n" + valid, file: "c.yaml").minBodyRate == 0)
    let refused = problems("min_body_rate: fast\n" + valid)
    #expect(refused.count == 1 && refused[0].message.contains("min_body_rate: \"fast\" is not a size per second"))
}

@Test func maxResponseHeaderBytesIsReadAndChecked() throws {
    let users = { (yaml: String) in try ConfigLoader.parse(yaml: yaml, file: "c.yaml").upstream(named: "users") }
    #expect(try users(valid)?.maxResponseHeaderBytes == 64 << 10)
    let set = valid.replacingOccurrences(of: "    timeout: 5s", with: "    timeout: 5s\n    max_response_header_bytes: 100KiB")
    #expect(try users(set)?.maxResponseHeaderBytes == 100 << 10)
    let refused = problems(valid.replacingOccurrences(of: "    timeout: 5s", with: "    timeout: 5s\n    max_response_header_bytes: 0"))
    #expect(refused.count == 1 && refused[0].message.contains("upstream 'users' max_response_header_bytes: \"0\""), "\(refused)")
    let huge = problems(valid.replacingOccurrences(of: "    timeout: 5s", with: "    timeout: 5s\n    max_response_header_bytes: 8GiB"))
    #expect(huge.count == 1 && huge[0].message.contains("max_response_header_bytes: at most 128KiB"), "\(huge)")
    let tiny = problems(valid.replacingOccurrences(of: "    timeout: 5s", with: "    timeout: 5s\n    max_response_header_bytes: 40"))
    #expect(tiny.count == 1 && tiny[0].message.contains("max_response_header_bytes: at least 1KiB"), "\(tiny)")
}
