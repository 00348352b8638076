import CNGHTTP2
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// One TCP connection to an h2c upstream driven by a libnghttp2 client session: bytes from the
/// channel go into `nghttp2_session_mem_recv`, frames come out of `nghttp2_session_mem_send`.
/// Its lifecycle decisions live in `HTTP2ConnectionStateMachine`; this class performs them.
/// Touched only on its slot's event loop.
///
/// nghttp2 may close streams inside any call into it (`mem_recv`, `mem_send`, a submit): a
/// request head it cannot send, HEADERS queued when a GOAWAY came in, a stream that ends as its
/// last DATA leaves. So every call goes through `perform`, which parks what callbacks decide and
/// delivers it as soon as nghttp2 returns. Nothing waits for the next read to be reported.
final class HTTP2Connection {
    unowned let slot: HTTP2Slot
    private var channel: Channel?
    private var session: OpaquePointer?
    /// The session's allocator; destroyed right after the session.
    private var pool: UnsafeMutablePointer<sheaf_nghttp2_pool>?
    /// Free blocks a connection's pool keeps for reuse: what a thousand open streams free
    /// between one batch and the next.
    static let poolBudget = 2 << 20
    /// What the pool keeps once the connection has had no open streams for a second: the
    /// burst's blocks go back to malloc when the connection falls idle.
    static let idlePoolBudget = 64 << 10
    /// The last tick that found streams open, or opened since the tick before.
    private var lastBusyTick = NIODeadline.now()
    /// A stream opened since the last tick (a burst can start and end between two ticks).
    private var openedSinceTick = false
    /// Requests submitted on this connection (wrapping), to index a per-item field now and then.
    private var submitted = 0
    private var machine: HTTP2ConnectionStateMachine
    /// Open streams by id (odd, rising by two: `shift: 1`).
    private var streams = IntKeyTable<HTTP2Exchange>(shift: 1)
    /// Streams Sheaf let go of without a reset (past the reset budget), by id. Their answers
    /// are read and dropped.
    private var discarding: [Int32: LeftToFinish] = [:]

    /// A stream left to finish: when it is reset after all, and how many more of its bytes get
    /// their stream window back. A long answer (a body cut at the cap) then ends as usual, and an
    /// endless one stops once the allowance is spent instead of being read until its deadline.
    private struct LeftToFinish {
        let deadline: NIODeadline
        var allowance: Int
    }

    /// What a stream left to finish may still read with its window given back: four windows.
    private var leftToFinishAllowance: Int { 4 * streamWindow }
    /// True while inside nghttp2: callbacks park their outcomes instead of delivering them.
    private var inSession = false
    private var parkedOutcomes: [ParkedOutcome] = []
    private var parkedResends: [HTTP2Exchange] = []
    private var parkedActions: [HTTP2ConnectionStateMachine.Action] = []
    /// Why nghttp2 could not send a stream's HEADERS (`on_frame_not_send`), by stream id.
    private var notSent: [Int32: (reason: String, code: Int32)] = [:]
    /// What nghttp2 found wrong in the peer's frames, for the close reason.
    private var peerError: String?
    /// Streams whose answer nghttp2 refused as invalid HTTP, with why.
    private var invalidResponses: [Int32: String] = [:]
    /// Streams the peer reset (RST_STREAM received). A stream closed with an error code that is
    /// not here was reset by nghttp2, for Sheaf: its answer broke HTTP/2's rules.
    private var peerResets: Set<Int32> = []
    private var flushScheduled = false
    /// The header fields of the request being submitted that are its own.
    private let itemFields = HeaderFieldBytes()
    /// The fields every request of the current batch shares, and the array they came from.
    private let sharedFields = HeaderFieldBytes()
    private var sharedSource: [(name: String, value: String)]?
    private var nva: [nghttp2_nv] = []
    /// `sharedFields` as nghttp2 takes them, made once per batch with them (valid until they change).
    private var sharedEntries: [nghttp2_nv] = []

    /// The per-stream flow-control window offered to the upstream: one whole body
    /// (`max_response_bytes`, within 64 KiB–16 MiB). An answer then arrives without waiting for
    /// WINDOW_UPDATEs (streams finish one by one instead of all creeping along together and
    /// holding every body at once), and a suspended stream holds no more than one body.
    private var streamWindow: Int {
        min(max(slot.configuration.maxResponseBodyBytes, 64 << 10), 16 << 20)
    }

    // The slot's constants the per-item paths read, held here: each read through the unowned
    // `slot` is an atomic strong-retain check (about 1 % of Sheaf's CPU on h2c, issue 13).
    private let gauges: UpstreamGauges
    private let fixedPseudoHeaders: [(String, String)]
    private let maxResponseBodyBytes: Int
    private let maxResponseHeaderBytes: Int

    init(slot: HTTP2Slot) {
        self.slot = slot
        gauges = slot.gauges
        fixedPseudoHeaders = slot.fixedPseudoHeaders
        maxResponseBodyBytes = slot.configuration.maxResponseBodyBytes
        maxResponseHeaderBytes = slot.configuration.maxResponseHeaderBytes
        self.machine = HTTP2ConnectionStateMachine(upstream: slot.configuration.name,
                                                   pingInterval: slot.configuration.pingInterval,
                                                   pingTimeout: slot.configuration.pingTimeout, now: .now(),
                                                   overTLS: slot.tls != nil, handshakeTimeout: slot.configuration.connectTimeout)
    }

    deinit {
        deleteSession()
    }

    /// The session, then its allocator: deleting the session gives back every block it held.
    private func deleteSession() {
        if let session { nghttp2_session_del(session) }
        session = nil
        sheaf_nghttp2_pool_destroy(pool)
        pool = nil
    }

    var openStreams: Int { streams.count + discarding.count }
    var canOpenStream: Bool { machine.canOpenStream }
    var peerMaxHeaderListSize: Int? { machine.peerMaxHeaderListSize }
    var peerMaxConcurrentStreams: Int? { machine.sawSettings ? machine.maxConcurrentStreams : nil }

    // MARK: lifecycle

    func start() {
        let endpoint = slot.configuration.endpoint
        let tls = slot.tls
        let handler = HTTP2ConnectionHandler(connection: self, tls: tls)
        ClientBootstrap(group: slot.eventLoop)
            .connectTimeout(slot.configuration.connectTimeout)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(tls.makeHandler()) }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .whenFailure { [self] error in
                self.slot.connectionFailedToConnect(self, error: error)
            }
    }

    /// The TCP connection is up: create the session, send the preface and our SETTINGS.
    /// Streams wait for the peer's SETTINGS (its limits are not known before).
    /// Counted in the connections gauge (from activation to the channel's end).
    private var countedOpen = false

    /// Over TLS, TCP is up and the handshake begins: the channel is known from now on, so a
    /// handshake that stalls can be closed (by the state machine's timer, or at shutdown).
    func tcpConnected(channel: Channel) {
        slot.eventLoop.preconditionInEventLoop()
        self.channel = channel
        machine.tcpConnected(now: .now())
        if machine.closeReason != nil { channel.close(promise: nil) }
    }

    func activate(channel: Channel) {
        slot.eventLoop.preconditionInEventLoop()
        self.channel = channel
        machine.channelActive(now: .now())
        if machine.closeReason != nil {
            // Closed (Sheaf shutting down) while the TCP connect was still under way.
            channel.close(promise: nil)
            return
        }
        countedOpen = true
        gauges.add(gauges.connections, 1)
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceived)
        nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, onFrameNotSent)
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, onInvalidFrame)
        // Unretained: the session is deleted (channelClosed / deinit) before the connection goes.
        let me = Unmanaged.passUnretained(self).toOpaque()
        // Windows are given back by hand (`nghttp2_session_consume`), so that a stream whose
        // client reads slowly stops the upstream instead of filling Sheaf's memory.
        var options: OpaquePointer?
        nghttp2_option_new(&options)
        defer { nghttp2_option_del(options) }
        nghttp2_option_set_no_auto_window_update(options, 1)
        var session: OpaquePointer?
        // The session allocates from a pool of its own (CNGHTTP2/pool.h): its blocks are reused
        // stream after stream instead of taking malloc's slow path (issue 13).
        let pool = sheaf_nghttp2_pool_create(Self.poolBudget)
        self.pool = pool
        guard let pool, nghttp2_session_client_new3(&session, callbacks, me, options, &pool.pointee.mem) == 0, let session else {
            handle(machine.close("nghttp2 session could not be created"))
            return
        }
        self.session = session
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            // What one stream may send ahead of Sheaf taking it: the most a suspended stream holds.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(streamWindow)),
            // Advisory (RFC 9113 §6.5.2): the cap is enforced as the fields arrive, in `header`.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(clamping: maxResponseHeaderBytes)),
        ]
        perform { session in
            nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
            // A large connection window: many streams' bodies in flight without WINDOW_UPDATE stalls.
            nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 1 << 30)
        }
        flush()
    }

    /// Closes the channel; `channelClosed` then settles what is open.
    func close(reason: String) {
        handle(machine.close(reason))
    }

    /// The TLS handshake failed: what waits fails with its reason, and is not worth retrying.
    private var handshakeFailed = false

    func closeAfterFailedHandshake(_ failure: TLSFailure) {
        handshakeFailed = true
        close(reason: failure.message)
    }

    /// Returns whether HTTP/2 may start: false when ALPN picked something else (the connection closes).
    func tlsHandshakeCompleted(alpn: String?) -> Bool {
        let action = machine.tlsHandshakeCompleted(alpn: alpn)
        guard action == .none else {
            handle(action)
            return false
        }
        return true
    }

    func socketFailed(_ error: Error) {
        handle(machine.connectionError("\(error)"))
    }

    /// The channel went inactive: every open stream is sent again or fails, the session is freed.
    func channelClosed() {
        slot.eventLoop.preconditionInEventLoop()
        let established = machine.sawSettings
        let reason = machine.channelInactive()
        let mismatch = machine.peerRefusesHTTP2
        var resend: [HTTP2Exchange] = []
        var failures: [(HTTP2Exchange, UpstreamError)] = []
        var outcomesOnClose: [HTTP2Exchange] = []
        for (id, exchange) in streams.sortedByKey {
            exchange.connection = nil
            if exchange.responseComplete {
                outcomesOnClose.append(exchange)
                continue
            }
            switch machine.disposition(streamID: Int32(id), sawResponseBytes: exchange.sawResponseBytes,
                                       idempotent: exchange.request.isIdempotent, sends: exchange.sends,
                                       sendBudget: exchange.request.sendBudget, reason: reason) {
            case .resend: resend.append(exchange)
            case .fail(let kind, let message): failures.append((exchange, UpstreamError(kind, message, cause: .reset)))
            }
        }
        gauges.add(gauges.streams, -(streams.count + discarding.count))
        streams.removeAll()
        discarding.removeAll()
        if countedOpen {
            countedOpen = false
            gauges.add(gauges.connections, -1)
        }
        deleteSession()
        channel = nil
        slot.connectionClosed(self, reason: reason, established: established, lost: !machine.endedDrained, notH2C: mismatch,
                              retriable: !mismatch && !handshakeFailed, resend: resend, failures: failures)
        for exchange in outcomesOnClose { exchange.settleAnswered() }
    }

    // MARK: requests

    /// Opens a stream for the exchange. The frames leave with the next flush.
    func submit(_ exchange: HTTP2Exchange) {
        openedSinceTick = true
        // nghttp2 copies every name and value during submit_request, so the bytes live in
        // buffers of the connection, reused for every request. The fields a batch's items share
        // (`:scheme`, `:authority`, `batchHeaders`) are laid out once per batch, not per item.
        itemFields.removeAll()
        itemFields.add(":method", exchange.request.method)
        itemFields.add(":path", exchange.request.path, unique: true)
        if !sharedFieldsMatch(exchange.request.batchHeaders) {
            sharedFields.removeAll()
            for (name, value) in fixedPseudoHeaders { sharedFields.add(name, value) }
            for header in exchange.request.batchHeaders {
                sharedFields.add(header.name, header.value, lowercase: true, unique: Self.uniquePerItem(header.name))
            }
            sharedSource = exchange.request.batchHeaders
            sharedEntries.removeAll(keepingCapacity: true)
            sharedFields.entries(into: &sharedEntries)
        }
        // Now and then one such field is indexed after all: its entry puts the name in the
        // dynamic table, and every later value is then sent with the name as an index. Never
        // indexed, the name went as a Huffman-coded literal in every request (issue 13).
        let indexOne = submitted & 1023 == 0
        submitted &+= 1
        for header in exchange.request.headers {
            itemFields.add(header.name, header.value, lowercase: true, unique: !indexOne && Self.uniquePerItem(header.name))
        }
        if let id = exchange.request.requestID { itemFields.add(ItemRequestID.name, id.prefix, id.suffix, unique: !indexOne) }
        if let body = exchange.request.body { itemFields.add("content-length", String(body.readableBytes)) }
        let hasBody = exchange.request.body != nil
        let streamID: Int32? = perform { session in
            nva.removeAll(keepingCapacity: true)
            // Pseudo-headers first (RFC 9113 §8.3): the item's :method and :path, then the shared ones.
            itemFields.entries(into: &nva, range: 0..<2)
            nva.append(contentsOf: sharedEntries)
            itemFields.entries(into: &nva, range: 2..<itemFields.count)
            if hasBody {
                var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: readRequestBody)
                return nghttp2_submit_request(session, nil, nva, nva.count, &provider, nil)
            }
            return nghttp2_submit_request(session, nil, nva, nva.count, nil, nil)
        }
        guard let streamID else {
            slot.resend([exchange])
            return
        }
        if streamID < 0 {
            if streamID == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE.rawValue {
                // Stream ids exhausted: this connection is done; the item goes to a fresh one.
                slot.resend([exchange])
                handle(machine.streamIDsExhausted())
            } else {
                exchange.fail(.protocolError, "cannot send request to upstream \(slot.configuration.name): \(String(cString: nghttp2_strerror(streamID)))")
            }
            return
        }
        exchange.sends += 1
        exchange.streamID = streamID
        exchange.connection = self
        streams.insert(exchange, for: Int(streamID))
        gauges.add(gauges.streams, 1)
        machine.streamOpened()
    }

    /// Whether `sharedFields` were laid out from this very array. Held in `sharedSource`, its
    /// storage cannot be freed and reused for another array, so the same address is the same
    /// (immutable) contents.
    private func sharedFieldsMatch(_ batchHeaders: [(name: String, value: String)]) -> Bool {
        guard let source = sharedSource, source.count == batchHeaders.count else { return false }
        return source.withUnsafeBufferPointer { held in
            batchHeaders.withUnsafeBufferPointer { $0.baseAddress == held.baseAddress }
        }
    }

    /// Fields whose value differs for every item (`:path` mostly, the request id, trace context)
    /// go as HPACK literals never indexed: indexing them inserted two entries into the dynamic
    /// table per request and evicted the fields every item shares, which HPACK then sent as
    /// literals again. Encoding the headers was the largest single cost of an item (issue 13).
    private static func uniquePerItem(_ name: String) -> Bool {
        HTTPSyntax.isName(name, "x-request-id") || HTTPSyntax.isName(name, "traceparent")
    }

    /// The exchange takes its body again: the bytes it held back go back to the upstream's window.
    func giveBackWindow(of exchange: HTTP2Exchange) {
        guard exchange.unconsumed > 0, streams[Int(exchange.streamID)] === exchange else { return }
        let count = exchange.unconsumed
        exchange.unconsumed = 0
        perform { session in _ = nghttp2_session_consume(session, exchange.streamID, count) }
        scheduleFlush()
    }

    /// A stream that ends while suspended still owes the connection-level window its bytes.
    private func returnUnconsumed(of exchange: HTTP2Exchange) {
        guard exchange.unconsumed > 0 else { return }
        let count = exchange.unconsumed
        exchange.unconsumed = 0
        perform { session in _ = nghttp2_session_consume_connection(session, count) }
    }

    /// Lets go of an exchange Sheaf no longer wants; the caller settles it. RST_STREAM(CANCEL)
    /// while the reset budget lasts (or when its request is not all sent); past it the stream is
    /// left to finish, its answer dropped as it comes (`HTTP2ConnectionStateMachine.shouldReset`).
    func cancelStream(of exchange: HTTP2Exchange) {
        guard streams[Int(exchange.streamID)] === exchange else { return }
        handle(letGo(exchange))
        scheduleFlush()
    }

    /// Removes an exchange from its stream, which is reset or left to finish (see `cancelStream`).
    private func letGo(_ exchange: HTTP2Exchange) -> HTTP2ConnectionStateMachine.Action {
        let requestSent = exchange.request.body == nil || exchange.bodyEnded
        if machine.shouldReset(requestSent: requestSent, now: .now()) { return reset(exchange) }
        streams.removeValue(for: Int(exchange.streamID))
        exchange.connection = nil
        discarding[exchange.streamID] = LeftToFinish(deadline: exchange.deadline, allowance: leftToFinishAllowance)
        let held = exchange.unconsumed
        exchange.unconsumed = 0
        // What a suspended stream held back goes back to both windows: the rest may come.
        if held > 0 { perform { session in _ = nghttp2_session_consume(session, exchange.streamID, held) } }
        return machine.streamLeftToFinish()
    }

    /// Lets go of a stream Sheaf no longer wants (cancelled, timed out): RST_STREAM(CANCEL), its
    /// held-back window returned, its slot freed. Returns what the state machine decides.
    private func reset(_ exchange: HTTP2Exchange) -> HTTP2ConnectionStateMachine.Action {
        guard streams.removeValue(for: Int(exchange.streamID)) != nil else { return .none }
        exchange.connection = nil
        returnUnconsumed(of: exchange)
        return resetStream(exchange.streamID, leftToFinish: false)
    }

    /// RST_STREAM(CANCEL) for a stream already out of `streams` or `discarding`: the gauge and
    /// the state machine count it closed now (nghttp2's close callback then finds it in neither).
    private func resetStream(_ stream: Int32, leftToFinish: Bool) -> HTTP2ConnectionStateMachine.Action {
        gauges.add(gauges.streams, -1)
        perform { session in
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, NGHTTP2_CANCEL.rawValue)
        }
        return machine.streamClosed(leftToFinish: leftToFinish)
    }

    /// The slot's periodic check: streams past their deadline are reset and time out; the state
    /// machine decides on PINGs and on giving up on a silent peer.
    func tick(now: NIODeadline) {
        var expired: [HTTP2Exchange] = []
        streams.forEach { if $0.deadline <= now { expired.append($0) } }
        var after = HTTP2ConnectionStateMachine.Action.none
        var resetAny = false
        var outOfBudget = false
        for exchange in expired {
            // Reset within the budget (or when its request is not all sent), else left to finish.
            let action = letGo(exchange)
            if action != .none { after = action }
            if exchange.connection == nil && discarding[exchange.streamID] != nil { outOfBudget = true }
            resetAny = true
        }
        for (stream, entry) in discarding where entry.deadline <= now {
            // Left to finish, and its answer still has not ended: reset now if the budget allows
            // (after the items just expired, whose streams someone was waiting for).
            guard machine.shouldReset(requestSent: true, now: now) else {
                outOfBudget = true
                continue
            }
            discarding.removeValue(forKey: stream)
            let action = resetStream(stream, leftToFinish: true)
            if action != .none { after = action }
            resetAny = true
        }
        for exchange in expired {
            if exchange.responseComplete {
                exchange.settleAnswered()
            } else {
                exchange.settle(.failure(slot.timeoutError(answerBegun: exchange.headEnded)))
            }
        }
        if outOfBudget {
            let action = machine.outOfResetBudget()
            if action != .none { after = action }
        }
        if resetAny || after != .none {
            flush()
            handle(after)
        }
        // Idle for a second (not merely between two batches): the burst's blocks go back.
        if streams.count > 0 || openedSinceTick {
            lastBusyTick = now
            openedSinceTick = false
        } else if now - lastBusyTick >= .seconds(1), let pool {
            sheaf_nghttp2_pool_trim(pool, Self.idlePoolBudget)
        }
        handle(machine.tick(now: now))
    }

    // MARK: I/O

    func receive(_ buffer: ByteBuffer) {
        let first = buffer.withUnsafeReadableBytes { machine.bytesReceived(startingWith: $0, now: .now()) }
        if first != .none {
            handle(first)
            return
        }
        let consumed: Int? = perform { session in
            buffer.withUnsafeReadableBytes { raw in
                nghttp2_session_mem_recv(session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count)
            }
        }
        if let consumed, consumed < 0 {
            handle(machine.peerViolatedProtocol("HTTP/2 protocol error from upstream \(slot.configuration.name): \(peerError ?? String(cString: nghttp2_strerror(Int32(consumed))))"))
            return
        }
        // Completions delivered above may have started the next items: one write carries them.
        flush()
    }

    /// Coalesce the frames of everything submitted in this event-loop tick into one write.
    func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        slot.eventLoop.execute { [self] in
            self.flushScheduled = false
            self.flush()
        }
    }

    func flush() {
        guard let channel, session != nil else { return }
        var failure: Int?
        var finished = false
        let out: ByteBuffer? = perform { session in
            var out: ByteBuffer?
            while true {
                var data: UnsafePointer<UInt8>?
                let n = nghttp2_session_mem_send(session, &data)
                if n < 0 {
                    failure = n
                    break
                }
                if n == 0 { break }
                if out == nil { out = channel.allocator.buffer(capacity: max(n, 16_384)) }
                out!.writeBytes(UnsafeRawBufferPointer(start: data, count: n))
            }
            finished = nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0
            return out
        } ?? nil
        // Written outside nghttp2: a failed write closes the channel, and that frees the session.
        if let out { channel.writeAndFlush(out, promise: nil) }
        if let failure {
            handle(machine.close("HTTP/2 session error: \(String(cString: nghttp2_strerror(Int32(failure))))"))
        } else if finished {
            // nghttp2 ended the session itself: the peer broke the protocol.
            // Without a frame it named, nghttp2 ended the session over the header compression
            // state (RFC 7541: a field it cannot decode, such as one over its 64 KiB limit).
            let what = peerError ?? "a header block it could not decode (HPACK COMPRESSION_ERROR: a malformed block, or one field over nghttp2's 64 KiB); the connection's decoding state is lost"
            handle(machine.peerViolatedProtocol("upstream \(slot.configuration.name) broke HTTP/2: \(what)"))
        }
    }

    // MARK: the one way into nghttp2

    /// Runs `body` against the session (nil when there is none), then delivers every outcome
    /// and decision that callbacks parked meanwhile.
    @discardableResult
    private func perform<T>(_ body: (OpaquePointer) -> T) -> T? {
        // An assertion (debug builds, the tests): checked in release, it read the unowned `slot`
        // and its event loop on every call, several per item (issue 13).
        assert(slot.eventLoop.inEventLoop, "HTTP2Connection used off its slot's event loop")
        guard let session else { return nil }
        if inSession { return body(session) }
        inSession = true
        let result = body(session)
        inSession = false
        deliverParked()
        return result
    }

    private func deliverParked() {
        while !parkedOutcomes.isEmpty || !parkedResends.isEmpty || !parkedActions.isEmpty {
            let resends = parkedResends
            let actions = parkedActions
            var outcomes: [ParkedOutcome] = []
            swap(&outcomes, &parkedOutcomes)
            parkedResends.removeAll()
            parkedActions.removeAll()
            if !resends.isEmpty { slot.resend(resends) }
            for action in actions { handle(action) }
            // Read in place: iterating copied every outcome, and freeing the array then destroyed
            // each one through the runtime's generic tuple code (issue 13).
            for i in outcomes.indices {
                if let error = outcomes[i].error {
                    outcomes[i].exchange.settle(.failure(error))
                } else {
                    outcomes[i].exchange.settleAnswered()
                }
            }
            // Its capacity serves the next turn, unless settling parked new outcomes meanwhile.
            outcomes.removeAll(keepingCapacity: true)
            if parkedOutcomes.isEmpty { swap(&outcomes, &parkedOutcomes) }
        }
    }

    /// Performs a state-machine action now, or parks it while nghttp2 is running.
    private func handle(_ action: HTTP2ConnectionStateMachine.Action) {
        if inSession {
            if action != .none { parkedActions.append(action) }
            return
        }
        switch action {
        case .none:
            break
        case .startStreams:
            slot.streamCapacityAvailable(self)
        case .drain:
            slot.connectionDraining(self)
        case .sendPing:
            perform { session in _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil) }
            flush()
        case .handshakeTimedOut(let limit):
            if let tls = slot.tls { closeAfterFailedHandshake(tls.handshakeTimedOut(within: limit)) }
        case .close:
            // Once it had worked, its queue moves to a fresh connection now; before SETTINGS,
            // the queue fails with the reason when the channel is gone (no reconnect loop).
            if machine.sawSettings { slot.connectionDraining(self) }
            channel?.close(promise: nil)
        }
    }

    // MARK: nghttp2 events (inside `perform`)

    fileprivate func header(stream: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        guard let exchange = streams[Int(stream)] else { return }
        exchange.sawResponseBytes = true
        exchange.headBytes += name.count + value.count + 32
        if exchange.headBytes > maxResponseHeaderBytes {
            refuse(exchange, slot.configuration.responseHeadTooLarge)
            return
        }
        // Compared as bytes: `elementsEqual` against a string's UTF-8 view cost ~400 instructions.
        if name.count == 7 && memcmp(name.baseAddress!, ":status", 7) == 0 {
            if let refused = HTTPSyntax.statusOutsideRange(value) {
                refuse(exchange, refused)
                return
            }
            let code = Self.parseStatus(value)
            if code >= 200 {
                exchange.status = code
                exchange.headers.removeAll()
                // One allocation for a usual answer's fields, not one per doubling.
                exchange.headers.reserveCapacity(256)
            }
            return
        }
        // Headers of a 1xx interim response, and trailers (with a body before them or not), are not kept.
        guard exchange.status >= 200, !exchange.headEnded, exchange.body.readableBytes == 0 else { return }
        exchange.headers.append(name: name, value: value)
    }

    /// An answer Sheaf will not report (a status outside 100–599, a head over the cap): the item
    /// fails now with why, and the stream is let go as a cancelled one is, within the reset
    /// budget (a burst of such answers must not trip the upstream's rapid-reset guard).
    private func refuse(_ exchange: HTTP2Exchange, _ why: String) {
        settleAndLetGo(exchange, UpstreamError(.protocolError,
            "upstream \(slot.configuration.name) sent an invalid HTTP/2 response (\(why)); Sheaf refused it"))
    }

    /// Inside nghttp2: the item settles with `error` (nil: with what it received) and its stream
    /// is let go (`letGo`), without waiting for the rest of the answer.
    private func settleAndLetGo(_ exchange: HTTP2Exchange, _ error: UpstreamError?) {
        let action = letGo(exchange)
        if action != .none { parkedActions.append(action) }
        parkedOutcomes.append(ParkedOutcome(exchange: exchange, error: error))
    }

    private static func parseStatus(_ value: UnsafeBufferPointer<UInt8>) -> Int {
        guard value.count == 3 else { return 0 }
        var code = 0
        for byte in value {
            guard byte >= 48 && byte <= 57 else { return 0 }
            code = code * 10 + Int(byte - 48)
        }
        return code
    }

    fileprivate func data(stream: Int32, bytes: UnsafeBufferPointer<UInt8>) {
        guard let exchange = streams[Int(stream)] else {
            // A stream Sheaf let go of: its bytes still count against the connection's window.
            // One left to finish gets its stream window back within its allowance (`LeftToFinish`).
            guard let session else { return }
            if !discarding.isEmpty, discarding[stream].map({ $0.allowance > 0 }) == true {
                discarding[stream]!.allowance -= bytes.count
                nghttp2_session_consume(session, stream, bytes.count)
            } else {
                nghttp2_session_consume_connection(session, bytes.count)
            }
            return
        }
        if exchange.readingSuspended {
            exchange.unconsumed += bytes.count
        } else if let session {
            nghttp2_session_consume(session, stream, bytes.count)
        }
        exchange.sawResponseBytes = true
        if exchange.body.mustGrow(for: bytes.count) {
            exchange.body.makeRoom(declared: exchange.headers.contentLength, limit: maxResponseBodyBytes)
        }
        if !exchange.body.writeCapped(bytes, limit: maxResponseBodyBytes) {
            // At `max_response_bytes` the item is answered with what came, flagged truncated; the
            // rest is not waited for (an endless body ended only at the item's timeout, as a 504).
            exchange.truncated = true
            settleAndLetGo(exchange, nil)
        }
    }

    fileprivate func streamClosed(stream: Int32, errorCode: UInt32) {
        // Both are empty but for a rare failed stream: no hashing per item then.
        let unsent = notSent.isEmpty ? nil : notSent.removeValue(forKey: stream)
        var invalid = invalidResponses.isEmpty ? nil : invalidResponses.removeValue(forKey: stream)
        let resetByPeer = !peerResets.isEmpty && peerResets.remove(stream) != nil
        if invalid == nil, errorCode != 0, errorCode != NGHTTP2_REFUSED_STREAM.rawValue, !resetByPeer {
            // nghttp2 reset it without naming the frame (a body unlike its content-length).
            invalid = String(cString: nghttp2_http2_strerror(errorCode))
        }
        guard let exchange = streams.removeValue(for: Int(stream)) else {
            if !discarding.isEmpty && discarding.removeValue(forKey: stream) != nil {
                gauges.add(gauges.streams, -1)
                let action = machine.streamClosed(leftToFinish: true)
                if action != .none && parkedActions.last != action { parkedActions.append(action) }
            }
            return
        }
        gauges.add(gauges.streams, -1)
        exchange.connection = nil
        returnUnconsumed(of: exchange)
        let action = machine.streamClosed()
        if action != .none && parkedActions.last != action { parkedActions.append(action) }
        // Only the failures name the upstream: read through the unowned `slot` for every item,
        // it cost an atomic strong-retain check and a retain of the name (issue 13).
        var name: String { slot.configuration.name }
        if let unsent {
            // The request never left: not an attempt. HEADERS that a GOAWAY overtook go to a
            // fresh connection; a head nghttp2 cannot send fails now (sending it again would too).
            exchange.sends -= 1
            if unsent.code == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED.rawValue && exchange.sends < exchange.request.sendBudget {
                parkedResends.append(exchange)
            } else {
                parkedOutcomes.append(ParkedOutcome(exchange: exchange, error: UpstreamError(.protocolError,
                    "could not send the request to upstream \(name) over HTTP/2: \(unsent.reason)")))
            }
        } else if errorCode == 0 && exchange.responseComplete {
            // Only an answer whose END_STREAM came is whole: RST_STREAM NO_ERROR after it is how a
            // server stops an upload it no longer needs (RFC 9113 §8.1); before it, the answer was cut.
            parkedOutcomes.append(ParkedOutcome(exchange: exchange, error: nil))
        } else if (errorCode == NGHTTP2_REFUSED_STREAM.rawValue || stream > machine.lastProcessedStreamID)
                    && !exchange.sawResponseBytes && exchange.sends < exchange.request.sendBudget {
            // RFC 9113 §8.7: a refused stream, or one past GOAWAY's last stream id, was not processed.
            parkedResends.append(exchange)
        } else if let invalid {
            parkedOutcomes.append(ParkedOutcome(exchange: exchange, error: UpstreamError(.protocolError,
                "upstream \(name) sent an invalid HTTP/2 response (\(invalid)); Sheaf reset the stream")))
        } else {
            let reason = errorCode == 0 && !exchange.sawResponseBytes
                ? "upstream \(name) ended the stream without a response"
                : "upstream \(name) reset the stream: \(String(cString: nghttp2_http2_strerror(errorCode)))"
            let cause: UpstreamError.Cause = errorCode == NGHTTP2_REFUSED_STREAM.rawValue && !exchange.sawResponseBytes ? .refusedStream : .reset
            parkedOutcomes.append(ParkedOutcome(exchange: exchange, error: UpstreamError(.protocolError, reason, cause: cause)))
        }
    }

    fileprivate func frameNotSent(stream: Int32, type: UInt8, libraryError: Int32) {
        guard stream > 0, type == UInt8(NGHTTP2_HEADERS.rawValue) else { return }
        var reason = String(cString: nghttp2_strerror(libraryError))
        if libraryError == NGHTTP2_ERR_FRAME_SIZE_ERROR.rawValue {
            reason = "the request head does not fit in an HTTP/2 header block (\(reason))"
        }
        notSent[stream] = (reason, libraryError)
    }

    fileprivate func invalidFrame(stream: Int32, type: UInt8, libraryError: Int32) {
        // A stream left to finish breaking the rules is its own affair, not the connection's.
        if stream > 0, !discarding.isEmpty, discarding[stream] != nil { return }
        if stream > 0, streams[Int(stream)] != nil {
            // An answer that breaks HTTP/2's message rules (no or two :status, a bad header, a
            // body unlike its content-length): nghttp2 resets the stream; the item says why.
            invalidResponses[stream] = String(cString: nghttp2_strerror(libraryError))
            return
        }
        if peerError == nil {
            peerError = "invalid frame of type \(type): \(String(cString: nghttp2_strerror(libraryError)))"
        }
    }

    fileprivate func peerReset(stream: Int32) {
        if streams[Int(stream)] != nil { peerResets.insert(stream) }
    }

    fileprivate func goaway(lastStreamID: Int32, errorCode: UInt32, debug: String) {
        slot.events.goaway(slot.configuration.name)
        parkedActions.append(machine.goawayReceived(lastStreamID: lastStreamID, errorCode: errorCode,
                                                    errorName: String(cString: nghttp2_http2_strerror(errorCode)), debug: debug))
    }

    fileprivate func settingsReceived() {
        guard let session else { return }
        let streams = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        let headerList = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE)
        parkedActions.append(machine.settingsReceived(maxConcurrentStreams: Int(streams),
                                                      maxHeaderListSize: headerList == UInt32.max ? nil : Int(headerList)))
    }

    /// A header block ended without ending its stream: once the final answer's, what follows
    /// is body and trailers.
    fileprivate func headBlockEnded(stream: Int32) {
        guard let exchange = streams[Int(stream)], exchange.status >= 200 else { return }
        exchange.headEnded = true
    }

    fileprivate func endOfResponse(stream: Int32) {
        guard let exchange = streams[Int(stream)], exchange.status >= 200 else { return }
        exchange.responseComplete = true
    }

    fileprivate func pingAcknowledged() {
        machine.pingAcknowledged(now: .now())
    }

    fileprivate func requestBody(stream: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int) -> (Int, Bool)? {
        guard let exchange = streams[Int(stream)], let body = exchange.request.body else { return nil }
        let remaining = body.readableBytes - exchange.bodySent
        let n = min(remaining, length)
        if n > 0 {
            body.withUnsafeReadableBytes { raw in
                UnsafeMutableRawPointer(buffer).copyMemory(from: raw.baseAddress! + exchange.bodySent, byteCount: n)
            }
        }
        exchange.bodySent += n
        let ended = exchange.bodySent == body.readableBytes
        exchange.bodyEnded = ended
        return (n, ended)
    }
}

// MARK: - C callbacks (non-capturing; the connection comes back from user_data)

/// The connection behind nghttp2's user data, borrowed for the callback: no retain and release
/// per call, several per item (issue 13). The session never outlives the connection (see `me`).
@inline(__always)
private func withOwner<T>(_ userData: UnsafeMutableRawPointer?, _ body: (HTTP2Connection) -> T) -> T {
    Unmanaged<HTTP2Connection>.fromOpaque(userData!)._withUnsafeGuaranteedRef(body)
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    guard let frame, frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
    withOwner(userData) {
        $0.header(stream: frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: nameLength),
                  value: UnsafeBufferPointer(start: value, count: valueLength))
    }
    return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, length, userData in
    withOwner(userData) { $0.data(stream: streamID, bytes: UnsafeBufferPointer(start: data, count: length)) }
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, streamID, errorCode, userData in
    withOwner(userData) { $0.streamClosed(stream: streamID, errorCode: errorCode) }
    return 0
}

private let onFrameReceived: nghttp2_on_frame_recv_callback = { _, frame, userData in
    guard let frame else { return 0 }
    let type = frame.pointee.hd.type
    let isAck = frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0
    if type <= UInt8(NGHTTP2_HEADERS.rawValue) {  // DATA or HEADERS
        if frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0 {
            withOwner(userData) { $0.endOfResponse(stream: frame.pointee.hd.stream_id) }
        } else if type == UInt8(NGHTTP2_HEADERS.rawValue) {
            // Trailers can follow only a block that left its stream open.
            withOwner(userData) { $0.headBlockEnded(stream: frame.pointee.hd.stream_id) }
        }
    } else if type == UInt8(NGHTTP2_RST_STREAM.rawValue) {
        withOwner(userData) { $0.peerReset(stream: frame.pointee.hd.stream_id) }
    } else if type == UInt8(NGHTTP2_GOAWAY.rawValue) {
        let goaway = frame.pointee.goaway
        var debug = ""
        if let data = goaway.opaque_data, goaway.opaque_data_len > 0 {
            debug = String(decoding: UnsafeBufferPointer(start: data, count: min(goaway.opaque_data_len, 200)), as: UTF8.self)
        }
        withOwner(userData) { $0.goaway(lastStreamID: goaway.last_stream_id, errorCode: goaway.error_code, debug: debug) }
    } else if type == UInt8(NGHTTP2_SETTINGS.rawValue) && !isAck {
        withOwner(userData) { $0.settingsReceived() }
    } else if type == UInt8(NGHTTP2_PING.rawValue) && isAck {
        withOwner(userData) { $0.pingAcknowledged() }
    }
    return 0
}

private let onFrameNotSent: nghttp2_on_frame_not_send_callback = { _, frame, libraryError, userData in
    guard let frame else { return 0 }
    withOwner(userData) { $0.frameNotSent(stream: frame.pointee.hd.stream_id, type: frame.pointee.hd.type, libraryError: libraryError) }
    return 0
}

private let onInvalidFrame: nghttp2_on_invalid_frame_recv_callback = { _, frame, libraryError, userData in
    withOwner(userData) {
        $0.invalidFrame(stream: frame?.pointee.hd.stream_id ?? 0, type: frame?.pointee.hd.type ?? 0, libraryError: libraryError)
    }
    return 0
}

private let readRequestBody: nghttp2_data_source_read_callback = { _, streamID, buffer, length, dataFlags, _, userData in
    guard let buffer, let (n, done) = withOwner(userData, { $0.requestBody(stream: streamID, into: buffer, length: length) }) else {
        return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
    }
    if done { dataFlags?.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
    return n
}

/// Feeds channel events into the connection.
final class HTTP2ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let connection: HTTP2Connection
    /// Over TLS the HTTP/2 preface waits for the handshake, and for ALPN to have picked `h2`.
    private let tls: UpstreamTLS?
    private var handshakeDone = false

    init(connection: HTTP2Connection, tls: UpstreamTLS? = nil) {
        self.connection = connection
        self.tls = tls
    }

    func channelActive(context: ChannelHandlerContext) {
        if tls == nil { connection.activate(channel: context.channel) } else { connection.tcpConnected(channel: context.channel) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls, case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            handshakeDone = true
            if connection.tlsHandshakeCompleted(alpn: negotiated) {
                connection.activate(channel: context.channel)
            } else {
                tls.refusedHTTP2(alpn: negotiated)
                context.close(promise: nil)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.receive(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.channelClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Any error before the handshake finished is a TLS failure (a reset too, as libcurl
        // words it); later ones are lost connections.
        if let tls, !handshakeDone {
            connection.closeAfterFailedHandshake(tls.failure(for: error) ?? tls.handshakeFailed("\(error)"))
            context.close(promise: nil)
            return
        }
        // A close without close_notify: the close itself says what it cut (channelInactive).
        if tls != nil, let sslError = error as? NIOSSLError, case .uncleanShutdown = sslError { return }
        connection.socketFailed(error)
    }
}
