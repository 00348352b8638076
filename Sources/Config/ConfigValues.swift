import NIOCore

/// Parsers for the value syntaxes config.yaml uses.
public enum ConfigValues {
    /// Why a value does not parse.
    public enum Failure: Error, Equatable {
        /// Not in the value's syntax.
        case malformed
        /// In the syntax, but larger than Sheaf can work with; `maximum` is the largest accepted, as text.
        case tooLarge(maximum: String)
    }

    /// The longest duration accepted, about 114 years: beyond any sensible timeout, and small
    /// enough that the sum of two (a timeout and the watchdog's grace, a PING interval and its
    /// timeout) stays within Int64 nanoseconds.
    public static let maxDurationHours = 1_000_000

    /// `250ms`, `5s`, `1.5s`, `2m`, `1h`, `1m30s`.
    public static func duration(_ text: String) -> Result<TimeAmount, Failure> {
        var total: Double = 0
        var number = ""
        var unit = ""
        var sawAny = false
        func commit() -> Bool {
            guard let value = Double(number), !unit.isEmpty else { return false }
            switch unit {
            case "ms": total += value / 1000
            case "s": total += value
            case "m": total += value * 60
            case "h": total += value * 3600
            default: return false
            }
            number = ""
            unit = ""
            sawAny = true
            return true
        }
        for c in text.trimmingWhitespace() {
            if c.isNumber || c == "." {
                if !unit.isEmpty { guard commit() else { return .failure(.malformed) } }
                number.append(c)
            } else if c.isLetter {
                guard !number.isEmpty else { return .failure(.malformed) }
                unit.append(c)
            } else {
                return .failure(.malformed)
            }
        }
        guard commit(), sawAny, total > 0 else { return .failure(.malformed) }
        // Checked before converting: a Double beyond Int64 traps on conversion.
        guard total <= Double(maxDurationHours) * 3600 else { return .failure(.tooLarge(maximum: "\(maxDurationHours)h")) }
        return .success(.nanoseconds(Int64(total * 1_000_000_000)))
    }

    /// `1048576`, `512KiB`, `1MiB`, `2GiB`, `10MB`, `100kB`.
    public static func byteSize(_ text: String) -> Result<Int, Failure> {
        let trimmed = text.trimmingWhitespace()
        let digits = trimmed.prefix(while: { $0.isASCII && $0.isNumber })
        let multiplier: Int
        switch trimmed.dropFirst(digits.count).trimmingWhitespace() {
        case "", "B": multiplier = 1
        case "KiB": multiplier = 1 << 10
        case "MiB": multiplier = 1 << 20
        case "GiB": multiplier = 1 << 30
        case "kB", "KB": multiplier = 1000
        case "MB": multiplier = 1_000_000
        case "GB": multiplier = 1_000_000_000
        default: return .failure(.malformed)
        }
        guard !digits.isEmpty else { return .failure(.malformed) }
        let tooLarge = Failure.tooLarge(maximum: "\(Int.max) bytes")
        guard let value = Int(digits) else { return .failure(tooLarge) }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? .failure(tooLarge) : .success(bytes)
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
