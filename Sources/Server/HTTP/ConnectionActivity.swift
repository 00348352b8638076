import NIOCore
import NIOHTTP2

/// Requests a client connection is serving right now (HTTP/2 streams share their connection's
/// event loop, so a plain counter on that loop is enough), and since when it has served none.
/// Lets the idle timers tell an idle connection from one whose batch is still running.
final class ConnectionActivity {
    /// Unsent encoded output of all the connection's responses.
    let budget: OutputBudget
    private(set) var inProgress = 0
    private(set) var idleSince = NIODeadline.now()
    /// Called when the last request in progress ends (a draining connection closes then).
    var onIdle: (() -> Void)?

    init(outputBudget: Int = 4 << 20) {
        budget = OutputBudget(limit: outputBudget)
    }

    func started() {
        inProgress += 1
    }

    func finished() {
        inProgress -= 1
        if inProgress == 0 {
            idleSince = .now()
            onIdle?()
        }
    }
}

/// Closes a client connection that has been silent in both directions for the idle timeout
/// while serving nothing: idle keep-alive connections, and connections that never sent a request.
final class IdleConnectionCloser: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    private let activity: ConnectionActivity

    init(activity: ConnectionActivity) {
        self.activity = activity
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if activity.inProgress == 0 { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The h2c front connection's own timers and drain, after `NIOHTTP2Handler`:
/// - `client_timeout` counts from the moment the connection last served no stream, whatever
///   else the client sends (PINGs, SETTINGS, WINDOW_UPDATEs keep the byte-level idle timer
///   alive; they must not keep an idle connection open);
/// - on drain (`ChannelShouldQuiesceEvent`) it sends GOAWAY, and closes as soon as no stream runs;
/// - after a connection error (RFC 9113 §5.4.1), which `NIOHTTP2Handler` answers with GOAWAY and
///   then passes on, it closes the connection: held open, it answered each further frame of a
///   hostile client with another GOAWAY until `client_timeout`.
final class HTTP2FrontConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let activity: ConnectionActivity
    private let clientTimeout: TimeAmount
    private var check: RepeatedTask?
    private var draining = false

    init(activity: ConnectionActivity, clientTimeout: TimeAmount) {
        self.activity = activity
        self.clientTimeout = clientTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let every = TimeAmount.nanoseconds(max(clientTimeout.nanoseconds / 4, 10_000_000))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        check = context.eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { [activity, clientTimeout] _ in
            // Idle means no stream running and every byte of the last answers taken by the socket:
            // a slow reader still draining a 207's tail is not cut off.
            guard activity.inProgress == 0, activity.budget.isEmpty,
                  NIODeadline.now() - activity.idleSince >= clientTimeout else { return }
            Self.goAway(loopBound.value, close: true)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A stream error resets that stream only (NIOHTTP2Handler did): the connection serves on.
        if Self.isStreamScoped(error) { return }
        // NIOHTTP2Handler reports these for one stream and for the whole connection alike, and
        // ends the connection for a stream over the announced limit. Either way the batches
        // already running on it still end with their 207s; closing at once lost them all.
        if Self.endsTheConnectionGracefully(error) {
            drain(context)
            return
        }
        context.close(promise: nil)
    }

    /// Flow-control errors (RFC 9113 §6.9: a stream error on a stream, a connection error on
    /// stream 0), and a stream opened past SETTINGS_MAX_CONCURRENT_STREAMS (§5.1.2: a stream
    /// error, which NIOHTTP2Handler answers with GOAWAY).
    static func endsTheConnectionGracefully(_ error: Error) -> Bool {
        error is NIOHTTP2Errors.InvalidWindowIncrementSize || error is NIOHTTP2Errors.InvalidFlowControlWindowSize
            || error is NIOHTTP2Errors.MaxStreamsViolation
    }

    /// The errors `NIOHTTP2Handler` answers with RST_STREAM, not GOAWAY: a request that breaks
    /// HTTP/2's message rules (RFC 9113 §8.1.1). It reports both kinds alike, as the bare error;
    /// anything else it reports ended the connection (a frame it cannot parse, flow control,
    /// a flood), or is the socket's own failure: either way the connection closes.
    static func isStreamScoped(_ error: Error) -> Bool {
        switch error {
        case is NIOHTTP2Errors.StreamError, is NIOHTTP2Errors.BadStreamStateTransition,
             is NIOHTTP2Errors.ContentLengthHeaderMalformedValue, is NIOHTTP2Errors.ContentLengthHeaderNegative,
             is NIOHTTP2Errors.ContentLengthHeadersMismatch, is NIOHTTP2Errors.ContentLengthViolated,
             is NIOHTTP2Errors.DuplicatePseudoHeader, is NIOHTTP2Errors.EmptyPathHeader,
             is NIOHTTP2Errors.ForbiddenHeaderField, is NIOHTTP2Errors.InvalidPseudoHeaderValue,
             is NIOHTTP2Errors.InvalidPseudoHeaders, is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader,
             is NIOHTTP2Errors.TrailersWithoutEndStream, is NIOHTTP2Errors.UnknownPseudoHeader,
             is NIOHTTP2Errors.UnsupportedPseudoHeader, is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName:
            return true
        default:
            return false
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent { drain(context) }
        context.fireUserInboundEventTriggered(event)
    }

    /// GOAWAY, then the close once the streams running have ended (at once if none is).
    private func drain(_ context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        Self.goAway(context, close: activity.inProgress == 0)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        // On the next tick: the last stream's final frames are still on their way down from
        // its stream channel. The second GOAWAY is written after them; the close after it.
        activity.onIdle = {
            loopBound.value.eventLoop.execute { Self.goAway(loopBound.value, close: true) }
        }
    }

    private static func goAway(_ context: ChannelHandlerContext, close: Bool) {
        let frame = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(NIOAny(frame)).whenComplete { _ in
            if close { context.close(promise: nil) }
        }
    }
}
