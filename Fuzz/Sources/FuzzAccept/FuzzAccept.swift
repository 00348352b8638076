import MultiStatus
import CFuzzerDriver
import FuzzSupport

/// libFuzzer entry point: the first byte says whether the bulk request was XML, the rest is an
/// `Accept` header for `MediaType.negotiate`. Checked besides crashes: no Accept mirrors the
/// request's format, NDJSON only when Accept names it, and a range with `q=0` for every type
/// Sheaf writes gives nothing.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAccept(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let requestIsXML = data[0] & 1 == 1
    let accept = String(decoding: UnsafeBufferPointer(start: data + 1, count: size - 1), as: UTF8.self)
    let chosen = MediaType.negotiate(accept: accept, requestIsXML: requestIsXML)
    check(MediaType.negotiate(accept: accept, requestIsXML: requestIsXML) == chosen, "not deterministic")
    if accept.allSatisfy({ $0 == " " || $0 == "\t" }) {
        check(chosen == (requestIsXML ? .xml(mediaType: "application/xml") : .json), "an empty Accept does not mirror")
    }
    if chosen == .ndjson {
        check(accept.lowercased().contains("application/x-ndjson"), "NDJSON chosen without being named")
    }
    // The same header with `*/*;q=0` appended cannot make a type acceptable that was not.
    if chosen == nil {
        check(MediaType.negotiate(accept: accept + ",*/*;q=0", requestIsXML: requestIsXML) == nil,
              "a q=0 wildcard made something acceptable")
    }
    return 0
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzAccept`.
@_cdecl("FuzzAccept_main")
public func fuzzAcceptMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzAccept)
}
