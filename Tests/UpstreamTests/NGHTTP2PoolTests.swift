import CNGHTTP2
import Testing

/// The allocator each HTTP/2 session uses (CNGHTTP2/pool.h), through the `nghttp2_mem` calls
/// libnghttp2 makes.
@Suite struct NGHTTP2PoolTests {
    private func withPool(budget: Int, _ body: (UnsafeMutablePointer<sheaf_nghttp2_pool>) throws -> Void) rethrows {
        let pool = sheaf_nghttp2_pool_create(budget)!
        defer { sheaf_nghttp2_pool_destroy(pool) }
        try body(pool)
    }

    /// Every size nghttp2 may ask for gets a block it can fill, and a freed block is handed out
    /// again for the next request of its size class.
    @Test(arguments: [0, 1, 31, 32, 33, 64, 65, 200, 2048, 2049, 4095, 4096, 4097, 100_000])
    func blocksHoldWhatWasAskedAndComeBack(size: Int) {
        withPool(budget: 1 << 20) { pool in
            let mem = pool.pointee.mem
            let first = mem.malloc(size, mem.mem_user_data)!
            #expect(Int(bitPattern: first) % 16 == 0)  // malloc's alignment, kept by the header
            // The smallest class that holds it: an off-by-one at a class edge shows here.
            let expected = size <= 4096 ? max(32, 1 << (Int.bitWidth - (max(size, 1) - 1).leadingZeroBitCount)) : size
            #expect(sheaf_pool_usable(first) == (size <= 1 ? 32 : expected))
            memset(first, 0xAB, size)
            mem.free(first, mem.mem_user_data)
            let second = mem.malloc(size, mem.mem_user_data)!
            if size <= 4096 {
                #expect(second == first)  // reused from the free list
                #expect(sheaf_nghttp2_pool_cached(pool) == 0)
            }
            memset(second, 0xCD, size)
            mem.free(second, mem.mem_user_data)
        }
    }

    /// Every size up to past the largest class gets the smallest class that holds it, counted
    /// here the plain way (doubling from 32), not the pool's way (the size's bit length).
    @Test func everySizeGetsTheSmallestClassThatHoldsIt() {
        withPool(budget: 0) { pool in
            let mem = pool.pointee.mem
            for size in 0...5000 {
                var expected = 32
                while expected < size && expected <= 4096 { expected *= 2 }
                let block = mem.malloc(size, mem.mem_user_data)!
                let usable = sheaf_pool_usable(block)
                #expect(usable == (expected > 4096 ? size : expected), "size \(size)")
                mem.free(block, mem.mem_user_data)
                if usable != (expected > 4096 ? size : expected) { return }
            }
        }
    }

    /// calloc zeroes a reused, dirty block; realloc keeps the contents across classes and into a
    /// block of its own.
    @Test func callocZeroesAndReallocKeepsContents() {
        withPool(budget: 1 << 20) { pool in
            let mem = pool.pointee.mem
            let dirty = mem.malloc(64, mem.mem_user_data)!
            memset(dirty, 0xFF, 64)
            mem.free(dirty, mem.mem_user_data)
            let zeroed = mem.calloc(8, 8, mem.mem_user_data)!
            #expect(zeroed == dirty)
            #expect(UnsafeRawBufferPointer(start: zeroed, count: 64).allSatisfy { $0 == 0 })
            mem.free(zeroed, mem.mem_user_data)

            var block = mem.malloc(10, mem.mem_user_data)!
            for i in 0..<10 { block.storeBytes(of: UInt8(i), toByteOffset: i, as: UInt8.self) }
            for size in [20, 300, 5000, 70_000, 40] {
                block = mem.realloc(block, size, mem.mem_user_data)!
                #expect((0..<10).allSatisfy { block.load(fromByteOffset: $0, as: UInt8.self) == UInt8($0) })
                memset(block + 10, 0x11, size - 10)
            }
            mem.free(block, mem.mem_user_data)
            #expect(mem.calloc(Int.max, 4, mem.mem_user_data) == nil)  // count × size overflows
            #expect(mem.malloc(Int(bitPattern: UInt(UInt.max - 8)), mem.mem_user_data) == nil)  // size + header overflows
        }
    }

    /// The pool keeps at most its budget in free blocks (headers counted), and a trim gives
    /// back the largest first, down to `keep`.
    @Test func freeBlocksStayWithinTheBudgetAndTrimGivesThemBack() {
        let held1024 = 1024 + 16, held64 = 64 + 16
        withPool(budget: 4 * held1024 + 2 * held64) { pool in
            let mem = pool.pointee.mem
            let large = (0..<10).map { _ in mem.malloc(1000, mem.mem_user_data)! }  // 1024-byte class
            let small = (0..<2).map { _ in mem.malloc(50, mem.mem_user_data)! }  // 64-byte class
            for block in small + large { mem.free(block, mem.mem_user_data) }
            #expect(sheaf_nghttp2_pool_cached(pool) == 4 * held1024 + 2 * held64)
            sheaf_nghttp2_pool_trim(pool, 2 * held64)
            #expect(sheaf_nghttp2_pool_cached(pool) == 2 * held64)  // the 1024-byte blocks went first
            #expect(mem.malloc(50, mem.mem_user_data) == small[1])  // the small ones stayed
            sheaf_nghttp2_pool_trim(pool, 0)
            #expect(sheaf_nghttp2_pool_cached(pool) == 0)
        }
    }

    /// A large block shrunk to a class size moves into a class block (it does not pin the large
    /// allocation); one shrunk but still large stays where it is.
    @Test func aShrunkLargeBlockMovesToItsClass() {
        withPool(budget: 1 << 20) { pool in
            let mem = pool.pointee.mem
            let large = mem.malloc(100_000, mem.mem_user_data)!
            memset(large, 0x5A, 100_000)
            let stillLarge = mem.realloc(large, 50_000, mem.mem_user_data)!
            #expect(stillLarge == large)
            let small = mem.realloc(stillLarge, 100, mem.mem_user_data)!
            #expect(sheaf_pool_usable(small) == 128)
            #expect(UnsafeRawBufferPointer(start: small, count: 100).allSatisfy { $0 == 0x5A })
            mem.free(small, mem.mem_user_data)
        }
    }
}
