@testable import Server
import Testing

@Test func traceparentFollowsW3CTraceContext() {
    let parsed = TraceParent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    #expect(parsed == TraceParent(traceID: "0af7651916cd43dd8448eb211c80319c", parentID: "b7ad6b7169203331", flags: 1))
    #expect(parsed?.sampled == true)
    #expect(parsed?.header == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    // A later version may add fields; version 00 may not.
    #expect(TraceParent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra")?.sampled == false)
    #expect(TraceParent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra") == nil)
    for bad in [
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  // version ff is invalid
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  // all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  // all-zero parent
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  // upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",   // short parent
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "",
    ] {
        #expect(TraceParent(bad) == nil, "\(bad)")
    }
}
