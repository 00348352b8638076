import CNGHTTP2
import Foundation
import NIOCore
import NIOPosix

/// One TCP connection to an h2c upstream driven by a libnghttp2 client session: bytes from the
/// channel go into `nghttp2_session_mem_recv`, frames come out of `nghttp2_session_mem_send`.
/// Touched only on its slot's event loop.
final class HTTP2Connection {
    unowned let slot: HTTP2Slot
    private var channel: Channel?
    private var session: OpaquePointer?
    private var streams: [Int32: HTTP2Exchange] = [:]
    private(set) var isReady = false
    private var goingAway = false
    private var reportedGoingAway = false
    private var lastProcessedStreamID = Int32.max
    private var maxStreams = 100
    /// True while nghttp2 calls back into us or while settling: frames are written once, afterwards.
    private var holdFlush = false
    private var flushScheduled = false
    private var settled: [(HTTP2Exchange, UpstreamResult)] = []
    private var retries: [HTTP2Exchange] = []
    private var closeReason: String?
    private var nvStorage: [UInt8] = []
    private var nvSpans: [(Int, Int, Int, Int)] = []
    private var nva: [nghttp2_nv] = []

    init(slot: HTTP2Slot) {
        self.slot = slot
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    var activeStreams: Int { streams.count }
    var hasStreamCapacity: Bool { isReady && streams.count < maxStreams }

    // MARK: lifecycle

    func start() {
        let endpoint = slot.configuration.endpoint
        let handler = HTTP2ConnectionHandler(connection: self)
        ClientBootstrap(group: slot.eventLoop)
            .connectTimeout(slot.configuration.connectTimeout)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .whenFailure { [self] error in
                self.slot.connectionFailedToConnect(self, error: error)
            }
    }

    /// The TCP connection is up: create the session, send the preface and our SETTINGS.
    func activate(channel: Channel) {
        self.channel = channel
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceived)
        // Released in deinit or in channelClosed(); the connection outlives its session.
        let me = Unmanaged.passUnretained(self).toOpaque()
        var session: OpaquePointer?
        guard nghttp2_session_client_new(&session, callbacks, me) == 0, let session else {
            closeReason = "nghttp2 session could not be created"
            channel.close(promise: nil)
            return
        }
        self.session = session
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 1 << 24),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        // A large connection window: many streams' bodies in flight without WINDOW_UPDATE stalls.
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 1 << 30)
        isReady = true
        flush()
        slot.connectionReady(self)
    }

    func close() {
        channel?.close(promise: nil)
    }

    /// The channel went inactive: settle or requeue what is still open, free the session.
    func channelClosed() {
        isReady = false
        let reason = closeReason ?? "upstream \(slot.configuration.name) closed the connection before the response completed"
        var requeue: [HTTP2Exchange] = []
        for (_, exchange) in streams.sorted(by: { $0.key < $1.key }) {
            exchange.connection = nil
            // Not processed by the upstream (beyond GOAWAY's last stream, or no byte of answer to an
            // idempotent request): safe to send again on a fresh connection.
            let unprocessed = exchange.streamID > lastProcessedStreamID
                || (!exchange.sawResponseBytes && exchange.request.isIdempotent)
            if unprocessed && exchange.requeues < 3 {
                requeue.append(exchange)
            } else {
                exchange.settle(.failure(UpstreamError(.unreachable, reason)))
            }
        }
        streams.removeAll()
        if let session {
            nghttp2_session_del(session)
            self.session = nil
        }
        channel = nil
        slot.requeue(requeue)
        slot.connectionClosed(self)
    }

    // MARK: requests

    func submit(_ exchange: HTTP2Exchange) {
        guard let session else {
            slot.requeue([exchange])
            return
        }
        let request = exchange.request
        // One buffer holds every name and value; nghttp2 copies them during submit_request.
        // The buffers live on the connection and are reused for every request.
        nvStorage.removeAll(keepingCapacity: true)
        nvSpans.removeAll(keepingCapacity: true)
        addField(":method", request.method)
        addField(":path", request.path)
        for (name, value) in slot.fixedPseudoHeaders { addField(name, value) }
        for header in request.headers { addField(header.name, header.value, lowercase: true) }
        if let body = request.body { addField("content-length", String(body.readableBytes)) }
        let streamID: Int32 = nvStorage.withUnsafeMutableBufferPointer { raw -> Int32 in
            let base = raw.baseAddress!
            nva.removeAll(keepingCapacity: true)
            for span in nvSpans {
                nva.append(nghttp2_nv(name: base + span.0, value: base + span.2, namelen: span.1, valuelen: span.3,
                                      flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
            }
            if request.body != nil {
                var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: readRequestBody)
                return nghttp2_submit_request(session, nil, nva, nva.count, &provider, nil)
            }
            return nghttp2_submit_request(session, nil, nva, nva.count, nil, nil)
        }
        if streamID < 0 {
            if streamID == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE.rawValue {
                // Stream ids exhausted: this connection is done; the item goes to a fresh one.
                goingAway = true
                isReady = false
                slot.requeue([exchange])
                reportGoingAwayIfNeeded()
            } else {
                exchange.settle(.failure(UpstreamError(.protocolError,
                    "cannot send request to upstream: \(String(cString: nghttp2_strerror(streamID)))")))
            }
            return
        }
        exchange.streamID = streamID
        exchange.connection = self
        streams[streamID] = exchange
    }

    private func addField(_ name: String, _ value: String, lowercase: Bool = false) {
        let n = nvStorage.count
        nvStorage.append(contentsOf: name.utf8)
        if lowercase {
            for i in n..<nvStorage.count where nvStorage[i] >= 0x41 && nvStorage[i] <= 0x5A { nvStorage[i] |= 0x20 }
        }
        let v = nvStorage.count
        nvStorage.append(contentsOf: value.utf8)
        nvSpans.append((n, v - n, v, nvStorage.count - v))
    }

    func cancelStream(of exchange: HTTP2Exchange) {
        guard let session, streams.removeValue(forKey: exchange.streamID) != nil else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), exchange.streamID, NGHTTP2_CANCEL.rawValue)
        exchange.connection = nil
        scheduleFlush()
    }

    func expireStreams(now: NIODeadline) {
        guard let session, !streams.isEmpty else { return }
        var expired: [HTTP2Exchange] = []
        for (id, exchange) in streams where exchange.deadline <= now {
            nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_CANCEL.rawValue)
            expired.append(exchange)
        }
        guard !expired.isEmpty else { return }
        for exchange in expired {
            streams.removeValue(forKey: exchange.streamID)
            exchange.connection = nil
        }
        holdFlush = true
        for exchange in expired { exchange.settle(.failure(slot.timeoutError())) }
        holdFlush = false
        flush()
        slot.streamCapacityAvailable(self)
    }

    // MARK: I/O

    func receive(_ buffer: ByteBuffer) {
        guard let session else { return }
        holdFlush = true
        let consumed = buffer.withUnsafeReadableBytes { raw in
            nghttp2_session_mem_recv(session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count)
        }
        if consumed < 0 {
            holdFlush = false
            closeReason = "HTTP/2 protocol error from upstream \(slot.configuration.name): \(String(cString: nghttp2_strerror(Int32(consumed))))"
            close()
            return
        }
        let done = settled
        settled.removeAll(keepingCapacity: true)
        if !retries.isEmpty {
            slot.requeue(retries)
            retries.removeAll()
        }
        reportGoingAwayIfNeeded()
        // Completions may start the next items; their HEADERS leave in the one flush below.
        for (exchange, result) in done { exchange.settle(result) }
        holdFlush = false
        flush()
        slot.streamCapacityAvailable(self)
    }

    private func reportGoingAwayIfNeeded() {
        guard goingAway, !reportedGoingAway else { return }
        reportedGoingAway = true
        isReady = false
        slot.connectionGoingAway(self)
    }

    /// Coalesce the frames of everything submitted in this event-loop tick into one write.
    func scheduleFlush() {
        guard !holdFlush, !flushScheduled else { return }
        flushScheduled = true
        slot.eventLoop.execute { [self] in
            self.flushScheduled = false
            self.flush()
        }
    }

    func flush() {
        guard !holdFlush, let session, let channel else { return }
        var out: ByteBuffer?
        while true {
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &data)
            if n < 0 {
                closeReason = "HTTP/2 session error: \(String(cString: nghttp2_strerror(Int32(n))))"
                close()
                return
            }
            if n == 0 { break }
            if out == nil { out = channel.allocator.buffer(capacity: max(n, 16_384)) }
            out!.writeBytes(UnsafeRawBufferPointer(start: data, count: n))
        }
        if let out { channel.writeAndFlush(out, promise: nil) }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            close()
        }
    }

    // MARK: nghttp2 events

    fileprivate func header(stream: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        guard let exchange = streams[stream] else { return }
        exchange.sawResponseBytes = true
        if name.count == 7 && name.elementsEqual(":status".utf8) {
            let code = Self.parseStatus(value)
            if code >= 200 {
                exchange.status = code
                exchange.headers.removeAll(keepingCapacity: true)
            }
            return
        }
        // Headers of a 1xx interim response, and trailers after the body, are not kept.
        guard exchange.status >= 200, exchange.body.readableBytes == 0 else { return }
        exchange.headers.append((HeaderName.intern(name), String(decoding: value, as: UTF8.self)))
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
        guard let exchange = streams[stream] else { return }
        exchange.sawResponseBytes = true
        if !exchange.body.writeCapped(bytes, limit: slot.configuration.maxResponseBodyBytes) { exchange.truncated = true }
    }

    fileprivate func streamClosed(stream: Int32, errorCode: UInt32) {
        guard let exchange = streams.removeValue(forKey: stream) else { return }
        exchange.connection = nil
        if errorCode == 0 && exchange.status >= 200 {
            settled.append((exchange, .success(exchange.response)))
        } else if (errorCode == NGHTTP2_REFUSED_STREAM.rawValue || stream > lastProcessedStreamID)
                    && !exchange.sawResponseBytes && exchange.requeues < 3 {
            // RFC 9113 §8.7: a refused stream, or one past GOAWAY's last stream id, was not processed.
            retries.append(exchange)
        } else {
            let reason = errorCode == 0
                ? "upstream \(slot.configuration.name) ended the stream without a response"
                : "upstream \(slot.configuration.name) reset the stream: \(String(cString: nghttp2_http2_strerror(errorCode)))"
            settled.append((exchange, .failure(UpstreamError(.protocolError, reason))))
        }
    }

    fileprivate func goaway(lastStreamID: Int32) {
        goingAway = true
        lastProcessedStreamID = min(lastProcessedStreamID, lastStreamID)
    }

    fileprivate func settingsReceived() {
        guard let session else { return }
        let remote = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        maxStreams = Int(min(remote, 10_000))
    }

    fileprivate func requestBody(stream: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int) -> (Int, Bool)? {
        guard let exchange = streams[stream], let body = exchange.request.body else { return nil }
        let remaining = body.readableBytes - exchange.bodySent
        let n = min(remaining, length)
        if n > 0 {
            body.withUnsafeReadableBytes { raw in
                UnsafeMutableRawPointer(buffer).copyMemory(from: raw.baseAddress! + exchange.bodySent, byteCount: n)
            }
        }
        exchange.bodySent += n
        return (n, exchange.bodySent == body.readableBytes)
    }
}

// MARK: - C callbacks (non-capturing; the connection comes back from user_data)

@inline(__always)
private func owner(_ userData: UnsafeMutableRawPointer?) -> HTTP2Connection {
    Unmanaged<HTTP2Connection>.fromOpaque(userData!).takeUnretainedValue()
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    guard let frame, frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) else { return 0 }
    owner(userData).header(stream: frame.pointee.hd.stream_id,
                           name: UnsafeBufferPointer(start: name, count: nameLength),
                           value: UnsafeBufferPointer(start: value, count: valueLength))
    return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, length, userData in
    owner(userData).data(stream: streamID, bytes: UnsafeBufferPointer(start: data, count: length))
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, streamID, errorCode, userData in
    owner(userData).streamClosed(stream: streamID, errorCode: errorCode)
    return 0
}

private let onFrameReceived: nghttp2_on_frame_recv_callback = { _, frame, userData in
    guard let frame else { return 0 }
    let type = frame.pointee.hd.type
    if type == UInt8(NGHTTP2_GOAWAY.rawValue) {
        owner(userData).goaway(lastStreamID: frame.pointee.goaway.last_stream_id)
    } else if type == UInt8(NGHTTP2_SETTINGS.rawValue) && frame.pointee.hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0 {
        owner(userData).settingsReceived()
    }
    return 0
}

private let readRequestBody: nghttp2_data_source_read_callback = { _, streamID, buffer, length, dataFlags, _, userData in
    guard let buffer, let (n, done) = owner(userData).requestBody(stream: streamID, into: buffer, length: length) else {
        return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
    }
    if done { dataFlags?.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
    return n
}

/// Feeds channel events into the connection.
final class HTTP2ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let connection: HTTP2Connection

    init(connection: HTTP2Connection) {
        self.connection = connection
    }

    func channelActive(context: ChannelHandlerContext) {
        connection.activate(channel: context.channel)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.receive(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.channelClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
