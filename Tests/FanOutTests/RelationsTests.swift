import FanOut
import NIOConcurrencyHelpers
import NIOCore
import Testing
import Upstream

/// An item answered with `status` by FakeTransport (it answers the last path segment).
private func item(_ id: String, _ status: Int, dependsOn: [Int] = [], sameAs: Int? = nil) -> BatchItem {
    var item = BatchItem(id: id, href: "/\(id)", request: UpstreamRequest(method: "GET", path: "/\(id)/\(status)"))
    item.dependsOn = dependsOn
    item.sameAs = sameAs
    return item
}

@Test(arguments: [1, 4])
func dependentsStartOnlyAfterTheirDependenciesSucceed(concurrency: Int) async {
    let transport = FakeTransport()
    // A diamond: 0 → (1, 2) → 3; 4 depends on 3 too.
    let batch = [item("a", 200), item("b", 201, dependsOn: [0]), item("c", 204, dependsOn: [0]),
                 item("d", 200, dependsOn: [1, 2]), item("e", 200, dependsOn: [3])]
    let results = await run(batch, transport, concurrency: concurrency)
    #expect(results.mapValues(\.status) == [0: 200, 1: 201, 2: 204, 3: 200, 4: 200])
    let order = transport.sent.withLockedValue { $0.map(\.path) }
    func position(_ id: String) -> Int { order.firstIndex { $0.hasPrefix("/\(id)/") }! }
    #expect(position("a") < position("b") && position("a") < position("c"))
    #expect(position("b") < position("d") && position("c") < position("d") && position("d") < position("e"))
}

@Test func aFailedDependencyMakesItsDependentsAndTheirsFailedDependency() async {
    let transport = FakeTransport()
    let batch = [item("a", 503), item("b", 200, dependsOn: [0]), item("c", 200, dependsOn: [1]), item("d", 200)]
    let results = await run(batch, transport, concurrency: 2)
    #expect(results.mapValues(\.status) == [0: 503, 1: 424, 2: 424, 3: 200])
    #expect(results[1]?.reason == "not sent: dependency \"a\" ended 503")
    #expect(results[2]?.reason == "not sent: dependency \"b\" ended 424")
    #expect(transport.sent.withLockedValue { $0.map(\.path) }.sorted() == ["/a/503", "/d/200"])
}

@Test func dependsOnSuccessWidensWhatADependencyMayEndWith() async {
    let policy = FanOutPolicy(dependencySuccess: StatusSet(classes: [2], codes: [404]))
    let results = await run([item("a", 404), item("b", 200, dependsOn: [0])], FakeTransport(), concurrency: 2, policy: policy)
    #expect(results.mapValues(\.status) == [0: 404, 1: 200])
}

@Test func aResolverBuildsTheRequestFromTheDependencysAnswer() async {
    let transport = FakeTransport()
    var dependent = BatchItem(id: "b", href: "/b", dependsOn: [0]) { outcomes in
        guard let body = outcomes.first?.body else { return .failure(DependencyFailure("no body")) }
        return .success(UpstreamRequest(method: "GET", path: "/from-\(body.readableBytes)/200"))
    }
    dependent.dependsOn = [0]
    var refused = BatchItem(id: "c", href: "/c", dependsOn: [0]) { _ in .failure(DependencyFailure("pointer /x found nothing")) }
    refused.dependsOn = [0]
    let results = await run([item("a", 200), dependent, refused], transport, concurrency: 3)
    #expect(results.mapValues(\.status) == [0: 200, 1: 200, 2: 424])
    #expect(results[2]?.reason == "pointer /x found nothing")
    #expect(transport.sent.withLockedValue { $0.map(\.path) }.contains("/from-0/200"))
}

@Test func stopOnErrorSendsNothingAfterTheFirstFailure() async {
    let transport = FakeTransport(synchronous: true)
    let batch = [item("a", 200), item("b", 500), item("c", 200), item("d", 200)]
    let results = await run(batch, transport, concurrency: 1, policy: FanOutPolicy(stopOnError: true))
    #expect(results.mapValues(\.status) == [0: 200, 1: 500, 2: 424, 3: 424])
    #expect(results[2]?.reason == "not attempted: item \"b\" failed (500)")
    #expect(transport.sent.withLockedValue { $0.count } == 2)
}

@Test func stopOnErrorLetsItemsInFlightFinish() async {
    let transport = FakeTransport(hold: true)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = [item("a", 500), item("b", 200), item("c", 200)]
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 2, policy: FanOutPolicy(stopOnError: true),
                            onResult: { index, _, outcome, _ in results.withLockedValue { $0[index] = outcome } },
                            onFinish: { done.resume() })
        run.start()
        let held = transport.held.withLockedValue { $0 }
        #expect(held.count == 2)
        held[0].1(.success(UpstreamResponse(status: 500, headers: [], body: ByteBuffer())))  // a fails: c is not sent
        held[1].1(.success(UpstreamResponse(status: 200, headers: [], body: ByteBuffer())))  // b, in flight, finishes
    }
    #expect(results.withLockedValue { $0.mapValues(\.status) } == [0: 500, 1: 200, 2: 424])
    #expect(transport.sent.withLockedValue { $0.count } == 2)
}

@Test func duplicatesMakeOneCallAndAllReportItsOutcome() async {
    let transport = FakeTransport()
    let batch = [item("a", 200), item("b", 404), item("a2", 200, sameAs: 0), item("a3", 200, sameAs: 0), item("b2", 404, sameAs: 1)]
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let coalesced = NIOLockedValueBox(0)
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let box = NIOLockedValueBox<FanOutRun?>(nil)
        let run = FanOutRun(items: batch, transport: transport, concurrency: 5,
                            onResult: { index, _, outcome, _ in results.withLockedValue { $0[index] = outcome } },
                            onFinish: {
                                coalesced.withLockedValue { $0 = box.withLockedValue { $0 }?.coalescedItems ?? -1 }
                                done.resume()
                            })
        box.withLockedValue { $0 = run }
        run.start()
    }
    #expect(results.withLockedValue { $0.mapValues(\.status) } == [0: 200, 1: 404, 2: 200, 3: 200, 4: 404])
    #expect(transport.sent.withLockedValue { $0.count } == 2)
    #expect(coalesced.withLockedValue { $0 } == 3)
}

@Test func cancellingSettlesItemsWaitingForOthers() async {
    let transport = FakeTransport(hold: true)
    let results = NIOLockedValueBox<[Int: ItemOutcome]>([:])
    let batch = [item("a", 200), item("b", 200, dependsOn: [0]), item("a2", 200, sameAs: 0), item("c", 200)]
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        let run = FanOutRun(items: batch, transport: transport, concurrency: 4,
                            onResult: { index, _, outcome, _ in results.withLockedValue { $0[index] = outcome } },
                            onFinish: { done.resume() })
        run.start()
        run.cancel(status: 499, reason: "client gone")
    }
    #expect(results.withLockedValue { $0.mapValues(\.status) } == [0: 499, 1: 499, 2: 499, 3: 499])
}

@Test func aLongChainOfFailuresSettlesWithoutDeepRecursion() async {
    var batch = [item("0", 500)]
    for i in 1..<20_000 { batch.append(item("\(i)", 200, dependsOn: [i - 1])) }
    let results = await run(batch, FakeTransport(synchronous: true), concurrency: 100)
    #expect(results.count == 20_000)
    #expect(results.values.filter { $0.status == 424 }.count == 19_999)
}

@Test func theProcessBudgetCapsItemsInFlightAcrossBatchesWhichTakeTurns() async {
    let transport = FakeTransport()
    let budget = ItemBudget(limit: 4)
    let first = (0..<300).map { BatchItem(id: "a\($0)", href: "/a\($0)", request: UpstreamRequest(method: "GET", path: "/a\($0)/200")) }
    let second = (0..<30).map { BatchItem(id: "b\($0)", href: "/b\($0)", request: UpstreamRequest(method: "GET", path: "/b\($0)/200")) }
    let finishedAt = NIOLockedValueBox<[String: Int]>([:])
    await withTaskGroup(of: Void.self) { group in
        for (name, batch) in [("a", first), ("b", second)] {
            group.addTask {
                // Held until it finishes, as a BatchSession holds its run.
                let keep = NIOLockedValueBox<FanOutRun?>(nil)
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    let run = FanOutRun(items: batch, transport: transport, concurrency: 100, budget: budget,
                                        onResult: { _, _, _, _ in },
                                        onFinish: {
                                            finishedAt.withLockedValue { $0[name] = transport.sent.withLockedValue { $0.count } }
                                            done.resume()
                                        })
                    keep.withLockedValue { $0 = run }
                    run.start()
                }
                keep.withLockedValue { $0 = nil }
            }
        }
    }
    #expect(transport.state.withLockedValue { $0.peak } <= 4)
    #expect(transport.sent.withLockedValue { $0.count } == 330)
    #expect(budget.inUse == 0)
    // The small batch was not held back until the big one ended: they took turns.
    #expect((finishedAt.withLockedValue { $0["b"] } ?? 330) < 300)
}
