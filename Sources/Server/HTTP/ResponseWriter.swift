import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Writes one response, whole or streamed, from any thread. Streamed bytes written from other
/// threads are coalesced: one event-loop task carries everything queued since the last one.
public final class ResponseWriter: @unchecked Sendable {
    private let context: ChannelHandlerContext
    private let eventLoop: EventLoop
    private let keepAlive: Bool
    /// The request's: an HTTP/1.0 client gets an HTTP/1.0 head, and a body without a length
    /// ends with the connection (it knows no chunked encoding, RFC 9112 §6.1).
    private let version: HTTPVersion
    private let onDone: () -> Void
    private let lock = NIOLock()
    private var pending: ByteBuffer?
    private var flushScheduled = false
    private var finished = false
    private var cancelHandler: (@Sendable () -> Void)?
    private var wentAway = false

    /// A client that takes no byte of a pending response this long is given up on (nginx's
    /// `send_timeout`): the stall handler runs and the connection closes.
    private let stallTimeout: TimeAmount
    private var stallTimer: Scheduled<Void>?
    /// On the loop: the response's end has been written (or failed to be).
    private var endWritten = false
    private var stallHandler: (@Sendable () -> Void)?

    /// The client's connection: the channel itself on HTTP/1.1, the parent of an HTTP/2 stream.
    private let connection: Channel?
    /// The connection's unsent-output budget (every byte this writer queues counts until the
    /// socket has taken it).
    private let budget: OutputBudget?

    init(context: ChannelHandlerContext, keepAlive: Bool, version: HTTPVersion = .http1_1, stallTimeout: TimeAmount = .seconds(60),
         connection: Channel? = nil, budget: OutputBudget? = nil, onDone: @escaping () -> Void) {
        self.version = version
        self.connection = connection
        self.budget = budget
        self.context = context
        self.eventLoop = context.eventLoop
        self.allocator = context.channel.allocator
        self.keepAlive = keepAlive
        self.stallTimeout = stallTimeout
        self.onDone = onDone
    }

    /// Called when the connection's unsent output passes its budget or has room again; the
    /// handler reads the current state with `isFull` (under its own lock, so that changes
    /// reported from different threads cannot be applied out of order).
    public func onOutputBudget(_ handler: @escaping @Sendable (_ isFull: @escaping @Sendable () -> Bool) -> Void) {
        guard let budget else { return }
        budget.register(self) { [weak self] in
            handler { budget.isFull }
            self?.onLoop { self?.blockedChanged() }
        }
    }

    /// On the loop: the client is blocked while its socket is unwritable or its connection's
    /// output budget is full. Blocked, a stall timer runs; every write the socket completes
    /// restarts it (nginx's `send_timeout`: no byte taken for the timeout).
    private var unwritable = false

    private func blockedChanged() {
        let blocked = unwritable || (budget?.isFull ?? false)
        // Watched from the first byte to the last one written, after the batch's end too: a
        // client that stops reading a finished 207 must not hold its connection forever.
        if blocked && !endWritten {
            if stallTimer == nil { armStallTimer() }
        } else {
            stallTimer?.cancel()
            stallTimer = nil
        }
    }

    private func armStallTimer() {
        stallTimer?.cancel()
        stallTimer = eventLoop.scheduleTask(in: stallTimeout) { [self] in self.stalled() }
    }

    /// The socket took a chunk: the client is reading, however slowly.
    private func madeProgress() {
        if stallTimer != nil { armStallTimer() }
    }

    /// Called once if the client stops taking bytes (the connection stays unwritable) for the
    /// stall timeout while the response is unfinished; the connection is closed right after.
    public func onClientStalled(_ handler: @escaping @Sendable () -> Void) {
        lock.withLock { stallHandler = handler }
        onLoop { [self] in self.blockedChanged() }  // already blocked: the timer starts now
    }

    private func stalled() {
        stallTimer = nil
        guard !endWritten else { return }
        // The batch is told (cancelled, counted) when it still runs; either way the client goes.
        let handler = lock.withLock { () -> (@Sendable () -> Void)? in
            defer { stallHandler = nil }
            return stallHandler
        }
        handler?()
        abort()
        // An HTTP/2 stream's client is the whole connection: it reads none of it.
        connection?.close(promise: nil)
    }

    public let allocator: ByteBufferAllocator
    public var loop: EventLoop { eventLoop }

    /// Called once if the client disconnects before the response ends.
    public func onClientGone(_ handler: @escaping @Sendable () -> Void) {
        let gone = lock.withLock { () -> Bool in
            cancelHandler = handler
            return wentAway
        }
        if gone { handler() }
    }

    private var writabilityHandler: (@Sendable (Bool) -> Void)?

    /// Called on the event loop when the connection's outbound buffer crosses its water marks:
    /// false means stop producing, true means go on.
    public func onWritabilityChange(_ handler: @escaping @Sendable (Bool) -> Void) {
        lock.withLock { writabilityHandler = handler }
    }

    func writabilityChanged(_ isWritable: Bool) {
        let handler = lock.withLock { finished ? nil : writabilityHandler }
        unwritable = !isWritable
        blockedChanged()
        handler?(isWritable)
    }

    func clientWentAway() {
        let handler = lock.withLock { () -> (@Sendable () -> Void)? in
            wentAway = true
            return finished ? nil : cancelHandler
        }
        handler?()
    }

    private func onLoop(_ body: @escaping () -> Void) {
        if eventLoop.inEventLoop { body() } else { eventLoop.execute(body) }
    }

    /// A complete response.
    public func respond(_ response: SimpleResponse) {
        var headers = response.headers
        headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        start(status: response.status, headers: headers)
        if response.body.readableBytes > 0 { write(response.body) }
        finish()
    }

    /// Sends the head; without Content-Length, HTTP/1.1 uses chunked encoding, HTTP/1.0 the
    /// connection's end (the handler closes after it: see `HTTPRequestHandler.keepAlive(afterWriterFor:)`),
    /// and HTTP/2 DATA frames.
    public func start(status: HTTPResponseStatus, headers: HTTPHeaders) {
        var headers = headers
        if !keepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: version, status: status, headers: headers)
        onLoop { [context] in
            context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        }
    }

    /// Queues body bytes; they leave in the next event-loop tick together with whatever else queued.
    public func write(_ bytes: ByteBuffer) {
        var bytes = bytes
        budget?.add(bytes.readableBytes)
        let schedule = lock.withLock { () -> Bool in
            if pending == nil {
                pending = bytes
            } else {
                pending!.writeBuffer(&bytes)
            }
            if flushScheduled { return false }
            flushScheduled = true
            return true
        }
        if schedule {
            eventLoop.execute { [self] in self.flushPending() }
        }
    }

    /// Appends to the queued bytes in place, under the writer's lock: callers that encode into
    /// the response (the 207 encoders) are serialized by it and need no lock of their own.
    public func append(_ body: (inout ByteBuffer) -> Void) {
        var out = beginAppend()
        let before = out.readableBytes
        body(&out)
        endAppend(out, added: out.readableBytes - before)
    }

    /// `append` in two halves, for a caller whose encoding reads values a closure would have to
    /// copy (an item and its outcome, for every item: issue 13). Takes the writer's lock and the
    /// queued bytes; `endAppend` gives them back and must follow on the same thread.
    public func beginAppend() -> ByteBuffer {
        lock.lock()
        return pending.take() ?? allocator.buffer(capacity: 4096)
    }

    /// Puts back what `beginAppend` gave, with `added` bytes written to it, and lets go of the lock.
    public func endAppend(_ out: ByteBuffer, added: Int) {
        pending = out
        let schedule = !flushScheduled
        flushScheduled = true
        lock.unlock()
        budget?.add(added)
        if schedule {
            eventLoop.execute { [self] in self.flushPending() }
        }
    }

    private func flushPending() {
        let chunk = lock.withLock { () -> ByteBuffer? in
            flushScheduled = false
            defer { pending = nil }
            return pending
        }
        if let chunk, chunk.readableBytes > 0 {
            guard let budget else {
                context.writeAndFlush(NIOAny(HTTPServerResponsePart.body(.byteBuffer(chunk))), promise: nil)
                return
            }
            // In slices of 64 KiB, each with its promise: the stall timer hears of every slice the
            // socket takes, so a slow but steady reader is never mistaken for a stalled one.
            var rest = chunk
            while rest.readableBytes > 0 {
                let slice = rest.readSlice(length: min(rest.readableBytes, 64 << 10))!
                let count = slice.readableBytes
                let written = eventLoop.makePromise(of: Void.self)
                written.futureResult.whenComplete { [self] _ in
                    budget.remove(count)
                    self.madeProgress()
                }
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(slice))), promise: written)
            }
            context.flush()
        }
    }

    /// Gives up on the response: closes the stream (HTTP/2: RST_STREAM) or the connection (HTTP/1.1).
    public func abort() {
        let dropped = lock.withLock { () -> Int in
            defer { pending = nil }
            return pending?.readableBytes ?? 0
        }
        budget?.remove(dropped)
        budget?.unregister(self)
        lock.withLock {
            finished = true
            cancelHandler = nil
            writabilityHandler = nil
            stallHandler = nil
        }
        onLoop { [self] in
            self.stallTimer?.cancel()
            self.stallTimer = nil
            self.context.close(promise: nil)
        }
    }

    /// Ends the response (after every queued write); `written` runs once the end has been
    /// handed to the socket (or the connection failed).
    public func finish(written: (@Sendable () -> Void)? = nil) {
        budget?.unregister(self)
        lock.withLock {
            finished = true
            // The handler usually captures the batch that owns this writer: release it, or the
            // batch, its items and this writer would keep each other alive.
            cancelHandler = nil
            writabilityHandler = nil
            // The stall handler stays until the end is written (a stall then still counts).
        }
        onLoop { [self] in
            self.flushPending()
            let promise = self.eventLoop.makePromise(of: Void.self)
            self.context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: promise)
            // The request is over when its last byte is written, not queued: a client still
            // reading a long 207 must not meet the next request's head timer. Without keep-alive,
            // `onDone` closes the connection (HTTPRequestHandler: lingering on HTTP/1.1).
            promise.futureResult.whenComplete { [self] _ in
                self.endWritten = true
                self.lock.withLock { self.stallHandler = nil }  // it holds the batch: let both go
                self.stallTimer?.cancel()
                self.stallTimer = nil
                self.onDone()
                written?()
            }
        }
    }
}
