import NIOCore

/// Requests a client connection is serving right now (HTTP/2 streams share their connection's
/// event loop, so a plain counter on that loop is enough). Lets the idle timer tell an idle
/// connection from one whose batch is still running.
final class ConnectionActivity {
    var inProgress = 0
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
