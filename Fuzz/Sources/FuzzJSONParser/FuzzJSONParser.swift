import Codecs
import CFuzzerDriver
import FuzzSupport

/// libFuzzer entry point: any bytes into `JSONParser`. Besides not crashing, three things must
/// hold for every input: validating agrees with parsing, what the writer makes of a parsed value
/// parses back to the same value, and counting an array stops only past its limit.
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
    return 0
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzJSONParser`.
@_cdecl("FuzzJSONParser_main")
public func fuzzJSONParserMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzJSONParser)
}
