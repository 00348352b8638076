extension String {
    /// Calls `body` with the string's UTF-8 bytes, read in place when the string holds them
    /// contiguously (native and small strings; on Linux, all of them). `withUTF8` needs a
    /// mutable copy of the string, a retain and a release per call, on paths that run several
    /// times per item (issue 13).
    @inlinable @inline(__always)
    public func withUTF8Bytes<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        if let result = utf8.withContiguousStorageIfAvailable({ body($0) }) { return result }
        var copy = self
        return copy.withUTF8 { body($0) }
    }
}
