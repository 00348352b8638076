import Dispatch
import NIOConcurrencyHelpers
@testable import Server
import Testing

/// Giving freed heap back to the system (`malloc_trim`) after big batches, only while Sheaf is quiet.
@Suite struct MemoryReturnTests {
    /// A batch that starts during the pause after a big one puts the trim off: trimming under
    /// load walks the heap while batches need it. The trim is owed to the next quiet moment.
    @Test func theTrimWaitsUntilSheafIsQuiet() async throws {
        let busy = NIOLockedValueBox(false)
        let trims = NIOLockedValueBox(0)
        let memory = MemoryReturn(threshold: 10, delay: .milliseconds(50), isIdle: { !busy.withLockedValue { $0 } },
                                  trim: { trims.withLockedValue { $0 += 1 } })
        memory.batchEnded(items: 10, idle: true)
        busy.withLockedValue { $0 = true }  // the next batch began meanwhile
        try await Task.sleep(for: .milliseconds(300))
        #expect(trims.withLockedValue { $0 } == 0)

        busy.withLockedValue { $0 = false }
        memory.batchEnded(items: 1, idle: true)  // a small batch ends: the big one's trim is still owed
        try await Task.sleep(for: .milliseconds(300))
        #expect(trims.withLockedValue { $0 } == 1)

        memory.batchEnded(items: 1, idle: true)  // below the threshold since the trim: none
        try await Task.sleep(for: .milliseconds(300))
        #expect(trims.withLockedValue { $0 } == 1)
    }
}
