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
final class BatchSession: @unchecked Sendable {
    private let route: RouteRuntime
    private let items: [BatchItem]
    private let encoder: MultiStatusEncoder
    private let requestID: String?
    private let writer: ResponseWriter
    private let metrics: SheafMetrics
    private let histogram: DurationHistogram
    private let upstreamHistogram: DurationHistogram
    private let received: NIODeadline
    private let logger: Logger
    private let onDone: @Sendable () -> Void
    // Guarded by the writer's lock (all touched inside `writer.append`).
    private var summary = BatchSummary()
    private var deadlineTimer: Scheduled<Void>?
    private var statusCounts: [Int: Int] = [:]
    private var resends = 0
    private var fanOut: FanOutRun?
    /// A route with `then` runs two calls per element (indices 2k and 2k+1) and reports them as
    /// one item: whichever settles first waits here for the other (guarded by the writer's lock).
    private let chained: Bool
    private var halves: [Int: ItemOutcome] = [:]
    /// Items the client sees: elements, not calls.
    private var reportedCount: Int { chained ? items.count / 2 : items.count }
    /// Where the batch's access log line goes, and what it says so far; bytes of the 207 body
    /// are added up as they are encoded (guarded by the writer's lock).
    private let accessLog: AccessLog?
    private var access: AccessEntry
    private let trace: BatchTrace?
    private let itemBudget: ItemBudget?

    init(route: RouteRuntime, items: [BatchItem], format: ResponseFormat, requestID: String?, writer: ResponseWriter,
         metrics: SheafMetrics, received: NIODeadline, logger: Logger, access: (AccessLog, AccessEntry)? = nil,
         trace: BatchTrace? = nil, itemBudget: ItemBudget? = nil, onDone: @escaping @Sendable () -> Void) {
        self.onDone = onDone
        self.itemBudget = itemBudget
        self.trace = trace
        self.accessLog = access?.0
        self.access = access?.1 ?? AccessEntry()
        self.route = route
        self.items = items
        self.chained = route.configuration.fanOut?.then != nil
        self.encoder = format.makeEncoder(reporting: route.configuration.responseHeaders,
                                          properties: route.configuration.properties)
        self.requestID = requestID
        self.writer = writer
        self.metrics = metrics
        self.histogram = metrics.itemHistogram(route: route.configuration.name)
        self.upstreamHistogram = metrics.upstreamHistogram(upstream: route.configuration.upstream)
        self.received = received
        self.logger = logger
    }

    func run() {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: encoder.contentType)
        headers.add(name: "x-sheaf-items", value: String(reportedCount))
        if let requestID { headers.add(name: "x-request-id", value: requestID) }
        writer.start(status: .multiStatus, headers: headers)
        writer.append { out in counted(&out) { encoder.begin(into: &$0) } }
        metrics.itemsAccepted(items.count)

        let run = FanOutRun(items: items, transport: route.transport, concurrency: route.configuration.concurrency,
                            ordered: route.configuration.requestOrder,
                            watchdog: FanOutRun.Watchdog(eventLoop: writer.loop),
                            prepare: trace.map { trace in { [items] index, request in trace.itemStarting(index, items[index], &request) } },
                            policy: route.configuration.policy, budget: itemBudget,
                            onResult: { [self] index, outcome, nanoseconds in
                                self.settled(index, outcome, nanoseconds)
                            }, onFinish: { [self] in
                                self.finished()
                            })
        // Memory stays bounded by concurrency, not by batch size, when the client reads slowly.
        writer.onWritabilityChange { writable in
            if writable { run.resume() } else { run.pause() }
        }
        // A client whose unsent output passed the connection's budget: the upstreams hold the
        // bytes (flow control, paused transfers) until it catches up.
        writer.onOutputBudget { isFull in run.updateReading(suspended: isFull) }
        writer.onClientStalled { [logger, metrics, route] in
            logger.warning("the client took no byte of the 207 for client_timeout; cancelling the batch and closing")
            metrics.clientStalled(route: route.configuration.name)
            run.cancel(status: 499, reason: "the client stopped reading the response for client_timeout")
        }
        writer.onClientGone { [logger] in
            logger.info("client went away; cancelling the batch")
            run.cancel(status: 499, reason: "the client closed the connection before the batch completed")
        }
        if let deadline = route.configuration.deadline {
            let text = deadline.configText
            let timer = writer.loop.scheduleTask(in: deadline) { [logger] in
                logger.info("batch deadline passed; cancelling what is still running", metadata: ["deadline": "\(text)"])
                run.cancel(status: 504, reason: "the batch deadline (\(text)) passed before this item finished")
            }
            writer.append { _ in deadlineTimer = timer }
        }
        writer.append { _ in self.fanOut = run }
        run.start()
    }

    private func settled(_ index: Int, _ outcome: ItemOutcome, _ nanoseconds: UInt64) {
        let item = items[index]
        trace?.itemSettled(index, item, outcome)
        writer.append { out in
            if outcome.attempts > 1 { resends += outcome.attempts - 1 }
            if chained {
                let pair = index / 2
                guard let other = halves.removeValue(forKey: pair) else {
                    halves[pair] = outcome
                    return
                }
                var first = index % 2 == 0 ? outcome : other
                let second = index % 2 == 0 ? other : outcome
                first.then = ChainedResult(href: items[2 * pair + 1].href, outcome: second)
                let element = items[2 * pair]
                // An element is counted once, by its first call's status (the summary and the
                // access log then agree with sheaf_items_total).
                statusCounts[first.status, default: 0] += 1
                summary.count(first)
                counted(&out) { encoder.item(element, first, into: &$0) }
                return
            }
            statusCounts[outcome.status, default: 0] += 1
            summary.count(outcome)
            counted(&out) { encoder.item(item, outcome, into: &$0) }
        }
        histogram.recordNanoseconds(Int64(nanoseconds))
        if outcome.attempts > 0 { upstreamHistogram.recordNanoseconds(Int64(nanoseconds)) }
        metrics.itemSettled()
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
        writer.append { out in
            deadlineTimer?.cancel()
            deadlineTimer = nil
            counted(&out) { encoder.end(summary, into: &$0) }
            final = summary
            counts = statusCounts
            resent = resends
            lost = fanOut?.lostItems ?? 0
            coalesced = fanOut?.coalescedItems ?? 0
            fanOut = nil
            entry = access
        }
        writer.finish(written: onDone)
        let outcome = final.failed == 0 ? "complete" : (final.succeeded == 0 ? "failed" : "partial")
        let elapsed = NIODeadline.now() - received
        trace?.finished(succeeded: final.succeeded, failed: final.failed, outcome: outcome)
        if let accessLog {
            entry.status = 207
            entry.items = reportedCount
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
    }
}
