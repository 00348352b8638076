import Codecs
import CFuzzerDriver
import FuzzSupport

/// libFuzzer entry point: any bytes into `JSONParser`. Besides not crashing, four things must
/// hold for every input: validating agrees with parsing, what the writer makes of a parsed value
/// parses back to the same value, counting an array stops only past its limit, and the
/// streaming array reader agrees with the parser.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSONParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let parsed = try? JSONParser.parse(bytes)
    check(JSONParser.isValid(bytes) == (parsed != nil), "isValid and parse disagree")
    if let parsed {
        check((try? JSONParser.parse(parsed.serialized)) == parsed, "writing and parsing again changed the value")
    }
    do {
        let counted = try JSONParser.parse(bytes, countingArrayAt: [], upTo: 3)
        check(counted == parsed, "counting changed the value")
    } catch is JSONParser.TooManyElements {
        // Thrown as the fourth element is read, so a valid document must be a longer array.
        if let parsed {
            guard case .array(let elements) = parsed, elements.count > 3 else {
                check(false, "TooManyElements for a document that is not an array of more than 3")
                return 0
            }
        }
    } catch {
        check(parsed == nil, "counting refused a document that parses")
    }
    checkStream(bytes, parsed)
    return 0
}

/// `JSONArrayStream` over the root, fed in pieces whose size the first byte picks: it accepts
/// exactly what the parser accepts when the root is an array, and hands over its elements.
private func checkStream(_ bytes: UnsafeBufferPointer<UInt8>, _ parsed: JSONValue?) {
    let piece = 1 + Int(bytes.first ?? 0) % 17
    var stream = JSONArrayStream(path: [])
    var elements: [JSONValue] = []
    var failure: JSONArrayStream.Failure?
    var start = 0
    do throws(JSONArrayStream.Failure) {
        while start < bytes.count {
            let end = min(bytes.count, start + piece)
            try stream.feed(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[start..<end]))) { _, value in elements.append(value) }
            start = end
        }
        try stream.finish { _, value in elements.append(value) }
    } catch {
        failure = error
    }
    switch parsed {
    case .array(let expected)?:
        check(failure == nil, "the stream refused an array the parser accepts: \(String(describing: failure))")
        check(elements == expected, "the stream's elements differ from the parser's")
    case nil:
        check(failure != nil, "the stream accepted what the parser refuses")
    default:
        guard case .notAnArray? = failure else {
            check(false, "the stream did not say a non-array root is not an array: \(String(describing: failure))")
            return
        }
    }
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzJSONParser`.
@_cdecl("FuzzJSONParser_main")
public func fuzzJSONParserMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzJSONParser)
}
