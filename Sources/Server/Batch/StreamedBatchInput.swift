import BatchInput
import FanOut
import MultiStatus
import NIOCore

/// A template route's body, decoded as it arrives (on the connection's event loop): items
/// start while the rest is still coming, and reading pauses while the batch has enough items
/// waiting, so memory follows `concurrency`, not the batch's size.
///
/// A body found wrong before any item has started is refused whole (400, 413, 408), as an
/// explicit batch is. Items decoded from one read are started together on the next loop tick,
/// so a body that arrives at once is checked whole first. Found wrong after the 207 began, the
/// items before the fault are reported and the summary's `input_error` names the fault.
final class StreamedBatchInput: RequestBodySink {
    private var decoder: StreamingTemplateDecoder
    private let maxBodyBytes: Int
    private let loop: EventLoop
    private let reading: BodyReading
    private let clientTimeout: TimeAmount
    private let refuse: (BatchError, Int) -> Void
    /// Takes the items (consuming): a reference kept along the way made the run copy every item.
    private let begin: (consuming [BatchItem], Bool, Int) -> BatchSession
    private var received = 0
    private var pending: [BatchItem] = []
    private var startScheduled = false
    private var session: BatchSession?
    /// The run said to wait for room: reading stays paused until it calls back.
    private var waiting = false
    /// The body ended, was refused, timed out, or its client left: nothing more is decoded.
    private var closed = false

    /// `refuse`: answers a body that went wrong before the 207 began (with the bytes read).
    /// `begin`: starts the 207 with the first items (`streamed`: more may come) and the bytes read so far.
    init(decoder: StreamingTemplateDecoder, maxBodyBytes: Int, loop: EventLoop, reading: BodyReading, clientTimeout: TimeAmount,
         refuse: @escaping (BatchError, Int) -> Void, begin: @escaping (consuming [BatchItem], Bool, Int) -> BatchSession) {
        self.decoder = decoder
        self.maxBodyBytes = maxBodyBytes
        self.loop = loop
        self.reading = reading
        self.clientTimeout = clientTimeout
        self.refuse = refuse
        self.begin = begin
    }

    func body(_ part: ByteBuffer) -> Bool {
        guard !closed else { return true }
        received += part.readableBytes
        var items: [BatchItem] = []
        var error: BatchError?
        if received > maxBodyBytes {
            error = BatchError(status: 413, field: "body", "request body is larger than this route's max_body_bytes (\(maxBodyBytes) bytes)",
                               limit: "max_body_bytes")
        } else {
            (items, error) = decoder.feed(part)
        }
        if let session {
            if !items.isEmpty { waiting = !session.append(consume items) }
            if let error { stop(session, error) }
            return !waiting
        }
        hold(consume items)
        if let error {
            closed = true
            refuse(error, received)
            return true
        }
        if !pending.isEmpty && !startScheduled {
            startScheduled = true
            loop.execute { self.startStreaming() }
        }
        return true
    }

    /// Items arrived and the body did not end in the same read: the 207 begins.
    private func startStreaming() {
        guard !closed, session == nil else { return }
        let session = begin([], true, received)
        self.session = session
        let bound = NIOLoopBound(self, eventLoop: loop)
        session.whenInputRoom { [reading] in
            bound.eventLoop.execute {
                bound.value.waiting = false
                reading.resume()
            }
        }
        let first = pending
        pending = []
        // A "wait" here pauses reading at the next body part.
        waiting = !session.append(consume first)
    }

    func end() {
        guard !closed else { return }
        closed = true
        let (items, error) = decoder.finish()
        if let session {
            if !items.isEmpty { _ = session.append(consume items) }
            session.endInput(problem: error.map(Self.problem), bytesIn: received)
            return
        }
        hold(consume items)
        if let error {
            pending = []
            refuse(error, received)
            return
        }
        // The whole body came before any item started: one batch of known size.
        let all = pending
        pending = []
        _ = begin(consume all, false, received)
    }

    /// Keeps items until the 207 begins: moved, not copied item by item, when nothing is pending
    /// yet (the usual first read).
    private func hold(_ items: consuming [BatchItem]) {
        if pending.isEmpty { pending = consume items } else { pending += items }
    }

    func timedOut(_ detail: String?) {
        guard !closed else { return }
        let error = BatchError(status: 408, field: "body", detail ?? "the request body stopped arriving for \(clientTimeout.nanoseconds / 1_000_000_000)s")
        if let session {
            stop(session, error)
        } else {
            closed = true
            refuse(error, received)
        }
    }

    func clientGone() {
        // The session also hears it from its writer, unless the writer was given up on first
        // (a stalled client): either way its input ends here, so it can finish.
        closed = true
        pending = []
        session?.endInput(problem: nil, bytesIn: received)
    }

    /// The body went wrong after the 207 began: the items so far stand, and the summary says why the rest is missing.
    private func stop(_ session: BatchSession, _ error: BatchError) {
        closed = true
        session.endInput(problem: Self.problem(error), bytesIn: received)
    }

    private static func problem(_ error: BatchError) -> InputProblem {
        InputProblem(status: error.status, field: error.field, detail: error.message)
    }
}
