import Config
import CFuzzerDriver
import FuzzSupport

/// libFuzzer entry point: any text into `ConfigLoader.parse(yaml:file:)`. An operator's file,
/// but `sheaf check` must answer every file with a configuration or problems that point into
/// it (line and column from 1), never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        _ = try ConfigLoader.parse(yaml: text, file: "fuzz.yaml")
    } catch {
        check(!error.problems.isEmpty, "an error without problems")
        for problem in error.problems {
            check(problem.line >= 1 && problem.column >= 1, "problem at line \(problem.line) column \(problem.column): \(problem.message)")
        }
    }
    return 0
}

/// The program's `main` (SwiftPM links it to `<module>_main`): libFuzzer over `fuzzConfig`.
@_cdecl("FuzzConfig_main")
public func fuzzConfigMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    sheaf_fuzz_main(argc, argv, fuzzConfig)
}
