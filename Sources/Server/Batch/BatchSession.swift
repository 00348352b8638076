import FanOut
import Logging
import MultiStatus
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Prometheus
import Upstream

/// One bulk request from decoded items to the last byte of its 207: starts the fan-out, encodes
/// each outcome as it settles (completion order) straight into the response, ends with the
/// summary. Every item is written exactly once; a client that goes away cancels what is in flight.
/// A streamed batch (`streamed: true`) takes more items with `append` while it runs, and ends
/// after `endInput`; it keeps only the items in flight.
final class BatchSession: @unchecked Sendable {
    private let route: RouteRuntime
    /// Known only when every item was decoded before the 207 began (then in `X-Sheaf-Items`).
    private let knownCount: Int?
    private let streamed: Bool
    private let encoder: MultiStatusEncoder
    private let requestID: String?
    private let writer: ResponseWriter
    private let metrics: SheafMetrics
    private let histogram: ValueHistogram
    private let upstreamHistogram: ValueHistogram
    private let received: NIODeadline
    private let logger: Logger
    /// Called with the number of items once the 207's last byte is written.
    private let onDone: @Sendable (Int) -> Void
    // Guarded by the writer's lock (all touched inside `writer.append`).
    private var summary = BatchSummary()
    private var deadlineTimer: Scheduled<Void>?
    /// The route's `deadline` from the batch's start, as an instant.
    private let batchDeadline: NIODeadline?
    private var statusCounts = StatusTally()
    private var resends = 0
    /// The run holds this session through its handlers: it is let go when the batch finishes.
    private let fanOut: NIOLockedValueBox<FanOutRun?> = NIOLockedValueBox(nil)
    /// A route with `then` runs two calls per element (indices 2k and 2k+1) and reports them as
    /// one item: whichever settles first waits here for the other (guarded by the writer's lock).
    private let chained: Bool
    private var halves: [Int: (BatchItem, ItemOutcome)] = [:]
    /// Where each second call went (by index), once its values were resolved: the 207 reports
    /// that path, not the `then` template, for a call that was made.
    private let sentPaths = NIOLockedValueBox<[Int: String]>([:])
    /// Where the batch's access log line goes, and what it says so far; bytes of the 207 body
    /// are added up as they are encoded (guarded by the writer's lock).
    private let accessLog: AccessLog?
    private var access: AccessEntry
    private let trace: BatchTrace?
    private let itemBudget: ItemBudget?

    init(route: RouteRuntime, items: consuming [BatchItem], streamed: Bool = false, format: ResponseFormat, requestID: String?,
         writer: ResponseWriter, metrics: SheafMetrics, received: NIODeadline, logger: Logger,
         access: (AccessLog, AccessEntry)? = nil, trace: BatchTrace? = nil, itemBudget: ItemBudget? = nil,
         onDone: @escaping @Sendable (Int) -> Void) {
        self.onDone = onDone
        self.itemBudget = itemBudget
        self.trace = trace
        self.accessLog = access?.0
        self.access = access?.1 ?? AccessEntry()
        self.route = route
        self.streamed = streamed
        self.chained = route.configuration.fanOut?.then != nil
        // Items the client sees: elements, not calls.
        self.knownCount = streamed ? nil : (chained ? items.count / 2 : items.count)
        self.encoder = format.makeEncoder(reporting: route.configuration.responseHeaders,
                                          properties: route.configuration.properties)
        self.requestID = requestID
        self.writer = writer
        self.metrics = metrics
        self.histogram = metrics.itemHistogram(route: route.configuration.name)
        self.upstreamHistogram = metrics.upstreamHistogram(upstream: route.configuration.upstream)
        self.received = received
        self.logger = logger
        metrics.itemsAccepted(items.count)
        let deadline = route.configuration.deadline.map { NIODeadline.now() + $0 }
        self.batchDeadline = deadline
        let run = FanOutRun(items: consume items, transport: route.transport, concurrency: route.configuration.concurrency,
                             ordered: route.configuration.requestOrder,
                             watchdog: FanOutRun.Watchdog(eventLoop: writer.loop),
                             prepare: Self.prepare(trace: trace, chained: chained, sentPaths: sentPaths,
                                                   basePath: route.transport.configuration.endpoint.basePath),
                             policy: route.configuration.policy, budget: itemBudget, streamed: streamed, batchDeadline: deadline,
                             onResult: { [self] index, item, outcome, nanoseconds in
                                 self.settled(index, item, outcome, nanoseconds)
                             }, onFinish: { [self] in
                                 self.finished()
                             })
        fanOut.withLockedValue { $0 = run }
    }

    /// The hook each item's request passes just before it goes: the tracing hook, and on a
    /// `then` route the path of each second call. Nil when neither applies (then no item is
    /// copied for it).
    private static func prepare(trace: BatchTrace?, chained: Bool, sentPaths: NIOLockedValueBox<[Int: String]>,
                                basePath: String) -> FanOutRun.Prepare? {
        guard chained else { return trace.map { trace in { @Sendable index, item, request in trace.itemStarting(index, item, &request) } } }
        return { @Sendable index, item, request in
            trace?.itemStarting(index, item, &request)
            guard index % 2 == 1 else { return }
            let path = request.path.hasPrefix(basePath) ? String(request.path.dropFirst(basePath.count)) : request.path
            sentPaths.withLockedValue { $0[index] = path }
        }
    }

    /// More items of a streamed batch; false: read no more input until `whenInputRoom`'s handler runs.
    func append(_ items: consuming [BatchItem]) -> Bool {
        metrics.itemsAccepted(items.count)
        guard let run = fanOut.withLockedValue({ $0 }) else { return true }
        return run.append(consume items)
    }

    func whenInputRoom(_ handler: @escaping @Sendable () -> Void) {
        fanOut.withLockedValue { $0 }?.whenInputRoom(handler)
    }

    /// A streamed batch has all its items; `problem`: its body went wrong after the 207 began.
    /// `bytesIn`: the body's size, for the access log.
    func endInput(problem: InputProblem? = nil, bytesIn: Int) {
        writer.append { _ in
            summary.inputError = problem
            access.bytesIn = bytesIn
        }
        fanOut.withLockedValue { $0 }?.endInput()
    }

    func run() {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: encoder.contentType)
        if let knownCount { headers.add(name: "x-sheaf-items", value: String(knownCount)) }
        if let requestID { headers.add(name: "x-request-id", value: requestID) }
        writer.start(status: .multiStatus, headers: headers)
        writer.append { out in counted(&out) { encoder.begin(into: &$0) } }
        guard let run = fanOut.withLockedValue({ $0 }) else { return }
        // Memory stays bounded by concurrency, not by batch size, when the client reads slowly.
        writer.onWritabilityChange { writable in
            if writable { run.resume() } else { run.pause() }
        }
        // A client whose unsent output passed the connection's budget: the upstreams hold the
        // bytes (flow control, paused transfers) until it catches up.
        writer.onOutputBudget { isFull in run.updateReading(suspended: isFull) }
        writer.onClientStalled { [logger, metrics, route, streamed] in
            logger.warning("the client took no byte of the 207 for client_timeout; cancelling the batch and closing")
            metrics.clientStalled(route: route.configuration.name)
            run.cancel(status: 499, reason: "the client stopped reading the response for client_timeout")
            // The connection closes: a streamed body's rest will not be read.
            if streamed { run.endInput() }
        }
        writer.onClientGone { [logger, streamed] in
            logger.info("client went away; cancelling the batch")
            run.cancel(status: 499, reason: "the client closed the connection before the batch completed")
            // The rest of a streamed body will not come.
            if streamed { run.endInput() }
        }
        if let deadline = batchDeadline, let text = route.configuration.deadline?.configText {
            let timer = writer.loop.scheduleTask(deadline: deadline) { [logger] in
                logger.info("batch deadline passed; cancelling what is still running", metadata: ["deadline": "\(text)"])
                run.cancel(status: 504, reason: "the batch deadline (\(text)) passed before this item finished")
            }
            writer.append { _ in deadlineTimer = timer }
        }
        run.start()
    }

    private func settled(_ index: Int, _ item: BatchItem, _ outcome: ItemOutcome, _ nanoseconds: UInt64) {
        trace?.itemSettled(index, item, outcome)
        if chained {
            settledHalf(index, item, outcome)
        } else {
            // Without a closure: one capturing the item and the outcome copied both, twice, for
            // every item (issue 13). The writer's lock is held in between.
            var out = writer.beginAppend()
            let before = out.writerIndex
            resends += outcome.resends
            write(item, outcome, into: &out)
            writer.endAppend(out, added: out.writerIndex - before)
        }
        let seconds = SheafMetrics.seconds(nanoseconds: nanoseconds)
        histogram.record(seconds)
        if outcome.attempts > 0 { upstreamHistogram.record(seconds) }
        metrics.itemSettled()
    }

    /// One call of a `then` route's pair: the first to settle waits for the other, and the pair
    /// is written as one element once both have.
    private func settledHalf(_ index: Int, _ item: BatchItem, _ outcome: ItemOutcome) {
        writer.append { out in
            resends += outcome.resends
            let pair = index / 2
            guard let (otherItem, other) = halves.removeValue(forKey: pair) else {
                halves[pair] = (item, outcome)
                return
            }
            let isFirst = index % 2 == 0
            var first = isFirst ? outcome : other
            let second = isFirst ? other : outcome
            let sent = sentPaths.withLockedValue { $0.removeValue(forKey: pair * 2 + 1) }
            first.then = ChainedResult(href: sent ?? (isFirst ? otherItem : item).href, outcome: second)
            // An element is counted once, by its first call's status (the summary and the
            // access log then agree with sheaf_items_total).
            write(isFirst ? item : otherItem, first, into: &out)
        }
    }

    /// Counts `outcome` and writes its element into the 207. Under the writer's lock.
    private func write(_ item: BatchItem, _ outcome: ItemOutcome, into out: inout ByteBuffer) {
        statusCounts.add(outcome.status)
        summary.count(outcome)
        counted(&out) { encoder.item(item, outcome, into: &$0) }
    }

    /// Runs `encode` and adds what it wrote to the access log's byte count. Under the writer's lock.
    private func counted(_ out: inout ByteBuffer, _ encode: (inout ByteBuffer) -> Void) {
        let before = out.writerIndex
        encode(&out)
        access.bytesOut += out.writerIndex - before
    }

    private func finished() {
        var final = BatchSummary()
        var counts: [Int: Int] = [:]
        var resent = 0
        var lost = 0
        var coalesced = 0
        var entry = AccessEntry()
        // The summary is encoded now but sent last: metrics and the access log are recorded
        // first, so a client that has read the 207's end finds its batch counted.
        var end = ByteBuffer()
        writer.append { _ in
            deadlineTimer?.cancel()
            deadlineTimer = nil
            counted(&end) { encoder.end(summary, into: &$0) }
            final = summary
            counts = statusCounts.counts
            resent = resends
            let run = fanOut.withLockedValue { run in
                defer { run = nil }
                return run
            }
            lost = run?.lostItems ?? 0
            coalesced = run?.coalescedItems ?? 0
            entry = access
        }
        let outcome = final.failed == 0 ? "complete" : (final.succeeded == 0 ? "failed" : "partial")
        let elapsed = NIODeadline.now() - received
        trace?.finished(succeeded: final.succeeded, failed: final.failed, outcome: outcome)
        if let accessLog {
            entry.status = 207
            entry.items = final.total
            for (status, count) in counts { entry.count(status: status, times: count) }
            entry.outcome = outcome
            accessLog.record(entry)
        }
        metrics.itemsCounted(route: route.configuration.name, statusCounts: counts)
        metrics.transportTally(upstream: route.configuration.upstream, resends: resent, lost: lost)
        metrics.itemsCoalesced(route: route.configuration.name, count: coalesced)
        metrics.batchFinished(route: route.configuration.name, outcome: outcome,
                              duration: .nanoseconds(elapsed.nanoseconds))
        logger.info("batch done", metadata: [
            "items": "\(final.total)", "succeeded": "\(final.succeeded)", "failed": "\(final.failed)",
            "ms": "\(elapsed.nanoseconds / 1_000_000)",
        ])
        let total = final.total
        writer.write(end)
        writer.finish { [onDone] in onDone(total) }
    }
}
