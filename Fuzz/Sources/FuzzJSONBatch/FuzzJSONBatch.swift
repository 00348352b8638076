import BatchInput
import Codecs
import FanOut
import CFuzzerDriver
import FuzzSupport
import NIOCore

/// libFuzzer entry point for both JSON batch forms. The first byte picks the form, the route
/// template, the base path, coalescing, a request id and the limits; the rest is the body.
/// Checked besides crashes: what a decoder accepts keeps the rules every batch keeps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSONBatch(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let options = data[0]
    var body = ByteBuffer()
    body.writeBytes(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let o = BatchOptions(options)
    let items: [BatchItem]
    var perElement = 1
    do {
        if options & 0x01 == 0 {
            let template = makeTemplate(Int(options >> 6))
            if template.then != nil { perElement = 2 }
            items = try JSONBatchDecoder.decode(body, template: template, basePath: o.basePath, maxItems: o.maxItems,
                                                headers: o.headers, coalesce: o.coalesce, limits: o.limits)
        } else {
            items = try JSONBatchDecoder.decodeExplicit(body, basePath: o.basePath, maxItems: o.maxItems,
                                                        headers: o.headers, coalesce: o.coalesce, limits: o.limits)
        }
    } catch {
        check((400...499).contains(error.status), "status \(error.status) for a bad batch")
        return 0
    }
    checkBatch(items, maxItems: o.maxItems * perElement, basePath: o.basePath)
    return 0
}

/// Route templates as a config would declare them. Made per input, not kept in a global:
/// LeakSanitizer cannot follow the pointers Swift keeps in some enum payloads (`then`'s parsed
/// references), so a global holding them is reported as a leak.
func makeTemplate(_ index: Int) -> FanOutTemplate {
    switch index {
    case 0:
        return FanOutTemplate(items: try! JSONPointer("/ids"), method: "GET", path: try! PathTemplate("/users/{item}"))
    case 1:
        return FanOutTemplate(items: try! JSONPointer("/users"), method: "DELETE", path: try! PathTemplate("/orgs/{org}/users/{id}?v=1"),
                              headers: [("accept", "application/json")])
    case 2:
        return FanOutTemplate(items: try! JSONPointer(""), method: "GET", path: try! PathTemplate("/u/{item}"),
                              then: try! ChainTemplate(method: "GET", path: "/accounts/{/account_id}/{/a~1b/0}"))
    default:
        return FanOutTemplate(items: try! JSONPointer("/a/0/b"), method: "PUT", path: try! PathTemplate("/x/{item}/y"))
    }
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzJSONBatch`.
@_cdecl("FuzzJSONBatch_main")
public func fuzzJSONBatchMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    return sheaf_fuzz_main(argc, argv, fuzzJSONBatch)
}
