/// What a call that follows its item from one engine call to the next remembers (`AutoCall`
/// across the protocol switch, `ResilientCall` across retries), so that a cancel or a
/// backpressure signal reaches whichever engine call holds the item now. Kept under its owner's lock.
struct CallRelay {
    var inner: UpstreamCall?
    var cancelled = false
    var suspended = false

    /// Records the new engine call and says what it must be told at once.
    mutating func attach(_ call: UpstreamCall) -> (cancel: Bool, suspend: Bool) {
        inner = call
        return (cancelled, suspended)
    }

    /// Records the reading state; returns the call to tell.
    mutating func reading(suspended: Bool) -> UpstreamCall? {
        self.suspended = suspended
        return inner
    }

    mutating func cancel() -> UpstreamCall? {
        cancelled = true
        return inner
    }
}

extension UpstreamCall {
    /// Tells a freshly attached engine call what the item already asked for.
    func catchUp(cancel: Bool, suspend: Bool) {
        if cancel { self.cancel() }
        if suspend { suspendReading() }
    }
}
