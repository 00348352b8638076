import NIOCore
import Testing
@testable import Upstream

/// The connection's lifecycle without a socket or a clock: events in, actions out.
struct HTTP2ConnectionStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func machine() -> HTTP2ConnectionStateMachine {
        var m = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0)
        m.channelActive(now: t0)
        return m
    }

    @Test func noStreamOpensBeforeThePeersSettings() {
        var m = machine()
        #expect(m.state == .awaitingSettings && !m.canOpenStream)
        #expect(m.settingsReceived(maxConcurrentStreams: 2, maxHeaderListSize: 8192) == .startStreams)
        #expect(m.canOpenStream && m.peerMaxHeaderListSize == 8192)
        m.streamOpened(); m.streamOpened()
        #expect(!m.canOpenStream)
        #expect(m.streamClosed() == .startStreams && m.canOpenStream)
    }

    @Test func anHTTP1AnswerToThePrefaceClosesWithTheReason() {
        var m = machine()
        let action = Array("HTTP/1.1 400 Bad Request\r\n".utf8).withUnsafeBytes { m.bytesReceived(startingWith: $0, now: t0) }
        guard case .close(let reason) = action else { Issue.record("expected close, got \(action)"); return }
        #expect(reason.contains("does not speak h2c"))
        #expect(m.channelInactive() == reason)
    }

    /// A peer that takes TCP and never answers the ClientHello: the handshake is given up on
    /// once `connect_timeout` has passed since the connect began, not left to hold the connection.
    @Test func aTLSHandshakeThatStallsTimesOut() {
        var m = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0,
                                            overTLS: true, handshakeTimeout: .milliseconds(500))
        m.tcpConnected(now: t0 + .milliseconds(300))  // TCP's time counts: the limit runs from the connect's start
        #expect(m.state == .handshaking && !m.canOpenStream)
        #expect(m.tick(now: t0 + .milliseconds(499)) == .none)
        #expect(m.tick(now: t0 + .milliseconds(500)) == .handshakeTimedOut(.milliseconds(500)))
        var done = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0,
                                               overTLS: true, handshakeTimeout: .milliseconds(500))
        done.tcpConnected(now: t0)
        #expect(done.tlsHandshakeCompleted(alpn: "h2") == .none)
        done.channelActive(now: t0 + .milliseconds(400))
        #expect(done.state == .awaitingSettings)
        #expect(done.tick(now: t0 + .seconds(2)) == .none)
    }

    @Test func overTLSTheProtocolIsWhatALPNPicked() {
        var m = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0, overTLS: true)
        m.channelActive(now: t0)
        #expect(m.tlsHandshakeCompleted(alpn: "h2") == .none && !m.peerRefusesHTTP2)
        var refused = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0, overTLS: true)
        refused.channelActive(now: t0)
        guard case .close(let reason) = refused.tlsHandshakeCompleted(alpn: "http/1.1") else { Issue.record("expected close"); return }
        #expect(reason.contains("did not agree to HTTP/2 over TLS (ALPN: http/1.1)"))
        #expect(refused.peerRefusesHTTP2)
    }

    @Test func overTLSAConnectionLostBeforeAnyBytesIsNotAProtocolVerdict() {
        // Without TLS a silent close answers the preface ("no h2c here"); over TLS the protocol
        // was settled by ALPN, and a lost connection is just a lost connection.
        var m = HTTP2ConnectionStateMachine(upstream: "u", pingInterval: .seconds(5), pingTimeout: .seconds(3), now: t0, overTLS: true)
        m.channelActive(now: t0)
        _ = m.tlsHandshakeCompleted(alpn: "h2")
        _ = m.connectionError("connection reset by peer")
        #expect(!m.peerRefusesHTTP2)
        #expect(!m.channelInactive().contains("h2c"))
        var plain = machine()
        _ = plain.channelInactive()
        #expect(plain.peerRefusesHTTP2)
    }

    @Test func aCleanGoawayDrainsThenClosesWhenTheLastStreamEnds() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        m.streamOpened(); m.streamOpened()
        #expect(m.goawayReceived(lastStreamID: 1, errorCode: 0, errorName: "NO_ERROR", debug: "") == .drain)
        #expect(!m.canOpenStream)
        #expect(m.streamClosed() == .none)
        guard case .close = m.streamClosed() else { Issue.record("expected close"); return }
        // Stream 3 was beyond the last stream id: sent again whatever its method.
        #expect(m.disposition(streamID: 3, sawResponseBytes: false, idempotent: false, sends: 1, reason: "r") == .resend)
        #expect(m.disposition(streamID: 1, sawResponseBytes: false, idempotent: false, sends: 1, reason: "r") == .fail(.unreachable, "r"))
    }

    @Test func aGoawayWithAnErrorClosesAtOnceAndResendsOnlyWhatWasDisowned() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        m.streamOpened()
        let action = m.goawayReceived(lastStreamID: 5, errorCode: 11, errorName: "ENHANCE_YOUR_CALM", debug: "too big")
        #expect(action == .close(reason: "upstream u failed the connection: GOAWAY ENHANCE_YOUR_CALM (\"too big\")"))
        #expect(m.disposition(streamID: 5, sawResponseBytes: false, idempotent: true, sends: 1, reason: "r") == .fail(.unreachable, "r"))
        #expect(m.disposition(streamID: 7, sawResponseBytes: false, idempotent: true, sends: 1, reason: "r") == .resend)
    }

    @Test func idempotentItemsWithoutAnswerAreResentAtMostFourTimesInAll() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        let reason = m.channelInactive()
        #expect(m.disposition(streamID: 1, sawResponseBytes: false, idempotent: true, sends: 3, reason: reason) == .resend)
        #expect(m.disposition(streamID: 1, sawResponseBytes: false, idempotent: true, sends: 4, reason: reason) == .fail(.unreachable, reason))
        #expect(m.disposition(streamID: 1, sawResponseBytes: true, idempotent: true, sends: 1, reason: reason) == .fail(.unreachable, reason))
        #expect(m.disposition(streamID: 1, sawResponseBytes: false, idempotent: false, sends: 1, reason: reason) == .fail(.unreachable, reason))
    }

    @Test func silencePingsAndAnUnansweredPingRetiresTheConnection() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        #expect(m.tick(now: t0 + .seconds(4)) == .none)
        #expect(m.tick(now: t0 + .seconds(5)) == .sendPing)
        #expect(m.tick(now: t0 + .seconds(6)) == .none)  // one PING at a time
        guard case .close(let reason) = m.tick(now: t0 + .seconds(8)) else { Issue.record("expected close"); return }
        #expect(reason.contains("no PING ACK within 3s"))
    }

    @Test func anAnsweredPingKeepsTheConnection() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        #expect(m.tick(now: t0 + .seconds(5)) == .sendPing)
        m.pingAcknowledged(now: t0 + .seconds(6))
        #expect(m.tick(now: t0 + .seconds(9)) == .none)
        #expect(m.tick(now: t0 + .seconds(11)) == .sendPing)
    }

    @Test func aPeerThatNeverSendsSettingsIsGivenUpOn() {
        var m = machine()
        #expect(m.tick(now: t0 + .seconds(7)) == .none)
        guard case .close(let reason) = m.tick(now: t0 + .seconds(8)) else { Issue.record("expected close"); return }
        #expect(reason.contains("sent no HTTP/2 SETTINGS within 8s"))
    }

    @Test func aSilentCloseBeforeSettingsSaysThePeerDoesNotSpeakH2c() {
        var m = machine()
        #expect(m.channelInactive().contains("does not speak h2c"))
        #expect(!m.sawSettings)
    }

    /// Cancelled streams are reset while the budget lasts (100 in any 30 s), then left to finish;
    /// a request not all sent is reset regardless, and a forced reset counts against the budget.
    @Test func cancelledStreamsAreResetWithinABudgetThenLeftToFinish() {
        var m = machine()
        var decisions: [Bool] = []
        for i in 0..<100 { decisions.append(m.shouldReset(requestSent: true, now: t0 + .milliseconds(Int64(i)))) }
        #expect(decisions.allSatisfy { $0 })
        decisions = [m.shouldReset(requestSent: true, now: t0 + .seconds(1)),
                     m.shouldReset(requestSent: false, now: t0 + .seconds(1)),
                     // The window slides: the oldest reset left in it (sent at 1 ms; the forced one
                     // pushed out the one at 0) leaves it 30 s after it was sent.
                     m.shouldReset(requestSent: true, now: t0 + .seconds(30)),
                     m.shouldReset(requestSent: true, now: t0 + .seconds(30) + .milliseconds(1)),
                     m.shouldReset(requestSent: true, now: t0 + .seconds(30) + .milliseconds(1))]
        #expect(decisions == [false, true, false, true, false])
        // Resets of streams whose request was not all sent fill the budget too.
        var n = machine()
        for _ in 0..<100 { _ = n.shouldReset(requestSent: false, now: t0) }
        let afterUploads = n.shouldReset(requestSent: true, now: t0 + .seconds(29))
        #expect(!afterUploads)
    }

    /// Out of budget with a stream left to finish past its deadline, the connection drains: no new
    /// streams, and it closes when the last stream someone waits for ends, not the ones left.
    @Test func outOfResetBudgetTheConnectionClosesWhenItsLiveStreamsEnd() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        m.streamOpened(); m.streamOpened(); m.streamOpened()
        #expect(m.streamLeftToFinish() == .none)
        #expect(m.liveStreams == 2 && m.openStreams == 3)
        #expect(m.outOfResetBudget() == .drain && !m.canOpenStream)
        #expect(m.streamClosed() == .none)
        guard case .close = m.streamClosed() else { Issue.record("expected close"); return }
        // With nothing live it closes at once.
        var idle = machine()
        _ = idle.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        idle.streamOpened()
        _ = idle.streamLeftToFinish()
        guard case .close(let reason) = idle.outOfResetBudget() else { Issue.record("expected close"); return }
        #expect(reason.contains("reset budget"))
    }

    @Test func aResetBudgetOfNothingNeverAllows() {
        var budget = ResetBudget(limit: 0)
        budget.record(now: t0)
        #expect(!budget.allows(now: t0 + .seconds(60)))
    }

    /// A draining connection whose last live stream is left to finish closes then: nothing else
    /// would close it before the reset budget frees up.
    @Test func aDrainingConnectionClosesWhenItsLastLiveStreamIsLeftToFinish() {
        var m = machine()
        _ = m.settingsReceived(maxConcurrentStreams: 100, maxHeaderListSize: nil)
        m.streamOpened(); m.streamOpened()
        #expect(m.goawayReceived(lastStreamID: 3, errorCode: 0, errorName: "NO_ERROR", debug: "") == .drain)
        #expect(m.streamLeftToFinish() == .none)
        guard case .close = m.streamLeftToFinish() else { Issue.record("expected close"); return }
    }
}
