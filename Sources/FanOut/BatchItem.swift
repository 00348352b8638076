import NIOCore
import Upstream

/// One item of a batch after decoding and planning: either a request ready for the upstream,
/// or a rejection that Sheaf answers itself (400) without sending anything.
public struct BatchItem: Sendable {
    /// The client's id for the item (default: its zero-based index).
    public var id: String
    /// The path the client addressed, normalized and percent-encoded; the 207's `href`.
    public var href: String
    // Spelled `Optional<...>`, without the implicit `= nil` of `T?`: each init sets every field
    // once, where a default was set and then overwritten (a copy and a free of the request per item).
    public var request: Optional<UpstreamRequest>
    /// Why the item is not sent, when it is not.
    public var rejection: Optional<String>
    /// Items (by index, all before this one) that must finish with an accepted status before
    /// this one starts; if one does not, this one is not sent and gets 424.
    public var dependsOn: [Int]
    /// Builds the request from the outcomes of `dependsOn` (in that order) when the item has
    /// value references; a failure is the reason for a 424. Nil: `request` is sent as is.
    public var resolve: Optional<RequestResolver>
    /// An earlier identical idempotent item: this one makes no call of its own and reports
    /// that item's outcome (coalescing).
    public var sameAs: Optional<Int>

    /// Inlinable: across the module boundary the request was copied into the item and the
    /// argument then freed, once per item (issue 13).
    @inlinable
    public init(id: String, href: String, request: UpstreamRequest) {
        self.id = id
        self.href = href
        self.request = request
        self.rejection = nil
        self.dependsOn = []
        self.resolve = nil
        self.sameAs = nil
    }

    /// An item whose request is built, once its dependencies have answered, by `resolve`.
    public init(id: String, href: String, dependsOn: [Int], resolve: @escaping RequestResolver) {
        self.id = id
        self.href = href
        self.request = nil
        self.rejection = nil
        self.dependsOn = dependsOn
        self.resolve = resolve
        self.sameAs = nil
    }

    public init(id: String, href: String, rejection: String) {
        self.id = id
        self.href = href
        self.request = nil
        self.rejection = rejection
        self.dependsOn = []
        self.resolve = nil
        self.sameAs = nil
    }
}

/// The second call of a route with `then`: where it went and how it ended.
public final class ChainedResult: Sendable {
    public let href: String
    public let outcome: ItemOutcome

    public init(href: String, outcome: ItemOutcome) {
        self.href = href
        self.outcome = outcome
    }
}

/// Builds an item's request from its dependencies' outcomes, or says why it cannot.
public typealias RequestResolver = @Sendable (_ dependencies: [ItemOutcome]) -> Result<UpstreamRequest, DependencyFailure>

/// Why an item with dependencies is not sent: its 424's reason.
public struct DependencyFailure: Error, Sendable, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
}

/// Statuses a dependency may end with for its dependents to start (`depends_on_success`):
/// whole classes (`2xx`) and single codes (`404`).
public struct StatusSet: Sendable, Equatable, CustomStringConvertible {
    public var classes: Set<Int>
    public var codes: Set<Int>

    public init(classes: Set<Int> = [], codes: Set<Int> = []) {
        self.classes = classes
        self.codes = codes
    }

    public static let success = StatusSet(classes: [2])

    public func contains(_ status: Int) -> Bool { codes.contains(status) || classes.contains(status / 100) }

    public var description: String {
        (classes.sorted().map { "\($0)xx" } + codes.sorted().map(String.init)).joined(separator: ", ")
    }
}

/// How a batch's items relate to each other's outcomes.
public struct FanOutPolicy: Sendable, Equatable {
    /// `on_error: stop`: after the first item that fails (4xx or 5xx), items not yet started are
    /// not sent and get 424; items in flight finish.
    public var stopOnError = false
    /// What a dependency must end with for its dependents to start.
    public var dependencySuccess = StatusSet.success

    public init(stopOnError: Bool = false, dependencySuccess: StatusSet = .success) {
        self.stopOnError = stopOnError
        self.dependencySuccess = dependencySuccess
    }
}

/// The one status every item leaves with: the upstream's own, or one Sheaf assigns and explains.
public struct ItemOutcome: Sendable {
    public var status: Int
    public var headers: HeaderFields
    // `Optional<...>`, without the implicit `= nil` (see `BatchItem.request`).
    public var body: Optional<ByteBuffer>
    public var bodyTruncated: Bool
    /// Set when Sheaf assigned the status (400, 502, 504, ...): what happened, for a human.
    public var reason: Optional<String>
    /// Times the item's request went on the wire; reported when above 1 (a re-send).
    public var attempts: Int
    /// Sends among `attempts` that repeated a request the upstream left unprocessed (not the
    /// retry policy's): `sheaf_upstream_resends_total`.
    public var resends: Int
    /// A route's `then` call made with this answer's values, reported under the item.
    public var then: Optional<ChainedResult>

    public init(status: Int, headers: HeaderFields = [], body: ByteBuffer? = nil,
                bodyTruncated: Bool = false, reason: String? = nil, attempts: Int = 1) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bodyTruncated = bodyTruncated
        self.reason = reason
        self.attempts = attempts
        self.resends = max(0, attempts - 1)
        self.then = nil
    }

    /// An outcome Sheaf assigns to an item that made no call (refused, not resolvable, stopped,
    /// cancelled before it started): no attempts, so it is neither a re-send nor an upstream
    /// latency sample.
    public static func unsent(_ status: Int, _ reason: String) -> ItemOutcome {
        ItemOutcome(status: status, reason: reason, attempts: 0)
    }

    /// Borrowed (`__shared`), its headers and body retained field by field: an owned parameter
    /// made callers holding the result borrowed (the fan-out's completion) copy all of it first,
    /// through the generic `Result` witnesses (issue 13).
    public init(_ result: __shared UpstreamResult) {
        // Fields set one by one: a delegating init copied the whole outcome once more.
        switch result {
        case .success(let response):
            status = response.status
            headers = response.headers
            body = response.body
            bodyTruncated = response.bodyTruncated
            reason = nil
            attempts = response.attempts
            resends = response.resends
            then = nil
        case .failure(let error):
            status = error.status
            headers = HeaderFields()
            body = nil
            bodyTruncated = false
            reason = error.message
            attempts = error.attempts
            resends = error.resends
            then = nil
        }
    }

    /// 1xx–3xx count as succeeded in summaries and metrics; 4xx and 5xx as failed. With a
    /// `then` call, both must have succeeded.
    public var succeeded: Bool { status < 400 && (then?.outcome.succeeded ?? true) }
}
