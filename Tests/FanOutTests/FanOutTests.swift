import Dispatch
import FanOut
import NIOConcurrencyHelpers
import NIOCore
import Testing
import Upstream

@Test func schedulerHonoursTheConcurrencyCap() {
    var scheduler = FanOutScheduler(total: 5, concurrency: 2)
    #expect(scheduler.claim() == 0..<2)
    #expect(scheduler.claim().isEmpty)
    #expect(scheduler.settle() == 2..<3)
    #expect(scheduler.settle() == 3..<4)
    #expect(scheduler.settle() == 4..<5)
    #expect(scheduler.settle().isEmpty)
    #expect(!scheduler.isFinished)
    #expect(scheduler.settle().isEmpty)
    #expect(scheduler.isFinished)
}

@Test func schedulerCancelReturnsWhatNeverStarted() {
    var scheduler = FanOutScheduler(total: 10, concurrency: 3)
    _ = scheduler.claim()
    #expect(scheduler.cancel() == 3..<10)
    #expect(scheduler.settle().isEmpty)
    #expect(scheduler.cancel().isEmpty)
}

/// A transport that answers from a queue, out of order, and records the peak of calls in flight.
final class FakeTransport: UpstreamTransport, @unchecked Sendable {
    final class Call: UpstreamCall, @unchecked Sendable {
        let cancelled = NIOLockedValueBox(false)
        let suspended = NIOLockedValueBox(false)
        var onCancel: (() -> Void)?
        func cancel() {
            cancelled.withLockedValue { $0 = true }
            onCancel?()
        }
        func suspendReading() { suspended.withLockedValue { $0 = true } }
        func resumeReading() { suspended.withLockedValue { $0 = false } }
    }

    let configuration = UpstreamConfiguration(name: "fake", endpoint: UpstreamEndpoint(scheme: "http", host: "x", port: 1, basePath: ""))
    let state = NIOLockedValueBox((inFlight: 0, peak: 0, calls: 0))
    let synchronous: Bool
    let hold: Bool
    let queue = DispatchQueue(label: "fake", attributes: .concurrent)
    let held = NIOLockedValueBox<[(Call, @Sendable (UpstreamResult) -> Void)]>([])
    /// Every request sent, in order.
    let sent = NIOLockedValueBox<[UpstreamRequest]>([])

    init(synchronous: Bool = false, hold: Bool = false) {
        self.synchronous = synchronous
        self.hold = hold
    }

    func execute(_ request: UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        sent.withLockedValue { $0.append(request) }
        state.withLockedValue { s in
            s.inFlight += 1
            s.calls += 1
            s.peak = max(s.peak, s.inFlight)
        }
        let call = Call()
        let status = Int(request.path.split(separator: "/").last ?? "200") ?? 200
        let finish: @Sendable (UpstreamResult) -> Void = { [state] result in
            state.withLockedValue { $0.inFlight -= 1 }
            completion(result)
        }
        if hold {
            call.onCancel = { finish(.failure(UpstreamError(.cancelled, "cancelled"))) }
            held.withLockedValue { $0.append((call, finish)) }
        } else if synchronous {
            finish(.success(UpstreamResponse(status: status, headers: [], body: ByteBuffer())))
        } else {
            queue.asyncAfter(deadline: .now() + .microseconds(Int.random(in: 0...500))) {
                finish(.success(UpstreamResponse(status: status, headers: [], body: ByteBuffer())))
            }
        }
        return call
    }

    func shutdown() {}
}

private func items(_ count: Int) -> [BatchItem] {
    (0..<count).map { i in
        if i % 7 == 3 { return BatchItem(id: "\(i)", href: "/bad/\(i)", rejection: "bad url") }
        return BatchItem(id: "\(i)", href: "/i/\(i)", request: UpstreamRequest(method: "GET", path: "/i/\(200 + i % 5)"))
    }
}

func run(_ items: [BatchItem], _ transport: UpstreamTransport, concurrency: Int,
         policy: FanOutPolicy = FanOutPolicy()) async -> [Int: ItemOutcome] {
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let duplicates = NIOLockedValueBox(0)
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: items, transport: transport, concurrency: concurrency, policy: policy, onResult: { index, _, outcome, _ in
            results.withLockedValue {
                if $0[index] != nil { duplicates.withLockedValue { $0 += 1 } }
                $0[index] = outcome
            }
        }, onFinish: { done.resume() })
        run.start()
    }
    #expect(duplicates.withLockedValue { $0 } == 0)
    return results.withLockedValue { $0 }
}

@Test func everyItemSettlesExactlyOnceUnderTheCap() async {
    let transport = FakeTransport()
    let batch = items(2000)
    let results = await run(batch, transport, concurrency: 50)
    #expect(results.count == 2000)
    #expect(transport.state.withLockedValue { $0.peak } <= 50)
    #expect(transport.state.withLockedValue { $0.calls } == batch.filter { $0.request != nil }.count)
    for (index, item) in batch.enumerated() {
        if item.rejection != nil {
            #expect(results[index]?.status == 400)
            #expect(results[index]?.reason == "bad url")
        } else {
            #expect(results[index]?.status == 200 + index % 5)
        }
    }
}

@Test func aTransportThatSettlesSynchronouslyDoesNotRecurse() async {
    let results = await run(items(50_000), FakeTransport(synchronous: true), concurrency: 1)
    #expect(results.count == 50_000)
}

/// The route's deadline reaches every request, so that a retry policy does not wait past it.
@Test func everyRequestCarriesItsBatchsDeadline() async {
    let transport = FakeTransport()
    let deadline = NIODeadline.now() + .seconds(7)
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: items(20), transport: transport, concurrency: 5, batchDeadline: deadline,
                            onResult: { _, _, _, _ in }, onFinish: { done.resume() })
        run.start()
    }
    let sent = transport.sent.withLockedValue { $0 }
    #expect(!sent.isEmpty && sent.allSatisfy { $0.batchDeadline == deadline })
    // With when the batch began: how much of its time an item had when it went.
    #expect(sent.allSatisfy { ($0.batchStarted ?? deadline) < deadline && $0.batchStarted == sent[0].batchStarted })
}

@Test func emptyBatchFinishesAtOnce() async {
    let results = await run([], FakeTransport(), concurrency: 10)
    #expect(results.isEmpty)
}

@Test func cancellingSettlesEveryItemWithTheGivenStatus() async {
    let transport = FakeTransport(hold: true)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = (0..<20).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/\($0)")) }
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 5, onResult: { index, _, outcome, _ in
            results.withLockedValue { $0[index] = outcome }
        }, onFinish: { done.resume() })
        run.start()
        #expect(transport.held.withLockedValue { $0.count } == 5)
        run.cancel(status: 504, reason: "batch deadline passed")
    }
    let final = results.withLockedValue { $0 }
    #expect(final.count == 20)
    #expect(final.values.allSatisfy { $0.status == 504 && $0.reason == "batch deadline passed" })
    #expect(transport.held.withLockedValue { $0.allSatisfy { $0.0.cancelled.withLockedValue { $0 } } })
    #expect(transport.state.withLockedValue { $0.calls } == 5)
}

@Test func pausedSchedulerStartsNothingUntilResumed() {
    var scheduler = FanOutScheduler(total: 6, concurrency: 2)
    #expect(scheduler.claim() == 0..<2)
    scheduler.pause()
    #expect(scheduler.settle().isEmpty)
    #expect(scheduler.settle().isEmpty)
    #expect(scheduler.inFlight == 0)
    #expect(scheduler.resume() == 2..<4)
}

@Test func onlyTheFirstCancellationCounts() async {
    let transport = FakeTransport(hold: true)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = (0..<6).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/\($0)")) }
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 2, onResult: { index, _, outcome, _ in
            results.withLockedValue { $0[index] = outcome }
        }, onFinish: { done.resume() })
        run.start()
        run.cancel(status: 504, reason: "deadline")
        run.cancel(status: 499, reason: "client gone")
    }
    #expect(results.withLockedValue { $0.values.map(\.status) } == Array(repeating: 504, count: 6))
}

/// `attempts` counts sends to the upstream, and the upstream latency histogram counts the items
/// that made one: an item Sheaf refused, one whose value reference found nothing, and ones a
/// cancel stopped before they started made none. One cancelled on the wire made the sends its
/// transport says.
@Test func itemsThatNeverWentOutCountNoAttempts() async {
    let transport = FakeTransport(hold: true)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    var batch = (0..<3).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/\($0)")) }
    batch.append(BatchItem(id: "bad", href: "/bad", rejection: "refused url"))
    batch.append(BatchItem(id: "ref", href: "/ref", dependsOn: [0], resolve: { _ in .failure(DependencyFailure("nothing at /id")) }))
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 3, onResult: { index, _, outcome, _ in
            results.withLockedValue { $0[index] = outcome }
        }, onFinish: { done.resume() })
        run.start()  // 0, 1 and 2 on the wire; the cap holds the rest back
        run.cancel(status: 504, reason: "deadline")
    }
    let outcomes = results.withLockedValue { $0 }
    #expect(outcomes.count == 5)
    #expect((0..<3).map { outcomes[$0]?.attempts } == [1, 1, 1])
    #expect(outcomes[3]?.attempts == 0 && outcomes[4]?.attempts == 0)

    // Refused and unresolvable items settle by themselves, without a cancel.
    let alone = await run([BatchItem(id: "bad", href: "/bad", rejection: "refused url"),
                           BatchItem(id: "ok", href: "/200", request: UpstreamRequest(method: "GET", path: "/200")),
                           BatchItem(id: "ref", href: "/ref", dependsOn: [1], resolve: { _ in .failure(DependencyFailure("nothing")) })],
                          FakeTransport(), concurrency: 2)
    #expect(alone[0]?.status == 400 && alone[0]?.attempts == 0)
    #expect(alone[1]?.status == 200 && alone[1]?.attempts == 1)
    #expect(alone[2]?.status == 424 && alone[2]?.attempts == 0)
}

@Test func aWindowLimitsHowFarAheadItemsStart() {
    var scheduler = FanOutScheduler(total: 10, concurrency: 4, window: 3)
    #expect(scheduler.claim() == 0..<3)
    #expect(scheduler.settle().isEmpty)  // item 1 or 2 finished, but item 0 is not written yet
    #expect(scheduler.wrote(upTo: 1) == 3..<4)
    #expect(scheduler.wrote(upTo: 3) == 4..<5)  // the concurrency cap (3 still in flight) binds now
}

@Test func requestOrderReportsInOrderWithinTheWindow() async {
    let transport = FakeTransport()
    let reported = NIOLockedValueBox<[Int]>([])
    let overlapping = NIOLockedValueBox((now: 0, max: 0))
    let batch = (0..<3000).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/200")) }
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 20, ordered: true, onResult: { index, _, outcome, _ in
            overlapping.withLockedValue { $0.now += 1; $0.max = max($0.max, $0.now) }
            reported.withLockedValue { $0.append(index) }
            overlapping.withLockedValue { $0.now -= 1 }
        }, onFinish: { done.resume() })
        run.start()
    }
    #expect(reported.withLockedValue { $0 } == Array(0..<3000))
    #expect(overlapping.withLockedValue { $0.max } == 1)
    #expect(transport.state.withLockedValue { $0.peak } <= 20)
}

/// A broken transport that answers every call twice.
final class StutteringTransport: UpstreamTransport, @unchecked Sendable {
    final class Call: UpstreamCall, @unchecked Sendable { func cancel() {} }
    let configuration = UpstreamConfiguration(name: "twice", endpoint: UpstreamEndpoint(scheme: "http", host: "x", port: 1, basePath: ""))
    func execute(_ request: UpstreamRequest, for sink: UpstreamResultSink, tag: Int) -> UpstreamCall {
        let completion: @Sendable (UpstreamResult) -> Void = { sink.deliver($0, tag: tag) }
        DispatchQueue.global().async {
            completion(.success(UpstreamResponse(status: 200, headers: [], body: ByteBuffer())))
            completion(.success(UpstreamResponse(status: 201, headers: [], body: ByteBuffer())))
        }
        return Call()
    }
    func shutdown() {}
}

@Test(arguments: [false, true])
func aTransportThatAnswersTwiceStillYieldsOneOutcomePerItem(ordered: Bool) async {
    let counts = NIOLockedValueBox<[Int: Int]>([:])
    let batch = (0..<200).map { BatchItem(id: "\($0)", href: "/\($0)", request: UpstreamRequest(method: "GET", path: "/")) }
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: StutteringTransport(), concurrency: 10, ordered: ordered, onResult: { index, _, _, _ in
            counts.withLockedValue { $0[index, default: 0] += 1 }
        }, onFinish: { done.resume() })
        run.start()
    }
    try? await Task.sleep(nanoseconds: 50_000_000)
    #expect(counts.withLockedValue { $0.count } == 200)
    #expect(counts.withLockedValue { $0.values.allSatisfy { $0 == 1 } })
}

@Test func schedulerOfAStreamedBatchWaitsForInputAndFinishesOnlyAfterItsEnd() {
    var scheduler = FanOutScheduler(total: 0, concurrency: 2, streamed: true)
    #expect(scheduler.claim().isEmpty)
    #expect(scheduler.append(3) == 0..<2)
    #expect(scheduler.settle() == 2..<3)
    #expect(scheduler.settle().isEmpty)
    #expect(scheduler.settle().isEmpty)
    // Everything given so far has settled, but more may come.
    #expect(!scheduler.isFinished)
    #expect(scheduler.unstarted == 0)
    #expect(scheduler.append(1) == 3..<4)
    #expect(scheduler.settle().isEmpty)
    scheduler.endInput()
    #expect(scheduler.isFinished)
}

@Test func schedulerOfAStreamedBatchHandsItemsArrivingAfterACancelBackToSettle() {
    var scheduler = FanOutScheduler(total: 0, concurrency: 2, streamed: true)
    _ = scheduler.append(5)
    #expect(scheduler.cancel() == 2..<5)
    // Arriving after the cancel: never started, they settle at once.
    #expect(scheduler.appendAfterCancel(3) == 5..<8)
    for _ in 0..<8 { _ = scheduler.settle() }
    #expect(!scheduler.isFinished)
    scheduler.endInput()
    #expect(scheduler.isFinished)
}

/// Streams `pieces` of items into a run, each once the run asks for more, and returns every
/// outcome, the most items the run held at once, and how often it asked to wait.
private func streamed(_ pieces: [[BatchItem]], _ transport: UpstreamTransport, concurrency: Int,
                      cancelAfter: Int? = nil) async -> (results: [Int: ItemOutcome], peakHeld: Int, waits: Int) {
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let duplicates = NIOLockedValueBox(0)
    let finishes = NIOLockedValueBox(0)
    let stats = NIOLockedValueBox((peak: 0, waits: 0))
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: [], transport: transport, concurrency: concurrency, streamed: true,
                            onResult: { index, item, outcome, _ in
            #expect(item.id == "\(index)")
            results.withLockedValue {
                if $0[index] != nil { duplicates.withLockedValue { $0 += 1 } }
                $0[index] = outcome
            }
        }, onFinish: {
            finishes.withLockedValue { $0 += 1 }
            done.resume()
        })
        run.start()
        // The feeder: appends a piece, and when told to wait, waits for the run's call.
        let room = DispatchSemaphore(value: 0)
        run.whenInputRoom { room.signal() }
        DispatchQueue.global().async {
            for (number, piece) in pieces.enumerated() {
                if number == cancelAfter { run.cancel(status: 504, reason: "deadline") }
                let more = run.append(piece)
                stats.withLockedValue { $0.peak = max($0.peak, run.itemsHeld) }
                if !more {
                    stats.withLockedValue { $0.waits += 1 }
                    room.wait()
                }
            }
            run.endInput()
        }
    }
    #expect(duplicates.withLockedValue { $0 } == 0)
    #expect(finishes.withLockedValue { $0 } == 1)
    return (results.withLockedValue { $0 }, stats.withLockedValue { $0.peak }, stats.withLockedValue { $0.waits })
}

private func numbered(_ range: Range<Int>) -> [BatchItem] {
    range.map { BatchItem(id: "\($0)", href: "/i/\($0)", request: UpstreamRequest(method: "GET", path: "/i/\(200 + $0 % 3)")) }
}

@Test func aStreamedRunSettlesEveryItemOnceAndHoldsOnlyAWindowOfThem() async {
    let pieces = stride(from: 0, to: 20_000, by: 500).map { numbered($0..<($0 + 500)) }
    let transport = FakeTransport()
    let (results, peakHeld, waits) = await streamed(pieces, transport, concurrency: 20)
    #expect(results.count == 20_000)
    #expect((0..<20_000).allSatisfy { results[$0]?.status == 200 + $0 % 3 })
    #expect(transport.state.withLockedValue { $0.peak } <= 20)
    // Pieces of 500 outrun 20 calls at a time: the run asked the feeder to wait, and never
    // held more than about one window and one piece.
    #expect(waits > 0)
    #expect(peakHeld <= 256 + 500 + 20, "held \(peakHeld) items")
}

@Test func itemsStreamedAfterACancelSettleWithItsStatusAndTheRunEndsAfterItsInput() async {
    let pieces = stride(from: 0, to: 3000, by: 300).map { numbered($0..<($0 + 300)) }
    let (results, _, _) = await streamed(pieces, FakeTransport(), concurrency: 8, cancelAfter: 4)
    #expect(results.count == 3000)
    #expect((1200..<3000).allSatisfy { results[$0]?.status == 504 && results[$0]?.reason == "deadline" })
}

@Test func aStreamedRunWithNoItemsFinishesAtTheEndOfItsInput() async {
    let (results, _, _) = await streamed([], FakeTransport(), concurrency: 4)
    #expect(results.isEmpty)
}

/// A `then` route's pairs: the second call of each depends on the first.
private func pairs(_ range: Range<Int>) -> [BatchItem] {
    range.flatMap { n -> [BatchItem] in
        let first = BatchItem(id: "\(2 * n)", href: "/p/\(n)", request: UpstreamRequest(method: "GET", path: "/p/200"))
        var second = BatchItem(id: "\(2 * n + 1)", href: "/q/\(n)", request: UpstreamRequest(method: "GET", path: "/q/200"))
        second.dependsOn = [2 * n]
        return [first, second]
    }
}

/// A cancel that lands while a dependent is between its start and its gate left it parked for
/// a dependency the cancel had let go: the run never finished, and neither would its 207 (seen
/// once in about 30 suite runs, as a leaked continuation in the test below). Many small runs,
/// each cancelled while its pairs start, make that window likely; a hang fails at the limit.
@Test(.timeLimit(.minutes(1))) func dependentsStartingAsTheRunIsCancelledAllSettle() async {
    for _ in 0..<300 {
        let (results, _, _) = await streamed([pairs(0..<40), pairs(40..<80)], FakeTransport(), concurrency: 16, cancelAfter: 1)
        #expect(results.count == 160)
    }
}

@Test(.timeLimit(.minutes(1))) func pairsStreamedAfterACancelAreLetGoAtOnce() async {
    let pieces = stride(from: 0, to: 10_000, by: 250).map { pairs($0..<($0 + 250)) }
    let (results, peakHeld, _) = await streamed(pieces, FakeTransport(), concurrency: 8, cancelAfter: 2)
    #expect(results.count == 20_000)
    #expect(peakHeld <= 2000, "held \(peakHeld) items after the cancel")
}
