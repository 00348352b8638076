import Atomics
import CCurlShim
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// libcurl wants one process-wide init before any handle exists; Swift runs this once, lazily.
private let curlGlobalInit: Void = {
    curl_global_init(Int(CURL_GLOBAL_DEFAULT))
}()

/// HTTP/1.1 upstream transport: a libcurl multi handle on a thread of its own, with a
/// keep-alive pool of `connections` connections to the upstream. Other threads talk to it
/// only through a locked inbox and `curl_multi_wakeup`.
public final class CurlTransport: UpstreamTransport, @unchecked Sendable {
    public let configuration: UpstreamConfiguration
    private let logger: Logger
    private let events: UpstreamEvents
    private let multi: UnsafeMutableRawPointer
    /// `server_name`: requests name it in the url (so curl sends it in SNI and verifies the
    /// certificate against it), CURLOPT_CONNECT_TO sends them to the url's real host, and the
    /// Host header keeps the url's authority. Curl thread only; freed when it ends.
    private let urlOrigin: String
    private var connectTo: UnsafeMutablePointer<curl_slist>?

    // Under `lock`.
    private let lock = NIOLock()
    private var inbox: [CurlExchange] = []
    private var cancellations: [CurlExchange] = []
    private var readingChanges: [(CurlExchange, suspended: Bool)] = []
    private var stopping = false
    /// Items handed over and not settled.
    private var admitted = 0 {
        didSet { publishLoad() }
    }
    private let engineGauges = UpstreamGauges(protocolName: "http/1.1")
    /// Sockets curl has open, registered by its callbacks on the curl thread (the count is read
    /// atomically); also where a reused connection is checked before a request goes on it.
    private let sockets: UnsafeMutablePointer<sheaf_sockets> = sheaf_sockets_create()
    /// False once the curl thread is about to clean `multi` up: nothing may wake it after that.
    private var multiAlive = true
    private var shutdownWaiters: [CheckedContinuation<Void, Never>] = []

    // Curl thread only.
    private var active: [UnsafeMutableRawPointer: CurlExchange] = [:]
    /// Exchanges waiting for a connection, in arrival order. They wait here, not inside curl:
    /// curl_multi_remove_handle walks every handle the multi holds, so a thousand queued in curl
    /// made each finished transfer cost a thousand steps (28 % of Sheaf's CPU on this path,
    /// issue 13). Curl gets at most `connections` transfers at a time.
    private var waiting = CircularBuffer<CurlExchange>()
    /// Easy handles between transfers, each with its `sheaf_transfer` (no lookup per item). A
    /// handle is kept configured for the next transfer only on a libcurl that may reuse one
    /// (`reusesHandles`); otherwise only its `sheaf_transfer` is kept, and the handle is freed.
    private var spareHandles: [(easy: UnsafeMutableRawPointer?, transfer: UnsafeMutablePointer<sheaf_transfer>)] = []
    /// Whether a handle may serve a second transfer. Before 8.1.0, libcurl kept a pointer to the
    /// last header a handle stored past the transfer that freed it (curl#11101), and an answer
    /// whose first header line is a fold then wrote into freed memory: an upstream could corrupt
    /// Sheaf's heap with two answers. There each transfer gets a fresh handle (connections and
    /// TLS sessions live in the multi handle, so they are still reused), for about 16 % more
    /// instructions per item on this path than a kept handle costs.
    static let reusesHandles = sheaf_curl_version_num() >= 0x08_01_00
    /// Every `sheaf_transfer` (its sends, what it may send, its error text), freed when the
    /// thread ends; a transfer's exchange holds its own (`CurlExchange.transfer`), so none is looked up.
    private var transfers: [UnsafeMutablePointer<sheaf_transfer>] = []
    /// The url of the transfer being configured, NUL-terminated.
    private var urlBytes: [UInt8] = []
    /// `ca_file`, `client_certificate` and `client_key` as read when the upstream was built: given
    /// to libcurl as bytes, which otherwise read the files again for every new connection (a
    /// file rotated away then failed the running upstream, which the HTTP/2 engine never did).
    private let tlsFiles: (ca: [UInt8]?, certificate: [UInt8]?, key: [UInt8]?)

    public init(configuration: UpstreamConfiguration, logger: Logger, events: UpstreamEvents = .none) {
        _ = curlGlobalInit
        self.configuration = configuration
        self.logger = logger
        self.events = events
        let endpoint = configuration.endpoint
        if let name = configuration.serverName {
            urlOrigin = "\(endpoint.scheme)://\(name):\(endpoint.port)"
            connectTo = curl_slist_append(nil, "\(name):\(endpoint.port):\(endpoint.bracketedHost):\(endpoint.port)")
        } else {
            urlOrigin = endpoint.origin
        }
        func read(_ path: String?) -> [UInt8]? { path.flatMap { FileManager.default.contents(atPath: $0) }.map { [UInt8]($0) } }
        tlsFiles = (read(configuration.caFile), read(configuration.clientCertificate), read(configuration.clientKey))
        self.multi = curl_multi_init()
        let connections = max(1, configuration.connections)
        sheaf_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, connections)
        sheaf_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, connections)
        sheaf_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_NOTHING))
        // Not kept: the thread's block holds the transport until it ends, and a transport holding
        // its thread made a cycle that outlived shutdown (a transport leaked per reload).
        let thread = Thread { [self] in self.run() }
        thread.name = "sheaf-curl-\(configuration.name)"
        thread.start()
    }

    deinit {
        // The curl thread holds the transport until it has cleaned the multi handle up, and
        // with it every socket whose close the callbacks count.
        sheaf_sockets_destroy(sockets)
    }

    public var gauges: [UpstreamGauges] {
        engineGauges.connections.store(sheaf_sockets_count(sockets), ordering: .relaxed)
        return [engineGauges]
    }

    /// An exchange settles (once, just before its result goes out): it no longer counts
    /// against `connections` and `max_queued`.
    func exchangeSettled() {
        lock.withLock { admitted -= 1 }
    }

    /// Under `lock`: transfers beyond `connections` wait inside curl for one.
    private func publishLoad() {
        let connections = max(1, configuration.connections)
        engineGauges.streams.store(min(admitted, connections), ordering: .relaxed)
        engineGauges.queued.store(max(0, admitted - connections), ordering: .relaxed)
    }

    public func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let exchange = CurlExchange(request: request, deadline: .now() + configuration.timeout, transport: self,
                                    maxBodyBytes: configuration.maxResponseBodyBytes,
                                    maxHeadBytes: configuration.maxResponseHeaderBytes, sink: sink, tag: tag)
        enum Verdict { case accepted, stopping, full }
        let verdict = lock.withLock { () -> Verdict in
            guard !stopping else { return .stopping }
            // Transfers beyond `connections` wait inside curl for a connection: that is the queue.
            guard admitted - max(1, configuration.connections) < configuration.maxQueued else { return .full }
            admitted += 1
            inbox.append(exchange)
            // The curl thread takes the whole inbox at once: only the first item since it last
            // did needs to wake it (a wakeup is a syscall and a context switch; they led the profile).
            if inbox.count == 1 { wakeCurlThread() }
            return .accepted
        }
        switch verdict {
        case .accepted:
            break
        case .stopping:
            lock.withLock { admitted += 1 }
            exchange.settle(.failure(Self.shuttingDownError(attempts: 0)))
        case .full:
            lock.withLock { admitted += 1 }
            exchange.settle(.failure(UpstreamError(.overloaded,
                "upstream \(configuration.name) has max_queued (\(configuration.maxQueued)) items waiting for a connection; not sent", attempts: 0)))
        }
        return exchange
    }

    /// Backpressure: the curl thread pauses (or resumes) the transfer's receiving.
    func setReading(_ exchange: CurlExchange, suspended: Bool) {
        lock.withLock {
            guard !stopping else { return }
            readingChanges.append((exchange, suspended))
            wakeCurlThread()
        }
    }

    func cancel(_ exchange: CurlExchange) {
        lock.withLock {
            // After shutdown() the curl thread settles every open call itself, with the 503.
            guard !stopping else { return }
            cancellations.append(exchange)
            wakeCurlThread()
        }
    }

    /// Returns once the curl thread has settled every open call with the 503 and ended.
    public func shutdown() async {
        beginShutdown()
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let ended = lock.withLock { () -> Bool in
                if !multiAlive { return true }
                shutdownWaiters.append(waiter)
                return false
            }
            if ended { waiter.resume() }
        }
    }

    /// Stops taking calls and tells the curl thread to settle every open one with the 503 and
    /// end; does not wait for it (`shutdown()` does).
    public func beginShutdown() {
        lock.withLock {
            stopping = true
            wakeCurlThread()
        }
    }

    /// Called with `lock` held, which the curl thread also takes to mark `multi` gone: so a
    /// wakeup can never reach a multi handle that is being, or has been, cleaned up.
    private func wakeCurlThread() {
        if multiAlive { curl_multi_wakeup(multi) }
    }

    private static func shuttingDownError(attempts: Int = 1) -> UpstreamError {
        UpstreamError.shutDown(attempts: attempts)
    }

    // MARK: the curl thread

    private func run() {
        while true {
            let (incoming, cancelled, changes, stop) = lock.withLock {
                () -> ([CurlExchange], [CurlExchange], [(CurlExchange, suspended: Bool)], Bool) in
                defer {
                    inbox.removeAll(keepingCapacity: true)
                    cancellations.removeAll()
                    readingChanges.removeAll()
                }
                return (inbox, cancellations, readingChanges, stopping)
            }
            if !stop {
                // A queued exchange times out like a started one (expireOverdue).
                for exchange in incoming { waiting.append(exchange) }
                startWaiting()
            }
            for (exchange, suspended) in changes where !exchange.isSettled {
                exchange.readingSuspended = suspended
                if !suspended, exchange.paused, let easy = exchange.easy {
                    exchange.paused = false
                    curl_easy_pause(easy, 0)  // CURLPAUSE_CONT
                }
            }
            // Cancelled before shutdown(): cancel() takes no more once `stopping` is set.
            for exchange in cancelled where !exchange.isSettled {
                // Attempts 0 unless it went out (`settle` counts the sends): one cut while it
                // waited for a connection never reached the upstream.
                finish(exchange, .failure(UpstreamError(.cancelled, "cancelled", attempts: 0)))
            }
            if stop {
                for exchange in incoming where !exchange.isSettled {
                    exchange.settle(.failure(Self.shuttingDownError(attempts: 0)))
                }
                for exchange in Array(active.values) { finish(exchange, .failure(Self.shuttingDownError())) }
                // One still waiting for a connection was never sent.
                for exchange in waiting where !exchange.isSettled { exchange.settle(.failure(Self.shuttingDownError(attempts: 0))) }
                break
            }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            collectFinished()
            var wait = expireOverdue()
            // Connections freed up: their next transfers go now, not after the poll's timeout.
            if startWaiting() { wait = 0 }
            var events: Int32 = 0
            curl_multi_poll(multi, nil, 0, wait, &events)
        }
        let waiters = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            multiAlive = false
            defer { shutdownWaiters.removeAll() }
            return shutdownWaiters
        }
        for spare in spareHandles { if let easy = spare.easy { curl_easy_cleanup(easy) } }
        for transfer in transfers { transfer.deallocate() }
        transfers.removeAll()
        spareHandles.removeAll()
        curl_multi_cleanup(multi)
        curl_slist_free_all(connectTo)
        connectTo = nil
        for waiter in waiters { waiter.resume() }
    }

    /// Hands waiting exchanges to curl while it has fewer transfers than connections; returns
    /// whether it started any.
    @discardableResult
    private func startWaiting() -> Bool {
        let limit = max(1, configuration.connections)
        var started = false
        while active.count < limit, let exchange = waiting.popFirst() {
            guard !exchange.isSettled else { continue }  // cancelled or timed out while waiting
            start(exchange)
            started = true
        }
        return started
    }

    private func start(_ exchange: CurlExchange) {
        if exchange.deadline <= .now() {
            exchange.settle(.failure(timeoutError()))
            return
        }
        // The same limit, and the same 431, as on HTTP/2: an item's fate does not depend on the protocol.
        if let tooLarge = configuration.headTooLarge(exchange.request) {
            exchange.settle(.failure(tooLarge))
            return
        }
        let spare = spareHandles.popLast()
        let transfer = spare?.transfer ?? makeTransfer()
        let easy: UnsafeMutableRawPointer
        if let kept = spare?.easy {
            easy = kept
        } else {
            guard let fresh = curl_easy_init() else {
                spareHandles.append((nil, transfer))
                exchange.settle(.failure(UpstreamError(.unreachable, "libcurl could not create a handle")))
                return
            }
            configureHandle(fresh, transfer)
            easy = fresh
        }
        exchange.transfer = transfer
        exchange.easy = easy
        configure(easy, for: exchange)
        active[easy] = exchange
        curl_multi_add_handle(multi, easy)
    }

    /// Settles every exchange whose deadline has passed, on a connection or still waiting for
    /// one, and returns how long the curl thread may sleep until the next deadline, in ms.
    /// (Not CURLOPT_TIMEOUT_MS: curl starts that clock again when a queued transfer gets its
    /// connection, so an item behind `connections` others could time out twice late.)
    /// Waiting exchanges are in hand-over order, which is deadline order (every item of one
    /// upstream has the same timeout); at most `connections` are on the wire, so they are simply
    /// looked over. No list of weak references: a weakly referenced exchange took the runtime's
    /// slow path for every retain and release (issue 13).
    private func expireOverdue() -> Int32 {
        let now = NIODeadline.now()
        var next = now + .seconds(1)  // the longest sleep
        while let first = waiting.first {
            if first.isSettled {
                waiting.removeFirst()
                continue
            }
            if first.deadline > now {
                next = min(next, first.deadline)
                break
            }
            waiting.removeFirst()
            first.settle(.failure(timeoutError()))
        }
        var overdue: [CurlExchange] = []
        for exchange in active.values {
            if exchange.deadline <= now { overdue.append(exchange) } else { next = min(next, exchange.deadline) }
        }
        for exchange in overdue { finish(exchange, .failure(configuration.timeoutError(answerBegun: exchange.headEnded))) }
        // Rounded up: waking before the deadline would only go round the loop once more.
        return Int32((max(0, (next - now).nanoseconds) + 999_999) / 1_000_000)
    }

    /// A `sheaf_transfer` for this upstream's sockets, kept until the thread ends.
    private func makeTransfer() -> UnsafeMutablePointer<sheaf_transfer> {
        let transfer = UnsafeMutablePointer<sheaf_transfer>.allocate(capacity: 1)
        transfer.initialize(to: sheaf_transfer())
        transfer.pointee.sockets = sockets
        transfers.append(transfer)
        return transfer
    }

    /// What every transfer of this upstream shares, set once per easy handle: a kept handle
    /// goes to its next transfer without `curl_easy_reset`, which freed and rebuilt all of this
    /// per item (issue 13). `configure` sets every option that differs between transfers.
    private func configureHandle(_ easy: UnsafeMutableRawPointer, _ transfer: UnsafeMutablePointer<sheaf_transfer>) {
        sheaf_easy_setopt_long(easy, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        sheaf_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1)
        sheaf_easy_setopt_long(easy, CURLOPT_TCP_NODELAY, 1)
        sheaf_easy_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, Int(configuration.connectTimeout.nanoseconds / 1_000_000))
        sheaf_easy_setopt_long(easy, CURLOPT_FOLLOWLOCATION, 0)
        sheaf_easy_setopt_long(easy, CURLOPT_PROTOCOLS, Int(CURLPROTO_HTTP | CURLPROTO_HTTPS))
        // Straight to the upstream, as the HTTP/2 engine goes: a host's proxy variables are for
        // its outgoing traffic, not for Sheaf's upstreams. Set, they also spare curl reading
        // the environment on every transfer (getenv showed in the profile, issue 13).
        sheaf_easy_setopt_string(easy, CURLOPT_PROXY, "")
        sheaf_easy_setopt_string(easy, CURLOPT_NOPROXY, "*")
        // The bytes read at start; the path only if they could not be read (curl then names the problem).
        if let ca = tlsFiles.ca {
            sheaf_easy_setopt_blob(easy, CURLOPT_CAINFO_BLOB, ca, ca.count)
        } else if let caFile = configuration.caFile {
            sheaf_easy_setopt_string(easy, CURLOPT_CAINFO, caFile)
        }
        if let connectTo { sheaf_easy_setopt_ptr(easy, CURLOPT_CONNECT_TO, connectTo) }
        sheaf_easy_watch_sockets(easy, transfer)
        if let certificate = configuration.clientCertificate, let key = configuration.clientKey {
            if let bytes = tlsFiles.certificate {
                sheaf_easy_setopt_blob(easy, CURLOPT_SSLCERT_BLOB, bytes, bytes.count)
            } else {
                sheaf_easy_setopt_string(easy, CURLOPT_SSLCERT, certificate)
            }
            if let bytes = tlsFiles.key {
                sheaf_easy_setopt_blob(easy, CURLOPT_SSLKEY_BLOB, bytes, bytes.count)
            } else {
                sheaf_easy_setopt_string(easy, CURLOPT_SSLKEY, key)
            }
        }
        if configuration.insecureSkipVerify {
            sheaf_easy_setopt_long(easy, CURLOPT_SSL_VERIFYPEER, 0)
            sheaf_easy_setopt_long(easy, CURLOPT_SSL_VERIFYHOST, 0)
        }
        sheaf_easy_setopt_data_callback(easy, CURLOPT_WRITEFUNCTION, curlWrite)
        sheaf_easy_setopt_data_callback(easy, CURLOPT_HEADERFUNCTION, curlHeader)
    }

    private func configure(_ easy: UnsafeMutableRawPointer, for exchange: CurlExchange) {
        let request = exchange.request
        // Joined in a buffer kept for the next item (curl copies the url): no string per item.
        urlBytes.removeAll(keepingCapacity: true)
        urlBytes.append(contentsOf: urlOrigin.utf8)
        urlBytes.append(contentsOf: request.path.utf8)
        urlBytes.append(0)
        urlBytes.withUnsafeBufferPointer { url in
            _ = sheaf_easy_setopt_ptr(easy, CURLOPT_URL, UnsafeMutableRawPointer(mutating: url.baseAddress))
        }
        if let transfer = exchange.transfer {
            transfer.pointee.error.0 = 0
            transfer.pointee.sends = 0
            transfer.pointee.refused_send = 0
            // libcurl sends again by itself when a reused connection dies unanswered: a request
            // that must not go twice goes once (RFC 9110 §9.2.2), the others as HTTP/2's do.
            let allowed = request.isIdempotent ? request.sendBudget : 1
            transfer.pointee.max_sends = Int32(max(0, allowed - exchange.sends))
        }
        // The method, set whole every time: the handle still holds the last transfer's.
        if let body = request.body {
            // POSTFIELDS is how curl sends a body, and it turns the request into a POST:
            // CUSTOMREQUEST puts the item's own method back on the request line.
            sheaf_easy_setopt_long(easy, CURLOPT_NOBODY, 0)
            sheaf_easy_setopt_off_t(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.readableBytes))
            body.withUnsafeReadableBytes { raw in
                _ = sheaf_easy_setopt_ptr(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: raw.baseAddress))
            }
            sheaf_easy_setopt_string(easy, CURLOPT_CUSTOMREQUEST, request.method)
        } else {
            // HTTPGET also clears NOBODY and a body left from before.
            sheaf_easy_setopt_long(easy, CURLOPT_HTTPGET, 1)
            switch request.method {
            case "GET": sheaf_easy_setopt_ptr(easy, CURLOPT_CUSTOMREQUEST, nil)
            case "HEAD":
                sheaf_easy_setopt_ptr(easy, CURLOPT_CUSTOMREQUEST, nil)
                sheaf_easy_setopt_long(easy, CURLOPT_NOBODY, 1)
            default: sheaf_easy_setopt_string(easy, CURLOPT_CUSTOMREQUEST, request.method)
            }
        }
        let list = CurlHeaderBlock.make(for: request, host: connectTo == nil ? nil : configuration.endpoint.authority)
        exchange.headerList = list
        sheaf_easy_setopt_ptr(easy, CURLOPT_HTTPHEADER, list)
        // Released when the transfer finishes (finish(_:_:)); `active` holds the exchange till then.
        let me = Unmanaged.passUnretained(exchange).toOpaque()
        sheaf_easy_setopt_ptr(easy, CURLOPT_PRIVATE, me)
        sheaf_easy_setopt_ptr(easy, CURLOPT_WRITEDATA, me)
        sheaf_easy_setopt_ptr(easy, CURLOPT_HEADERDATA, me)
    }

    private func collectFinished() {
        var left: Int32 = 0
        while let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                  let exchange = active[easy] else { continue }
            let code = sheaf_msg_result(message)
            if code == CURLE_ABORTED_BY_CALLBACK, exchange.transfer?.pointee.refused_send != 0 {
                // libcurl was about to send it again after a reused connection died unanswered.
                let method = exchange.request.method
                finish(exchange, .failure(UpstreamError(.unreachable, exchange.request.isIdempotent
                    ? "upstream \(configuration.name) closed the connection before the response completed"
                    : "upstream \(configuration.name) closed the connection before answering; a \(method) is not sent again (the upstream may have processed it)",
                    cause: .reset)))
                continue
            }
            if code == CURLE_ABORTED_BY_CALLBACK {
                // Kept off a reused connection that held bytes nobody asked for
                // (sheaf_easy_watch_sockets): nothing was sent, and curl closed that connection.
                // The item goes first in line again, for another connection.
                reuse(exchange)
                continue
            }
            // libcurl 7.88 stores each header line before Sheaf sees it, and refuses one it
            // cannot store (a fold before any field) with the first code; the second is how it
            // refuses a line past CURL_MAX_HTTP_HEADER (100 KiB).
            if exchange.isReadingHead && (code == CURLE_BAD_FUNCTION_ARGUMENT || code == CURLE_OUT_OF_MEMORY) {
                let what = code == CURLE_OUT_OF_MEMORY ? "a header line longer than libcurl reads (100 KiB)"
                    : "a header line libcurl cannot read, such as a fold before any field"
                finish(exchange, .failure(UpstreamError(.protocolError,
                    "upstream \(configuration.name) sent an invalid HTTP/1.1 response (\(what))")))
                continue
            }
            if let refusal = exchange.refusal {
                finish(exchange, .failure(UpstreamError(.protocolError,
                    "upstream \(configuration.name) sent an invalid HTTP/1.1 response (\(refusal))")))
                continue
            }
            // libcurl takes a connection closed inside the head for the answer's end: an answer
            // HTTP/1.1 calls incomplete (RFC 9112 §8), never the upstream's status.
            if code == CURLE_OK && !exchange.headEnded {
                finish(exchange, .failure(UpstreamError(.protocolError,
                    "upstream \(configuration.name) closed the connection before the response head ended", cause: .reset)))
                continue
            }
            // A transfer stopped at the end of a HEAD's answer (see CurlExchange.endsAtHead) is
            // whole; one stopped at `max_response_bytes` is answered with its body cut; one that
            // failed in its trailer section has its whole body (`trailersOverflowed`).
            if code == CURLE_OK || exchange.stoppedAtHead || exchange.cutAtCap || trailersOverflowed(code, exchange) {
                var status = 0
                sheaf_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
                finish(exchange, .success(UpstreamResponse(status: status, headers: exchange.headers,
                                                           body: exchange.body.take(), bodyTruncated: exchange.truncated)))
            } else {
                finish(exchange, .failure(error(for: code, easy: easy, transfer: exchange.transfer)))
            }
        }
    }

    /// Removes the transfer from the multi handle (so a cancelled one stops for real) and settles it.
    private func finish(_ exchange: CurlExchange, _ result: UpstreamResult) {
        release(exchange)
        exchange.settle(result)
    }

    /// An exchange whose request never went out goes to the front of the queue: a connection
    /// that held unsolicited bytes is gone, and the next may be fine. Bounded, in case every
    /// connection the upstream gives talks out of turn.
    private func reuse(_ exchange: CurlExchange) {
        release(exchange)
        exchange.connectionsRefused += 1
        if exchange.connectionsRefused > Self.maxConnectionsRefused {
            exchange.settle(.failure(UpstreamError(.protocolError,
                "upstream \(configuration.name) sent bytes nobody asked for on \(Self.maxConnectionsRefused + 1) connections in a row; not sent",
                attempts: 0)))
        } else {
            waiting.prepend(exchange)
        }
    }

    static let maxConnectionsRefused = 3

    /// Takes the transfer off the multi handle and keeps its handle (see `reusesHandles`) for
    /// the next one.
    private func release(_ exchange: CurlExchange) {
        if let easy = exchange.easy, let transfer = exchange.transfer {
            exchange.sends += Int(transfer.pointee.sends)
            transfer.pointee.sends = 0
            curl_multi_remove_handle(multi, easy)
            active.removeValue(forKey: easy)
            if Self.reusesHandles {
                // Kept configured for the next transfer; only a body's copy goes now.
                if exchange.request.body != nil { sheaf_easy_setopt_ptr(easy, CURLOPT_POSTFIELDS, nil) }
                spareHandles.append((easy, transfer))
            } else {
                curl_easy_cleanup(easy)
                spareHandles.append((nil, transfer))
            }
            exchange.easy = nil
            exchange.transfer = nil
        }
        if let list = exchange.headerList {
            free(list)  // CurlHeaderBlock: one allocation
            exchange.headerList = nil
        }
    }

    /// The one place libcurl result codes become Sheaf errors.
    private func error(for code: CURLcode, easy: UnsafeMutableRawPointer, transfer: UnsafeMutablePointer<sheaf_transfer>?) -> UpstreamError {
        // curl's message for this transfer when it wrote one, else the generic text for the code.
        let detail = transfer.flatMap(Self.message) ?? String(cString: curl_easy_strerror(code))
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            // CURLOPT_CONNECTTIMEOUT_MS ran out (item deadlines are the curl thread's own,
            // expireOverdue): the connection could not be made, TCP or, over TLS, its handshake.
            var tcpUp: curl_off_t = 0
            sheaf_easy_getinfo_off_t(easy, CURLINFO_CONNECT_TIME_T, &tcpUp)
            // libcurl 7.88 records no connect time for a transfer that failed; its words
            // ("SSL connection timeout") tell the handshake's timeout from TCP's then.
            if configuration.endpoint.scheme == "https" && (tcpUp > 0 || detail.contains("SSL")) {
                return tlsFailure(.handshake, TLSFailure.handshakeTimeoutDetail(configuration.connectTimeout))
            }
            return UpstreamError(.unreachable, "cannot connect to upstream \(configuration.name) at \(configuration.endpoint.authority): no connection within \(configuration.connectTimeout.configText) (\(detail))",
                                 cause: .connectFailure)
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM:
            // curl words a name mismatch "no alternative certificate subject name matches target
            // host name" (OpenSSL) or "does not match target host name".
            let hostname = code == CURLE_PEER_FAILED_VERIFICATION && detail.contains("host name")
            let kind: TLSFailureKind = hostname ? .hostname : code == CURLE_PEER_FAILED_VERIFICATION ? .certificate : .handshake
            return tlsFailure(kind, detail)
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST:
            return UpstreamError(.unreachable, "cannot connect to upstream \(configuration.name) at \(configuration.endpoint.authority): \(detail)",
                                 cause: .connectFailure)
        case CURLE_UNSUPPORTED_PROTOCOL where detail.contains("HTTP/0.9"):
            // libcurl's words for an answer with no status line, which is what an HTTP/2-only
            // server's first frame is to an HTTP/1.1 client.
            return UpstreamError(.protocolError, "upstream \(configuration.name) did not answer in HTTP/1.x (no status line; an upstream that speaks only HTTP/2 needs protocol: h2c, h2 or auto)")
        case CURLE_GOT_NOTHING, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE:
            return UpstreamError(.unreachable, "upstream \(configuration.name) connection failed: \(detail)", cause: .reset)
        default:
            return UpstreamError(.protocolError, "upstream \(configuration.name): \(detail)")
        }
    }

    /// libcurl 7.88 keeps at most 4 KiB of a chunked answer's trailer fields and fails the
    /// transfer past that, as "Out of memory in chunked-encoding" (its only out-of-memory case
    /// there). That comes after the body's last chunk: the answer is whole, and its trailers are
    /// never reported anyway (RFC 9110 §6.5.1).
    private func trailersOverflowed(_ code: CURLcode, _ exchange: CurlExchange) -> Bool {
        guard code == CURLE_RECV_ERROR, exchange.headEnded, let transfer = exchange.transfer else { return false }
        return Self.message(transfer) == "Out of memory in chunked-encoding"
    }

    /// What libcurl wrote in the transfer's error buffer, if anything.
    private static func message(_ transfer: UnsafeMutablePointer<sheaf_transfer>) -> String? {
        withUnsafeBytes(of: &transfer.pointee.error) { raw in
            raw[0] == 0 ? nil : String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
        }
    }

    /// A TLS failure of `kind`, counted, as the item's error.
    private func tlsFailure(_ kind: TLSFailureKind, _ detail: String) -> UpstreamError {
        events.tlsFailure(configuration.name, kind)
        let failure = TLSFailure(kind, upstream: configuration.name, name: configuration.serverName ?? configuration.endpoint.host,
                                 detail: detail)
        return UpstreamError(.unreachable, failure.message)
    }

    /// The 504 of an item whose timeout passed before it got a connection.
    private func timeoutError() -> UpstreamError {
        configuration.timeoutError(waiting: " (waiting for a connection: all \(max(1, configuration.connections)) were busy)")
    }
}

// MARK: - C callbacks (non-capturing; the exchange comes back from user data)

/// The exchange behind curl's user data, borrowed for the callback (no retain and release per
/// call); `active` holds it while curl has its handle.
private func withExchange<T>(_ userData: UnsafeMutableRawPointer?, _ body: (CurlExchange) -> T) -> T {
    Unmanaged<CurlExchange>.fromOpaque(userData!)._withUnsafeGuaranteedRef(body)
}

private let curlWrite: sheaf_curl_data_callback = { pointer, size, count, userData in
    withExchange(userData) { exchange in
        let length = size * count
        if exchange.readingSuspended {
            // curl keeps these bytes and hands them over again when the transfer is resumed.
            exchange.paused = true
            return Int(CURL_WRITEFUNC_PAUSE)
        }
        let more = pointer?.withMemoryRebound(to: UInt8.self, capacity: length) { bytes in
            exchange.bodyBytes(UnsafeBufferPointer(start: bytes, count: length))
        } ?? true
        return more ? length : 0
    }
}

private let curlHeader: sheaf_curl_data_callback = { pointer, size, count, userData in
    withExchange(userData) { exchange in
        let length = size * count
        let proceed = pointer?.withMemoryRebound(to: UInt8.self, capacity: length) { bytes in
            exchange.headerLine(UnsafeBufferPointer(start: bytes, count: length))
        } ?? true
        // Any other count than `length` makes curl end the transfer.
        return proceed ? length : 0
    }
}
