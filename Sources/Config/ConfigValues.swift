import NIOCore

/// Parsers for the value syntaxes config.yaml uses.
public enum ConfigValues {
    /// `250ms`, `5s`, `1.5s`, `2m`, `1h`, `1m30s`.
    public static func duration(_ text: String) -> TimeAmount? {
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
                if !unit.isEmpty { guard commit() else { return nil } }
                number.append(c)
            } else if c.isLetter {
                guard !number.isEmpty else { return nil }
                unit.append(c)
            } else {
                return nil
            }
        }
        guard commit(), sawAny, total > 0 else { return nil }
        return .nanoseconds(Int64(total * 1_000_000_000))
    }

    /// `1048576`, `512KiB`, `1MiB`, `2GiB`, `10MB`, `100kB`.
    public static func byteSize(_ text: String) -> Int? {
        let trimmed = text.trimmingWhitespace()
        let digits = trimmed.prefix(while: { $0.isNumber })
        guard let value = Int(digits), value >= 0 else { return nil }
        let unit = trimmed.dropFirst(digits.count).trimmingWhitespace()
        let multiplier: Int
        switch unit {
        case "", "B": multiplier = 1
        case "KiB": multiplier = 1 << 10
        case "MiB": multiplier = 1 << 20
        case "GiB": multiplier = 1 << 30
        case "kB", "KB": multiplier = 1000
        case "MB": multiplier = 1_000_000
        case "GB": multiplier = 1_000_000_000
        default: return nil
        }
        return value * multiplier
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
