#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
/// Upstream response header names as Swift strings, without allocating for the common ones:
/// every upstream response repeats the same handful of names.
enum HeaderName {
    private static let common: [String] = [
        "content-type", "content-length", "date", "server", "location", "etag", "last-modified",
        "cache-control", "vary", "expires", "set-cookie", "content-encoding", "x-request-id",
        "retry-after", "connection", "keep-alive", "transfer-encoding", "accept-ranges",
    ]
    private static let commonBytes: [[UInt8]] = common.map { Array($0.utf8) }

    /// `bytes` must already be lower-case.
    static func intern(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        for (index, candidate) in commonBytes.enumerated() where candidate.count == bytes.count {
            if candidate.withUnsafeBufferPointer({ memcmp($0.baseAddress!, bytes.baseAddress!, bytes.count) == 0 }) {
                return common[index]
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
