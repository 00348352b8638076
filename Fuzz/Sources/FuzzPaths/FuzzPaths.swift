import BatchInput
import Codecs
import CFuzzerDriver
import FuzzSupport

/// libFuzzer entry point for the path rules: the input's first line is a route's path template
/// (`PathTemplate`, and as a `then` path `ChainTemplate`), the rest an array element to expand
/// it with (JSON, or else the text as a string) and an item url for `ItemPath`. Checked besides
/// crashes: a resolved item path is normalized (resolving it again changes nothing), stays under
/// the base path and has no dot segment even once percent-decoded; an expanded template has none
/// either; a refused url's href is a printable absolute path.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPaths(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let lines = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
    let templateText = String(lines[0])
    let rest = lines.count > 1 ? String(lines[1]) : ""

    switch ItemPath.resolve(rest, basePath: "/base") {
    case .success(let resolved):
        check(resolved.upstreamPath == "/base" + resolved.href, "upstream path \(resolved.upstreamPath) for href \(resolved.href)")
        check(resolved.href.hasPrefix("/") && !resolved.href.hasPrefix("//"), "href \(resolved.href)")
        checkNoDotSegments(resolved.href)
        check(!resolved.href.utf8.contains { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: "\\") }, "raw byte in href \(resolved.href)")
        check((try? ItemPath.resolve(resolved.href, basePath: "/base").get()) == resolved, "resolving \(resolved.href) again changed it")
    case .failure:
        let href = ItemPath.reportableHref(rest)
        check(href.hasPrefix("/") && !href.utf8.contains { $0 <= 0x20 || $0 >= 0x7F }, "reportable href \(href)")
    }

    if let template = try? PathTemplate(templateText) {
        let element = (try? JSONParser.parse(rest)) ?? .string(rest)
        if case .success(let path) = template.expand(element, at: "/ids/0") {
            check(path.hasPrefix("/") && !path.hasPrefix("//"), "expanded path \(path)")
            checkNoDotSegments(path)
        }
    }
    _ = try? ChainTemplate(method: "GET", path: templateText)
    return 0
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzPaths`.
@_cdecl("FuzzPaths_main")
public func fuzzPathsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzPaths)
}
