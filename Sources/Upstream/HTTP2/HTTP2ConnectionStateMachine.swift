import NIOCore

/// The life of one HTTP/2 upstream connection as a value: connecting → (over TLS, handshaking →)
/// awaiting the peer's SETTINGS → active → draining (GOAWAY received, or stream ids exhausted) → closed.
/// It decides when streams may open, when to PING and when a silent peer is given up on, and
/// what becomes of a stream still open when the connection ends. No I/O and no clock of its
/// own: `HTTP2Connection` feeds it events with the time and performs the actions it returns.
struct HTTP2ConnectionStateMachine {
    enum State: Equatable {
        case connecting
        /// Over TLS: TCP is up, the handshake is under way (bounded by `handshakeTimeout`).
        case handshaking
        case awaitingSettings
        case active
        case draining
        case closed
    }

    /// What the owner must do after an event.
    enum Action: Equatable {
        case none
        /// Streams may open (the peer's SETTINGS arrived, or a stream closed and freed room).
        case startStreams
        /// No new streams here any more; open a fresh connection for what is queued.
        case drain
        /// Send a PING; its ACK proves the path is alive.
        case sendPing
        /// Close the channel; open streams then settle by `disposition(...)`.
        case close(reason: String)
        /// The TLS handshake did not finish within `handshakeTimeout`: close, as a failed handshake.
        case handshakeTimedOut(TimeAmount)
    }

    /// What becomes of a stream that is still open when its connection ends.
    enum Disposition: Equatable {
        /// The upstream never processed it: send it again on a fresh connection.
        case resend
        /// Report this failure for the item.
        case fail(UpstreamError.Kind, String)
    }

    let upstream: String
    let pingInterval: TimeAmount
    let pingTimeout: TimeAmount
    /// Over TLS, ALPN says whether the peer speaks HTTP/2; without it the first bytes (or a
    /// close without any) answer the prior-knowledge preface.
    let overTLS: Bool
    /// How long TCP plus the TLS handshake may take (`connect_timeout`, as libcurl counts it).
    let handshakeTimeout: TimeAmount
    /// Sends of one item at most (the first one included) after connections closed under it.
    static let maxSends = UpstreamRequest.maxSends

    private(set) var state = State.connecting
    /// RFC 9113 §6.5.2 leaves it unlimited until SETTINGS; streams wait for SETTINGS anyway.
    private(set) var maxConcurrentStreams = 100
    /// The peer's SETTINGS_MAX_HEADER_LIST_SIZE, when it announced one.
    private(set) var peerMaxHeaderListSize: Int?
    private(set) var openStreams = 0
    /// Streams among `openStreams` that Sheaf let go of without a reset and leaves to finish.
    private(set) var leftToFinish = 0
    /// The streams whose answers someone waits for: a draining connection closes when they end.
    var liveStreams: Int { openStreams - leftToFinish }
    /// Streams above this id were never processed by the peer (its GOAWAY said so).
    private(set) var lastProcessedStreamID = Int32.max
    /// Why the connection is ending, once something decided it.
    private(set) var closeReason: String?
    private var lastRead: NIODeadline
    private var pingSentAt: NIODeadline?
    private var sawBytes = false
    /// The peer's GOAWAY carried an error, or it broke the protocol: what it processed may be
    /// what failed it, so only the streams it disowned are sent again (an item that kills connections must not kill fresh
    /// ones together with its neighbours).
    private var peerFailedConnection = false
    /// The resets this connection sent lately (`ResetBudget`).
    private var resets = ResetBudget()

    init(upstream: String, pingInterval: TimeAmount, pingTimeout: TimeAmount, now: NIODeadline, overTLS: Bool = false,
         handshakeTimeout: TimeAmount = .seconds(10)) {
        self.upstream = upstream
        self.overTLS = overTLS
        self.handshakeTimeout = handshakeTimeout
        self.pingInterval = pingInterval
        self.pingTimeout = pingTimeout
        self.lastRead = now
    }

    var canOpenStream: Bool { state == .active && closeReason == nil && openStreams < maxConcurrentStreams }
    /// Set when the peer showed it does not speak HTTP/2 (cleartext: an HTTP/1.x answer to the
    /// preface, or a close without any answer; TLS: ALPN picked something else): what waits for
    /// it fails with `.protocolMismatch`.
    private(set) var peerRefusesHTTP2 = false

    /// Set once the peer's SETTINGS arrived: a connection that ends before that never worked,
    /// and what waits for it fails with the reason instead of reconnecting in a loop.
    private(set) var sawSettings = false

    // MARK: events

    /// Over TLS: TCP is up and the handshake starts; it must end within `handshakeTimeout` of
    /// the connect's start (`init`'s `now`), TCP's time included, as libcurl counts it. (A peer
    /// that takes TCP and never answers the ClientHello held the connection, and every item
    /// waiting for it, until the item timed out; and Sheaf's shutdown waited for it too.)
    mutating func tcpConnected(now: NIODeadline) {
        guard state == .connecting else { return }
        state = .handshaking
    }

    /// TCP is up (over TLS: the handshake is done); the preface and SETTINGS are on their way.
    mutating func channelActive(now: NIODeadline) {
        guard state == .connecting || state == .handshaking else { return }
        state = .awaitingSettings
        lastRead = now
    }

    /// The TLS handshake finished and ALPN picked `alpn`: anything but `h2` ends the connection.
    mutating func tlsHandshakeCompleted(alpn: String?) -> Action {
        guard alpn == "h2" else {
            peerRefusesHTTP2 = true
            return close("upstream \(upstream) did not agree to HTTP/2 over TLS (ALPN: \(alpn ?? "none"))")
        }
        return .none
    }

    /// Bytes arrived. The first ones tell whether the peer speaks HTTP/2 at all.
    mutating func bytesReceived(startingWith prefix: UnsafeRawBufferPointer, now: NIODeadline) -> Action {
        lastRead = now
        guard !sawBytes else { return .none }
        sawBytes = true
        if !overTLS && prefix.starts(with: "HTTP/".utf8) {
            peerRefusesHTTP2 = true
            return close("upstream \(upstream) answered the HTTP/2 connection preface with HTTP/1.x: it does not speak h2c (set protocol: http1)")
        }
        return .none
    }

    /// A non-ACK SETTINGS frame from the peer.
    mutating func settingsReceived(maxConcurrentStreams: Int?, maxHeaderListSize: Int?) -> Action {
        if let maxConcurrentStreams { self.maxConcurrentStreams = min(maxConcurrentStreams, 10_000) }
        if let maxHeaderListSize { peerMaxHeaderListSize = maxHeaderListSize }
        switch state {
        case .awaitingSettings:
            sawSettings = true
            state = .active
            return .startStreams
        case .active:
            return .startStreams
        case .connecting, .handshaking, .draining, .closed:
            return .none
        }
    }

    /// GOAWAY: streams above `lastStreamID` were not processed. With an error code the peer has
    /// failed the connection: nothing more will come, so the connection closes now.
    mutating func goawayReceived(lastStreamID: Int32, errorCode: UInt32, errorName: String, debug: String) -> Action {
        lastProcessedStreamID = min(lastProcessedStreamID, lastStreamID)
        guard state != .closed else { return .none }
        if errorCode != 0 {
            peerFailedConnection = true
            let detail = debug.isEmpty ? "" : " (\"\(debug)\")"
            return close("upstream \(upstream) failed the connection: GOAWAY \(errorName)\(detail)")
        }
        return enterDraining()
    }

    /// The session can open no more streams (ids exhausted).
    mutating func streamIDsExhausted() -> Action {
        enterDraining()
    }

    private mutating func enterDraining() -> Action {
        guard state == .active || state == .awaitingSettings else { return .none }
        state = .draining
        if liveStreams == 0 { return closeDrained("upstream \(upstream) connection drained") }
        return .drain
    }

    /// A stream left to finish reached its deadline with the reset budget spent: resetting it
    /// would look like an attack, and leaving it holds a stream forever. The connection takes no
    /// new streams and closes once the live ones end, ending the others without a reset.
    mutating func outOfResetBudget() -> Action {
        guard state == .active || state == .awaitingSettings else { return .none }
        state = .draining
        if liveStreams == 0 { return closeDrained("upstream \(upstream) connection retired: streams left to finish outlived their deadline with the reset budget spent") }
        return .drain
    }

    mutating func streamOpened() {
        openStreams += 1
    }

    /// A stream Sheaf no longer waits for is left to finish (see `shouldReset`). A draining
    /// connection whose last live stream this was closes now.
    mutating func streamLeftToFinish() -> Action {
        leftToFinish += 1
        guard state == .draining, liveStreams == 0 else { return .none }
        return closeDrained("upstream \(upstream) connection drained")
    }

    mutating func streamClosed(leftToFinish wasLeft: Bool = false) -> Action {
        openStreams -= 1
        if wasLeft { leftToFinish -= 1 }
        switch state {
        case .active: return .startStreams
        case .draining where liveStreams == 0: return closeDrained("upstream \(upstream) connection drained")
        default: return .none
        }
    }

    /// Sheaf no longer wants a stream (its batch was abandoned). Returns true to reset it:
    /// always when its request has not all been sent (it cannot be finished), otherwise while
    /// the reset budget lasts. False: the stream is left to finish and its answer dropped, so
    /// that mass cancellation does not look like a rapid-reset attack to the upstream.
    mutating func shouldReset(requestSent: Bool, now: NIODeadline) -> Bool {
        guard !requestSent || resets.allows(now: now) else { return false }
        resets.record(now: now)
        return true
    }

    mutating func pingAcknowledged(now: NIODeadline) {
        pingSentAt = nil
        lastRead = now
    }

    /// The periodic check: PING a connection that has read nothing for `pingInterval` (idle or
    /// not); retire one whose PING went unanswered for `pingTimeout`.
    mutating func tick(now: NIODeadline) -> Action {
        switch state {
        case .handshaking:
            guard now - lastRead >= handshakeTimeout, closeReason == nil else { return .none }
            return .handshakeTimedOut(handshakeTimeout)
        case .awaitingSettings:
            // A peer that accepted TCP but never sends SETTINGS is as dead as a silent one.
            if now - lastRead >= pingInterval + pingTimeout {
                return close("upstream \(upstream) sent no HTTP/2 SETTINGS within \((pingInterval + pingTimeout).configText)")
            }
            return .none
        case .active, .draining:
            if let sent = pingSentAt {
                guard now - sent >= pingTimeout else { return .none }
                return close("upstream \(upstream) stopped answering: no PING ACK within \(pingTimeout.configText); connection retired")
            }
            guard now - lastRead >= pingInterval else { return .none }
            pingSentAt = now
            return .sendPing
        case .connecting, .closed:
            return .none
        }
    }

    /// The peer broke the protocol (a malformed frame; nghttp2 ended the session). As with a
    /// GOAWAY carrying an error, what it processed may be what broke it: nothing is re-sent but
    /// the streams it never saw.
    mutating func peerViolatedProtocol(_ reason: String) -> Action {
        peerFailedConnection = true
        return close(reason)
    }

    /// The socket failed (reset, refused write...). Before SETTINGS that means the peer does not
    /// take HTTP/2 with prior knowledge, which is what the user needs to hear.
    mutating func connectionError(_ detail: String) -> Action {
        if !overTLS && !sawSettings && (state == .connecting || state == .awaitingSettings) {
            if !sawBytes { peerRefusesHTTP2 = true }
            return close("upstream \(upstream) dropped the connection without answering the HTTP/2 preface (\(detail)): it does not speak h2c (prior knowledge)")
        }
        return close("upstream \(upstream) connection failed: \(detail)")
    }

    /// The connection ended because it was done: drained after a GOAWAY, or retired by Sheaf,
    /// with no stream anyone waits for. Any other end lost what was open on it.
    private(set) var endedDrained = false

    private mutating func closeDrained(_ reason: String) -> Action {
        if closeReason == nil { endedDrained = true }
        return close(reason)
    }

    /// Records why the connection ends (the first reason wins) and asks for the close.
    mutating func close(_ reason: String) -> Action {
        guard state != .closed else { return .none }
        if closeReason == nil { closeReason = reason }
        return .close(reason: closeReason!)
    }

    /// The channel is gone. Returns the reason every stream still open fails with.
    mutating func channelInactive() -> String {
        let reason: String
        if let closeReason {
            reason = closeReason
        } else if overTLS && (state == .connecting || state == .handshaking || state == .awaitingSettings) {
            reason = "upstream \(upstream) closed the TLS connection before its HTTP/2 SETTINGS"
        } else if state == .connecting || state == .awaitingSettings {
            if !sawBytes { peerRefusesHTTP2 = true }
            reason = sawBytes
                ? "upstream \(upstream) closed the connection before its HTTP/2 SETTINGS"
                : "upstream \(upstream) closed the connection without answering the HTTP/2 preface: it does not speak h2c (prior knowledge)"
        } else {
            reason = "upstream \(upstream) closed the connection before the response completed"
        }
        closeReason = reason
        state = .closed
        return reason
    }

    /// What becomes of a stream still open when the connection ended with `reason`.
    /// Sent again: streams the peer's GOAWAY disowned, and idempotent requests of which no byte
    /// of answer came (RFC 9110 §9.2.2), at most `sendBudget` times in all (`maxSends`, less
    /// the sends of the item's earlier tries: `UpstreamRequest.sendBudget`).
    func disposition(streamID: Int32, sawResponseBytes: Bool, idempotent: Bool, sends: Int,
                     sendBudget: Int = maxSends, reason: String) -> Disposition {
        let unprocessed = streamID > lastProcessedStreamID || (!peerFailedConnection && !sawResponseBytes && idempotent)
        if unprocessed && sends < sendBudget { return .resend }
        return .fail(.unreachable, reason)
    }
}
