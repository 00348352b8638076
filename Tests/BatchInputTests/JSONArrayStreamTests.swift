import Codecs
import Testing

/// Feeds `text` in pieces of `piece` bytes; returns the elements handed over and the failure.
private func stream(_ text: String, path: [String], piece: Int, maxElements: Int = .max, maxDepth: Int = 64)
    -> (elements: [JSONValue], failure: JSONArrayStream.Failure?) {
    var reader = JSONArrayStream(path: path, maxElements: maxElements, maxDepth: maxDepth)
    var elements: [JSONValue] = []
    let bytes = Array(text.utf8)
    var start = 0
    do throws(JSONArrayStream.Failure) {
        while start < bytes.count {
            let end = min(bytes.count, start + piece)
            var failure: JSONArrayStream.Failure?
            bytes[start..<end].withUnsafeBytes { raw in
                do throws(JSONArrayStream.Failure) {
                    try reader.feed(raw) { index, value in
                        #expect(index == elements.count)
                        elements.append(value)
                    }
                } catch {
                    failure = error
                }
            }
            if let failure { throw failure }
            start = end
        }
        try reader.finish { _, value in elements.append(value) }
        return (elements, nil)
    } catch {
        return (elements, error)
    }
}

@Test(arguments: [
    (#"[1, "two", {"three": [3, {"x": "]}"}]}, [4], true, null, -5.5e3]"#, [String]()),
    (#"{"before": {"ids": [9]}, "ids": [ "a\"]", 7 ,[[]] ], "after": [1, {"y": "z"}]}"#, ["ids"]),
    (#"{"a": [0, {"b": ["x", "y"]}]}"#, ["a", "1", "b"]),
    (#"[]"#, []),
    (#" { "ids" : [ ] } "#, ["ids"]),
])
func arrayStreamHandsOverTheElementsTheWholeParserFinds(text: String, path: [String]) throws {
    let document = try JSONParser.parse(text)
    var target = document
    for token in path {
        switch target {
        case .object(let members): target = members.first { $0.key == token }!.value
        case .array(let values): target = values[Int(token)!]
        default: Issue.record("bad path")
        }
    }
    guard case .array(let expected) = target else { Issue.record("not an array"); return }
    // Every piece size, down to one byte: an element or a token cut anywhere must not matter.
    for piece in [1, 2, 3, 5, 7, 16, 1000] {
        let (elements, failure) = stream(text, path: path, piece: piece)
        #expect(failure == nil, "piece \(piece)")
        #expect(elements == expected, "piece \(piece)")
    }
}

@Test(arguments: [
    "[1,]", "[1 2]", "{\"ids\": [1]", "[1] x", "[\"a]", "[tru]", "{\"ids\" [1]}", "[01]", "{\"a\": tru, \"ids\": []}",
    "{\"ids\": [1], \"b\": \"\u{01}\"}", "[{\"a\": 1]]", "[\"\\ud800\"]", "", "   ", "{\"ids\": [1]}}", "[1]]",
])
func arrayStreamRefusesWhatTheWholeParserRefuses(text: String) {
    #expect((try? JSONParser.parse(text)) == nil)
    let path = text.contains("ids") ? ["ids"] : []
    for piece in [1, 4, 1000] {
        let (_, failure) = stream(text, path: path, piece: piece)
        guard case .syntax? = failure else {
            Issue.record("\(text) in pieces of \(piece): \(String(describing: failure))")
            continue
        }
    }
}

@Test func arrayStreamNamesWhatIsMissingOrNotAnArray() {
    #expect(stream(#"{"other": [1]}"#, path: ["ids"], piece: 3).failure == .notFound)
    #expect(stream(#"{"ids": "1,2"}"#, path: ["ids"], piece: 3).failure == .notAnArray(typeName: "string"))
    #expect(stream(#"{"ids": {"a": 1}}"#, path: ["ids"], piece: 3).failure == .notAnArray(typeName: "object"))
    #expect(stream(#"7"#, path: [], piece: 3).failure == .notAnArray(typeName: "number"))
}

@Test func arrayStreamStopsAtTheFirstElementTooManyAndAtTheDepthLimit() {
    let (elements, failure) = stream("[1,2,3,4,5", path: [], piece: 2, maxElements: 3)
    #expect(elements.count == 3)
    #expect(failure == .tooManyElements(limit: 3))
    // Depth counts from the root, as the whole parser counts it: the array is level 1.
    #expect(stream("[[[1]]]", path: [], piece: 1, maxDepth: 3).failure == nil)
    guard case .syntax(let error)? = stream("[[[[1]]]]", path: [], piece: 1, maxDepth: 3).failure else {
        Issue.record("a too-deep element passed")
        return
    }
    #expect(error.tooDeep)
    guard case .syntax(let outside)? = stream(#"{"x": [[[[]]]], "ids": []}"#, path: ["ids"], piece: 1, maxDepth: 3).failure else {
        Issue.record("too deep outside the array passed")
        return
    }
    #expect(outside.tooDeep)
}

@Test func arrayStreamReportsOffsetsFromTheStartOfTheDocument() {
    guard case .syntax(let error)? = stream(#"[1, 2, {"a" 3}]"#, path: [], piece: 4).failure else {
        Issue.record("accepted")
        return
    }
    #expect(error.offset == 12)
}

@Test func aNumberCutOffByTheEndOfTheBodyIsNotAnElement() {
    // `[1,2,12` may have been `[1,2,123]`: the last number has no delimiter, so it is not handed over.
    let (elements, failure) = stream("[1,2,12", path: [], piece: 100)
    #expect(elements == [.number("1"), .number("2")])
    guard case .syntax? = failure else {
        Issue.record("accepted: \(String(describing: failure))")
        return
    }
}

/// Which of two members with one name a reader follows is not agreed (RFC 8259 §4): on the
/// path, a name given twice is refused, with where; off the path it does not matter.
@Test func aDuplicateKeyOnThePathIsRefused() throws {
    for text in [#"{"a": {"c": 1}, "a": {"b": [1]}}"#, #"{"a": 1, "a": {"b": [1]}}"#, #"{"ids": [1], "ids": [2, 3]}"#] {
        let path = text.contains("ids") ? ["ids"] : ["a", "b"]
        for piece in [1, 3, 1000] {
            guard case .syntax(let error)? = stream(text, path: path, piece: piece).failure else {
                Issue.record("\(text) accepted")
                continue
            }
            #expect(error.duplicate == [path[0]], "\(text)")
        }
    }
    let (elements, failure) = stream(#"{"x": {"a": 1, "a": 2}, "ids": [{"k": 1}, {"k": 2, "k": 3}]}"#, path: ["ids"], piece: 4)
    guard case .syntax(let error)? = failure else { Issue.record("a duplicate inside an element was accepted"); return }
    #expect(error.duplicate == ["ids", "1", "k"])
    #expect(elements.count == 1)
}

@Test func anElementAtTheDepthLimitMayNotOpenAnotherLevel() {
    guard case .syntax(let error)? = stream("[[1]]", path: [], piece: 2, maxDepth: 1).failure else {
        Issue.record("[[1]] passed a depth limit of 1")
        return
    }
    #expect(error.tooDeep)
    #expect(stream("[1]", path: [], piece: 2, maxDepth: 1).failure == nil)
}

/// An element too deep is refused as its bytes arrive, with the limit as configured: waiting
/// for its end buffered a body of `[` up to `max_body_bytes` (8 MiB, then a 413), and the
/// message named the element's own budget ("62 levels" for a limit of 64).
@Test func anElementTooDeepIsRefusedBeforeItEnds() {
    let (elements, failure) = stream("[1, " + String(repeating: "[", count: 100_000), path: [], piece: 4096, maxDepth: 64)
    #expect(elements.count == 1)
    guard case .syntax(let error)? = failure else {
        Issue.record("an unfinished element 100,000 levels deep passed: \(String(describing: failure))")
        return
    }
    #expect(error.tooDeep)
    #expect(error.message == "JSON nested deeper than 64 levels")
    #expect(error.offset < 100)
}
