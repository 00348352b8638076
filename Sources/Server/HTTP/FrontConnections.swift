import NIOConcurrencyHelpers
import NIOCore

/// Every client connection the listener has accepted and not yet closed: it refuses a client
/// address past `maxPerClient` open connections, and lets a drain reach them all: `drain()`
/// sends each one `ChannelShouldQuiesceEvent` (NIO's HTTP/1.1 pipeline then answers with
/// `Connection: close` and closes after the response in progress; the h2c guard sends GOAWAY;
/// a connection still sniffing its protocol closes).
public final class FrontConnections: @unchecked Sendable {
    /// A connection refused because its client already holds `maxPerClient`.
    struct TooManyConnections: Error {}

    private let lock = NIOLock()
    private var open: [ObjectIdentifier: Channel] = [:]
    private var perClient: [String: Int] = [:]
    private var maxPerClient: Int
    private let onRefused: @Sendable () -> Void

    /// `maxPerClient` 0: no limit. `onRefused` runs for each connection refused (a metric).
    public init(maxPerClient: Int = 0, onRefused: @escaping @Sendable () -> Void = {}) {
        self.maxPerClient = maxPerClient
        self.onRefused = onRefused
    }

    /// A reload's new limit, for connections accepted from now on.
    public func setMaxPerClient(_ limit: Int) {
        lock.withLock { maxPerClient = limit }
    }

    /// Connections open right now.
    public var count: Int { lock.withLock { open.count } }

    /// Called as a connection is set up; throws to refuse it (NIO then closes it).
    func admit(_ channel: Channel) throws {
        let id = ObjectIdentifier(channel)
        let client = channel.remoteAddress?.ipAddress ?? "?"
        let admitted = lock.withLock { () -> Bool in
            let held = perClient[client, default: 0]
            if maxPerClient > 0 && held >= maxPerClient { return false }
            perClient[client] = held + 1
            open[id] = channel
            return true
        }
        guard admitted else {
            onRefused()
            throw TooManyConnections()
        }
        channel.closeFuture.whenComplete { [self] _ in
            lock.withLock {
                open.removeValue(forKey: id)
                let left = perClient[client, default: 1] - 1
                perClient[client] = left > 0 ? left : nil
            }
        }
    }

    /// Asks every connection to finish what it serves and close.
    public func drain() {
        for channel in lock.withLock({ Array(open.values) }) {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    /// Closes whatever is still open (after the drain's time is up).
    public func closeAll() {
        for channel in lock.withLock({ Array(open.values) }) { channel.close(promise: nil) }
    }
}
