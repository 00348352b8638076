import BatchInput
import Codecs
import FanOut
import MultiStatus
import NIOCore
import Upstream

/// One batch through everything Sheaf does per item except the network: the body decoded into
/// items (`JSONBatchDecoder`, which also plans paths, hrefs, the headers Sheaf adds and coalescing), a `FanOutRun` scheduling them
/// onto a transport that answers from memory, and each outcome encoded into the 207 as the
/// server does. Single-threaded: the transport's answers are handed back in turns, the way an
/// event loop hands back a read's worth of responses.
public struct PipelineBatch {
    public let count: Int
    public let format: ResponseFormat
    private let body: ByteBuffer
    private let template: FanOutTemplate

    /// `count` ids in a JSON array, the route template `GET /users/{item}`, a 207 in `format`.
    public init(count: Int, format: ResponseFormat) {
        self.count = count
        self.format = format
        var body = ByteBuffer()
        body.writeString("[" + (1...count).map(String.init).joined(separator: ",") + "]")
        self.body = body
        self.template = FanOutTemplate(items: try! JSONPointer(""), method: "GET", path: try! PathTemplate("/users/{item}"))
    }

    /// What the server adds to every item by default (`forwarded: true`, a request id) and its
    /// default `coalesce: true`: the pipeline pays for them as a real batch does.
    fileprivate static let shared = BatchHeaders(imposed: [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"),
                                                       ("forwarded", "for=127.0.0.1;proto=http;host=127.0.0.1:8080")],
                                             requestID: "3f2a9c41d07b6e58a1c4f09e2d7b3a65")

    private func decode() -> [BatchItem] {
        try! JSONBatchDecoder.decode(body, template: template, basePath: "", maxItems: count, headers: Self.shared, coalesce: true)
    }

    /// Runs the batch to its end; returns the 207 body's size. Traps if an item is missing or
    /// reported twice: a benchmark of a pipeline that loses items would measure nothing.
    @discardableResult
    public func run(on transport: MemoryTransport) -> Int {
        let sink = Sink(encoder: format.makeEncoder())
        // Straight into the run, as the server hands them over: a second reference to the
        // array would make the run copy every item when it takes them (copy on write).
        let run = FanOutRun(items: decode(), transport: transport, concurrency: 1000,
                            onResult: { _, item, outcome, _ in sink.item(item, outcome) },
                            onFinish: { sink.finished = true })
        run.start()
        transport.answerAll()
        precondition(sink.finished && sink.summary.total == count, "the batch lost items: \(sink.summary.total) of \(count)")
        return sink.end()
    }
}

extension PipelineBatch {
    /// The same batch through a real transport, started on `loop` as the server starts a batch on
    /// its client's loop; returns the 207 body's size once every item has settled.
    public func run(through transport: UpstreamTransport, on loop: EventLoop) -> Int {
        let sink = Sink(encoder: format.makeEncoder())
        let done = loop.makePromise(of: Int.self)
        // Decoded on the loop, as the server decodes a body on its client's loop.
        loop.execute {
            let run = FanOutRun(items: self.decode(), transport: transport, concurrency: 1000,
                                onResult: { _, item, outcome, _ in sink.item(item, outcome) },
                                onFinish: { loop.execute { done.succeed(sink.end()) } })
            run.start()
        }
        let size = try! done.futureResult.wait()
        precondition(sink.summary.total == count && sink.summary.succeeded == count,
                     "the batch lost or failed items: \(sink.summary.succeeded) of \(count) succeeded")
        return size
    }
}

/// What the server's batch session does with each outcome, without its locks and connection.
private final class Sink: @unchecked Sendable {
    let encoder: MultiStatusEncoder
    var out = ByteBuffer()
    var summary = BatchSummary()
    var finished = false

    init(encoder: MultiStatusEncoder) {
        self.encoder = encoder
        encoder.begin(into: &out)
    }

    func item(_ item: BatchItem, _ outcome: ItemOutcome) {
        summary.count(outcome)
        encoder.item(item, outcome, into: &out)
    }

    func end() -> Int {
        encoder.end(summary, into: &out)
        return out.readableBytes
    }
}

/// An upstream that answers every request 200 with nginx's headers and an 80-byte JSON body,
/// the same answer `bench/run.py`'s nginx gives. Requests wait until `answerAll()`.
public final class MemoryTransport: UpstreamTransport, @unchecked Sendable {
    public let configuration = UpstreamConfiguration(name: "memory",
                                                     endpoint: UpstreamEndpoint(scheme: "http", host: "127.0.0.1", port: 80, basePath: ""))
    private var pending: [(sink: UpstreamResultSink, tag: Int)] = []
    private var spare: [(sink: UpstreamResultSink, tag: Int)] = []
    private let response: UpstreamResponse
    private let call = NoCall()

    public init() {
        var body = ByteBuffer()
        body.writeString(#"{"id":1,"name":"user number 1","email":"user1@example.com","active":true}"#)
        response = UpstreamResponse(status: 200, headers: [("server", "nginx/1.22.1"), ("date", "Thu, 26 Nov 2026 07:00:00 GMT"),
                                                           ("content-type", "application/json"),
                                                           ("content-length", String(body.readableBytes))],
                                    body: body)
    }

    public func execute(_ request: consuming UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        pending.append((sink, tag))
        return call
    }

    /// Answers in turns until nothing waits: answers free slots, and the run starts more items.
    func answerAll() {
        while !pending.isEmpty {
            swap(&pending, &spare)
            for waiting in spare { waiting.sink.deliver(.success(response), tag: waiting.tag) }
            spare.removeAll(keepingCapacity: true)
        }
    }

    public func shutdown() async {}
    public func cancel(_ calls: [UpstreamCall]) {}
    public var gauges: [UpstreamGauges] { [] }

    private final class NoCall: UpstreamCall, @unchecked Sendable {
        func cancel() {}
        func suspendReading() {}
        func resumeReading() {}
    }
}
