import NIOCore

/// One item on an HTTP/2 upstream: the request, its deadline, the response as it arrives, and the
/// completion that is called exactly once. Confined to its slot's event loop, except `cancel()`.
final class HTTP2Exchange: UpstreamCall, @unchecked Sendable {
    let request: UpstreamRequest
    let deadline: NIODeadline
    private var completion: (@Sendable (UpstreamResult) -> Void)?
    unowned let slot: HTTP2Slot

    // Response state, filled by nghttp2 callbacks.
    var status = 0
    var headers: [(name: String, value: String)] = []
    var body: ByteBuffer
    var truncated = false
    var sawResponseBytes = false
    /// Times this exchange went back to the queue because the upstream never processed it.
    var requeues = 0
    /// Read position in `request.body` for the DATA frames nghttp2 asks for.
    var bodySent = 0
    var streamID: Int32 = -1
    weak var connection: HTTP2Connection?

    init(request: UpstreamRequest, deadline: NIODeadline, slot: HTTP2Slot,
         completion: @escaping @Sendable (UpstreamResult) -> Void) {
        self.request = request
        self.deadline = deadline
        self.slot = slot
        self.completion = completion
        self.body = ByteBuffer()
    }

    var isSettled: Bool { completion == nil }

    /// Forget what an attempt received, before sending it again elsewhere.
    func resetForRetry() {
        status = 0
        headers.removeAll(keepingCapacity: true)
        body.clear()
        truncated = false
        sawResponseBytes = false
        bodySent = 0
        streamID = -1
        connection = nil
        requeues += 1
    }

    func settle(_ result: UpstreamResult) {
        guard let completion else { return }
        self.completion = nil
        completion(result)
    }

    /// The response as received so far.
    var response: UpstreamResponse {
        UpstreamResponse(status: status, headers: headers, body: body, bodyTruncated: truncated)
    }

    func cancel() {
        let slot = self.slot
        if slot.eventLoop.inEventLoop {
            slot.cancel(self)
        } else {
            slot.eventLoop.execute { slot.cancel(self) }
        }
    }
}
