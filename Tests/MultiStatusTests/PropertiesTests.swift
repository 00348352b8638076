import Codecs
import FanOut
import MultiStatus
import NIOCore
import Testing

private let all: [DAVProperty] = [.getetag, .getcontenttype, .getcontentlength, .getlastmodified]

/// Properties reported, and no headers, so that the properties cannot come from `response_headers`.
private func encodeWithProperties(_ format: ResponseFormat, _ entries: [(BatchItem, ItemOutcome)],
                                  properties: [DAVProperty] = all) -> String {
    encode(format, entries, reporting: ReportedHeaders([]), properties: properties)
}

private let etagged = (BatchItem(id: "1", href: "/headers/1", rejection: "x"),
                       ItemOutcome(status: 200, headers: [("content-type", "application/json"), ("etag", "\"e1\"")],
                                   body: ByteBuffer(string: #"{"id":1}"#)))
private let notFound = (BatchItem(id: "2", href: "/nothing/2", rejection: "x"),
                        ItemOutcome(status: 404, headers: [("content-type", "text/plain"), ("content-length", "9"),
                                                           ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")],
                                    body: ByteBuffer(string: "not found")))
private let unreachable = (BatchItem(id: "3", href: "/headers/3", rejection: "x"),
                           ItemOutcome(status: 502, reason: "cannot connect to upstream up"))
private let cut = (BatchItem(id: "4", href: "/big/4", rejection: "x"),
                   ItemOutcome(status: 200, headers: [("content-type", "text/plain")], body: ByteBuffer(string: "abc"), bodyTruncated: true))

@Test func xmlCarriesPropertiesInPropstatsWithTheItemsStatusAndNoDirectStatus() {
    let xml = encodeWithProperties(.xml(mediaType: "application/xml"), [etagged, notFound, unreachable])
    // Found properties under the item's own status, missing ones empty under 404, as PROPFIND answers.
    #expect(xml.contains(["<D:response><D:href>/headers/1</D:href>", "<D:propstat><D:prop><D:getetag>\"e1\"</D:getetag><D:getcontenttype>application/json</D:getcontenttype>", "<D:getcontentlength>8</D:getcontentlength></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>", "<D:propstat><D:prop><D:getlastmodified/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>", "<S:id>1</S:id>"].joined()), "\(xml)")
    #expect(xml.contains(["<D:response><D:href>/nothing/2</D:href>", "<D:propstat><D:prop><D:getcontenttype>text/plain</D:getcontenttype><D:getcontentlength>9</D:getcontentlength>", "<D:getlastmodified>Wed, 21 Oct 2015 07:28:00 GMT</D:getlastmodified></D:prop>", "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>", "<D:propstat><D:prop><D:getetag/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>", "<S:id>2</S:id>"].joined()), "\(xml)")
    // No upstream answer: the plain form, with Sheaf's reason.
    #expect(xml.contains(["<D:response><D:href>/headers/3</D:href><D:status>HTTP/1.1 502 Bad Gateway</D:status>", "<D:responsedescription>cannot connect to upstream up</D:responsedescription><S:id>3</S:id></D:response>"].joined()), "\(xml)")
    // RFC 4918 §14.24: href then status, or href then propstats, never both.
    #expect(xml.components(separatedBy: "<D:propstat>").count - 1 == 4)
    #expect(xml.components(separatedBy: "</D:href><D:status>").count - 1 == 1)
}

@Test func propertiesFollowTheRoutesListAndAContentLengthNeedsAWholeBody() {
    let xml = encodeWithProperties(.xml(mediaType: "application/xml"), [etagged, cut], properties: [.getcontentlength, .getetag])
    #expect(xml.contains(["<D:propstat><D:prop><D:getcontentlength>8</D:getcontentlength><D:getetag>\"e1\"</D:getetag></D:prop>", "<D:status>HTTP/1.1 200 OK</D:status></D:propstat><S:id>1</S:id>"].joined()), "\(xml)")
    // A cut body's length is not the resource's: unknown, so listed as missing.
    #expect(xml.contains(["<D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status></D:propstat>",
                          "<D:propstat><D:prop><D:getcontentlength/><D:getetag/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"].joined()), "\(xml)")
}

@Test func withoutPropertiesTheXMLKeepsThePlainForm() {
    let xml = encodeWithProperties(.xml(mediaType: "application/xml"), [etagged], properties: [])
    #expect(xml.contains("<D:response><D:href>/headers/1</D:href><D:status>HTTP/1.1 200 OK</D:status><S:id>1</S:id>"))
    #expect(!xml.contains("propstat"))
}

@Test func jsonAndNDJSONCarryTheSameValuesUnderProperties() throws {
    let expected: JSONValue = .object([(key: "getetag", value: .string("\"e1\"")), (key: "getcontenttype", value: .string("application/json")),
                                       (key: "getcontentlength", value: .string("8")), (key: "getlastmodified", value: .null)])
    let json = try JSONParser.parse(encodeWithProperties(.json, [etagged, unreachable]))
    guard case .array(let results) = json["results"] else { Issue.record("no results"); return }
    #expect(results[0]["properties"] == expected)
    #expect(results[1]["properties"] == nil)
    let lines = encodeWithProperties(.ndjson, [etagged, unreachable]).split(separator: "\n").map(String.init)
    #expect(try JSONParser.parse(lines[0])["properties"] == expected)
    #expect(try JSONParser.parse(lines[1])["properties"] == nil)
    #expect(try JSONParser.parse(encodeWithProperties(.json, [etagged], properties: []))["results"] == .array([
        try JSONParser.parse(#"{"id":"1","href":"/headers/1","status":200,"body":{"id":1}}"#)]))
}

@Test func propertyNamesAreTheFourWebDAVLiveProperties() {
    #expect(DAVProperty.allCases.map(\.rawValue) == ["getetag", "getcontenttype", "getcontentlength", "getlastmodified"])
    #expect(DAVProperty(rawValue: "displayname") == nil)
}
