import BatchInput
import FanOut

// What several fuzz targets check. A broken invariant is a crash, so libFuzzer keeps the input.

/// Stops the process (libFuzzer saves the input) when `condition` is false.
public func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(message())") }
}

/// The rules every decoded batch keeps: within its item limit, unique ids and hrefs, paths under
/// the base path without dot segments even once decoded, dependencies and coalescing pointing
/// back, header values without CR, LF or NUL.
public func checkBatch(_ items: [BatchItem], maxItems: Int, basePath: String) {
    check(items.count <= maxItems, "\(items.count) items, more than \(maxItems)")
    check(Set(items.map(\.id)).count == items.count, "duplicate ids")
    // A `then` call is reported inside its first call's item, under the template's text.
    let reported = items.filter { !$0.id.hasSuffix(".then") }
    check(Set(reported.map(\.href)).count == reported.count, "duplicate hrefs")
    for (index, item) in items.enumerated() {
        check(item.href.hasPrefix("/"), "href \(item.href) is not an absolute path")
        check(item.dependsOn.allSatisfy { $0 < index }, "item \(index) depends on a later item")
        if let leader = item.sameAs {
            check(leader < index && items[leader].request?.path == item.request?.path, "coalesced with a different call")
        }
        guard let request = item.request else { continue }
        check(request.path.hasPrefix(basePath + "/"), "path \(request.path) leaves the base path")
        checkNoDotSegments(String(request.path.dropFirst(basePath.count)))
        for header in request.headers {
            check(!header.value.utf8.contains { $0 == 0x0A || $0 == 0x0D || $0 == 0 }, "header value with CR, LF or NUL")
        }
    }
}

/// No `.` or `..` segment, also after one percent-decoding with `/` and `\` as separators (what
/// nginx does before it resolves dot segments).
public func checkNoDotSegments(_ path: String) {
    let pathPart = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
    for text in [pathPart, percentDecoded(pathPart)] {
        let segments = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "/" || $0 == "\\" })
        check(!segments.contains { $0 == "." || $0 == ".." }, "path \(path) has a dot segment (as \(text))")
    }
}

public func percentDecoded(_ text: String) -> String {
    var out: [UInt8] = []
    let bytes = Array(text.utf8)
    var i = 0
    while i < bytes.count {
        if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count, let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2]) {
            out.append(high << 4 | low)
            i += 3
        } else {
            out.append(bytes[i])
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

public func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case 0x30...0x39: return byte - 0x30
    case 0x41...0x46: return byte - 0x41 + 10
    case 0x61...0x66: return byte - 0x61 + 10
    default: return nil
    }
}


/// What the first input byte of the batch targets chooses: bit 1 a base path, bit 2 shared
/// headers with a request id, bit 3 coalescing, bit 4 at most 3 items, bit 5 small body and
/// depth limits (bits 0, 6 and 7 are the target's own).
public struct BatchOptions {
    public var basePath: String
    public var headers: BatchHeaders
    public var coalesce: Bool
    public var maxItems: Int
    public var limits: InputLimits

    public init(_ byte: UInt8) {
        basePath = byte & 0x02 != 0 ? "/api" : ""
        headers = byte & 0x04 != 0 ? BatchHeaders(inherited: [("authorization", "x")], requestID: "r1") : BatchHeaders()
        coalesce = byte & 0x08 != 0
        maxItems = byte & 0x10 != 0 ? 3 : 50
        let small = byte & 0x20 != 0
        limits = InputLimits(maxItemBodyBytes: small ? 8 : Int.max, maxDepth: small ? 4 : 64)
    }
}
