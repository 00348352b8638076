import NIOCore

/// One item on an HTTP/2 upstream: the request, its deadline, the response as it arrives, and the
/// sink its result goes to exactly once. Confined to its slot's event loop, except `cancel()`.
final class HTTP2Exchange: UpstreamCall, @unchecked Sendable {
    let request: UpstreamRequest
    let deadline: NIODeadline
    /// Where the result goes (nil once it went), with the caller's tag for it.
    private var sink: UpstreamResultSink?
    private let tag: Int
    /// Unowned: the slot's queue holds exchanges, settled ones too until it next pops them, and
    /// a strong reference back would make a cycle that a slot whose event loop is gone never ends.
    unowned let slot: HTTP2Slot

    // Response state, filled by nghttp2 callbacks.
    var status = 0
    var headers = HeaderFields()
    var body = ResponseBody()
    var truncated = false
    var sawResponseBytes = false
    /// The peer ended its side (END_STREAM) with a final status: the answer is whole even if our
    /// upload is still going (RFC 9113 §8.1 lets a server answer before reading the body).
    var responseComplete = false
    /// The final answer's header block has ended: a later block is the trailer section, whose
    /// fields are not the answer's headers (RFC 9110 §6.5.1).
    var headEnded = false
    /// The answer's header fields so far, RFC 9113 §6.5.2 count (against `max_response_header_bytes`).
    var headBytes = 0
    /// Times the request was put on a stream (re-sends after a connection closed under it count).
    var sends = 0
    /// In its slot's queue (which skips settled exchanges lazily, so cancelling one costs O(1)).
    var isQueued = false
    /// The fan-out asked to stop taking the body (its client reads slowly); the bytes received
    /// meanwhile are not given back to the stream's flow-control window until it resumes.
    var readingSuspended = false
    /// Body bytes received but not yet returned to the upstream's window (`nghttp2_session_consume`).
    var unconsumed = 0
    /// Read position in `request.body` for the DATA frames nghttp2 asks for.
    var bodySent = 0
    /// The request's last DATA frame has been handed to nghttp2: the request is all on its way.
    var bodyEnded = false
    var streamID: Int32 = -1
    /// The request head's size (`UpstreamConfiguration.headSize`), counted once at enqueue and
    /// checked again against the peer's limit when a stream opens.
    var headSize = 0
    /// The connection whose `streams` hold this exchange, set and cleared with that entry (a
    /// cycle only while the stream is open). Strong, not weak: a weak reference gives the
    /// connection a side table, and then every retain and release of it, several per item, takes
    /// the runtime's slow path (about a tenth of Sheaf's CPU in the profile, issue 13).
    var connection: HTTP2Connection?

    init(request: UpstreamRequest, deadline: NIODeadline, slot: HTTP2Slot, sink: UpstreamResultSink, tag: Int) {
        self.request = request
        self.deadline = deadline
        self.slot = slot
        self.sink = sink
        self.tag = tag
    }

    var isSettled: Bool { sink == nil }

    /// Forget what an attempt received, before sending it again elsewhere.
    func resetForResend() {
        status = 0
        headers.removeAll()
        body = ResponseBody()
        truncated = false
        sawResponseBytes = false
        responseComplete = false
        headBytes = 0
        unconsumed = 0
        bodySent = 0
        bodyEnded = false
        streamID = -1
        connection = nil
    }

    /// Every outcome leaves through here, stamped with the number of sends. Consuming: the
    /// answer is moved on to the fan-out, not copied (a retain and release of each of its parts).
    func settle(_ result: consuming UpstreamResult) {
        guard let sink else { return }
        self.sink = nil
        switch consume result {
        case .success(var response):
            response.attempts = sends
            sink.deliver(.success(response), tag: tag)
        case .failure(var error):
            error.attempts = sends
            sink.deliver(.failure(error), tag: tag)
        }
    }

    func fail(_ kind: UpstreamError.Kind, _ message: String, cause: UpstreamError.Cause = .other) {
        settle(.failure(UpstreamError(kind, message, cause: cause)))
    }

    /// Settles with the answer received, moving its headers and body out of the exchange: the
    /// exchange is done with them, and a copy cost a retain and a release of each (issue 13).
    func settleAnswered() {
        var fields = HeaderFields()
        swap(&fields, &headers)
        settle(.success(UpstreamResponse(status: status, headers: fields, body: body.take(), bodyTruncated: truncated)))
    }

    func cancel() {
        onSlotLoop { $0.cancel(self) }
    }

    // Always a task of its own, even on the slot's loop: the fan-out calls these under its lock,
    // and giving the window back goes into nghttp2, which may settle items.
    func suspendReading() {
        slot.eventLoop.execute { self.setReading(suspended: true) }
    }

    func resumeReading() {
        slot.eventLoop.execute { self.setReading(suspended: false) }
    }

    private func setReading(suspended: Bool) {
        guard !isSettled, readingSuspended != suspended else { return }
        readingSuspended = suspended
        if !suspended { connection?.giveBackWindow(of: self) }
    }

    private func onSlotLoop(_ body: @escaping (HTTP2Slot) -> Void) {
        let slot = self.slot
        if slot.eventLoop.inEventLoop {
            body(slot)
        } else {
            slot.eventLoop.execute { body(slot) }
        }
    }
}

/// An exchange's end, parked while nghttp2 runs: answered (no error), or failed with `error`.
/// A struct, not a tuple: an array of tuples is freed through the runtime's generic code.
struct ParkedOutcome {
    let exchange: HTTP2Exchange
    let error: UpstreamError?
}
