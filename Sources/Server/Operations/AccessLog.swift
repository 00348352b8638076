#if canImport(Glibc)
import Glibc
#endif
import Config
import Dispatch
import Foundation
import Codecs
import NIOConcurrencyHelpers
import NIOCore

/// What the access log says about one bulk request. No body, and no header value, is ever part
/// of it: credentials in `Authorization` or `Cookie` cannot leak through it.
struct AccessEntry {
    var start = Date()
    var requestID: String?
    var traceID: String?
    var route: String?
    var client: String?
    /// `HTTP/1.1` or `HTTP/2`, and whether over TLS.
    var protocolName = "HTTP/1.1"
    var tls = false
    var method = ""
    var path = ""
    var status = 0
    var items = 0
    /// Items by status class: 1xx ... 5xx.
    var classes = [Int](repeating: 0, count: 5)
    var bytesIn = 0
    var bytesOut = 0
    /// complete, partial, failed, rejected or cancelled (as `sheaf_batches_total`).
    var outcome = "rejected"

    mutating func count(status: Int, times: Int) {
        let index = status / 100 - 1
        if classes.indices.contains(index) { classes[index] += times }
    }

    /// One line of JSON, newline-terminated.
    func line(now: Date = Date()) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(384)
        out.writeStaticString("{\"time\":")
        JSONWriter.writeString(Self.timestamp(start), into: &out)
        field("request_id", requestID, &out)
        field("trace_id", traceID, &out)
        field("route", route, &out)
        field("client", client, &out)
        field("protocol", protocolName, &out)
        out.writeString(",\"tls\":\(tls)")
        field("method", method, &out)
        field("path", path, &out)
        out.writeString(",\"status\":\(status),\"items\":\(items),\"statuses\":{")
        for (index, count) in classes.enumerated() {
            out.writeString("\(index == 0 ? "" : ",")\"\(index + 1)xx\":\(count)")
        }
        let milliseconds = max(0, now.timeIntervalSince(start)) * 1000
        out.writeString("},\"duration_ms\":\((milliseconds * 1000).rounded() / 1000),\"bytes_in\":\(bytesIn),\"bytes_out\":\(bytesOut)")
        field("outcome", outcome, &out)
        out.writeStaticString("}\n")
        return out
    }

    private func field(_ name: StaticString, _ value: String?, _ out: inout ByteBuffer) {
        out.writeStaticString(",\"")
        out.writeStaticString(name)
        out.writeStaticString("\":")
        if let value { JSONWriter.writeString(value, into: &out) } else { out.writeStaticString("null") }
    }

    private static let formatter: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }()
    private static let formatterLock = NIOLock()

    static func timestamp(_ date: Date) -> String {
        formatterLock.withLock { formatter.string(from: date) }
    }
}

/// The access log: one JSON line per bulk request, to stderr or a file. Event loops only append
/// the line to a buffer; a background queue does the writing, so a slow disk never stalls a
/// loop. Past `maxPending` unwritten bytes, lines are dropped and counted rather than queued
/// without bound. `reopen()` (SIGUSR1) opens the file again after logrotate moved it.
public final class AccessLog: @unchecked Sendable {
    private let lock = NIOLock()
    private var destination: AccessLogDestination
    private var descriptor: Int32 = -1
    private var pending: [UInt8] = []
    private var writing = false
    private let queue = DispatchQueue(label: "sheaf-access-log")
    private let maxPending: Int
    private let onDropped: @Sendable () -> Void
    private let onError: @Sendable (String) -> Void

    public init(_ destination: AccessLogDestination, maxPending: Int = 4 << 20, onDropped: @escaping @Sendable () -> Void = {},
         onError: @escaping @Sendable (String) -> Void = { _ in }) {
        self.destination = destination
        self.maxPending = maxPending
        self.onDropped = onDropped
        self.onError = onError
        queue.sync { openLocked() }
    }

    var isOn: Bool { lock.withLock { destination != .off } }

    func record(_ entry: AccessEntry) {
        guard isOn else { return }
        let line = entry.line()
        let schedule = lock.withLock { () -> Bool? in
            if pending.count + line.readableBytes > maxPending { return nil }
            pending.append(contentsOf: line.readableBytesView)
            if writing { return false }
            writing = true
            return true
        }
        switch schedule {
        case nil: onDropped()
        case true?: queue.async { self.drainPending() }
        case false?: break
        }
    }

    /// A reload's destination; the old file is closed once what was queued for it is written.
    public func configure(_ new: AccessLogDestination) {
        queue.async {
            let changed = self.lock.withLock { () -> Bool in
                guard self.destination != new else { return false }
                self.destination = new
                return true
            }
            guard changed else { return }
            self.drainPending()
            self.openLocked()
        }
    }

    /// Opens the file again under its name (logrotate moved the old one away).
    public func reopen() {
        queue.async {
            self.drainPending()
            self.openLocked()
        }
    }

    /// Waits until every line recorded so far is written.
    public func flush() {
        queue.sync { drainPending() }
    }

    /// On `queue`: writes what is pending, until nothing is.
    private func drainPending() {
        while true {
            let chunk = lock.withLock { () -> [UInt8]? in
                if pending.isEmpty {
                    writing = false
                    return nil
                }
                defer { pending.removeAll(keepingCapacity: true) }
                return pending
            }
            guard let chunk else { return }
            write(chunk)
        }
    }

    /// On `queue`.
    private func openLocked() {
        if descriptor > 2 { close(descriptor) }
        descriptor = -1
        switch lock.withLock({ destination }) {
        case .off:
            break
        case .stderr:
            descriptor = 2
        case .file(let path):
            descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if descriptor < 0 { onError("cannot open access_log \(path): \(String(cString: strerror(errno)))") }
        }
    }

    /// On `queue`.
    private func write(_ bytes: [UInt8]) {
        guard descriptor >= 0 else { return }
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(descriptor, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    onError("access_log write failed: \(String(cString: strerror(errno)))")
                    return
                }
                offset += written
            }
        }
    }
}
