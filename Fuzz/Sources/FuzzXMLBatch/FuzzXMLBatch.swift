import BatchInput
import FanOut
import CFuzzerDriver
import FuzzSupport
import NIOCore

/// libFuzzer entry point for the XML batch decoder (libxml2's streaming reader). The first byte
/// picks the base path, coalescing, a request id and the limits; the rest is the document.
/// Checked besides crashes: what the decoder accepts keeps the rules every batch keeps.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXMLBatch(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let options = data[0]
    var body = ByteBuffer()
    body.writeBytes(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let o = BatchOptions(options)
    do {
        let items = try XMLBatchDecoder.decode(body, basePath: o.basePath, maxItems: o.maxItems, headers: o.headers,
                                               coalesce: o.coalesce, limits: o.limits)
        checkBatch(items, maxItems: o.maxItems, basePath: o.basePath)
    } catch {
        check((400...499).contains(error.status), "status \(error.status) for a bad batch")
    }
    return 0
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzXMLBatch`.
@_cdecl("FuzzXMLBatch_main")
public func fuzzXMLBatchMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzXMLBatch)
}
