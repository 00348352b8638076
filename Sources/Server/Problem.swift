import BatchInput
import Codecs
import NIOCore
import NIOHTTP1

/// RFC 9457 problem details, the body of every error Sheaf answers itself.
public enum Problem {
    public static func response(_ status: HTTPResponseStatus, detail: String, field: String? = nil,
                                extraHeaders: HTTPHeaders = [:]) -> SimpleResponse {
        var body = ByteBuffer()
        body.writeStaticString("{\"type\":\"about:blank\",\"title\":")
        JSONWriter.writeString(status.reasonPhrase, into: &body)
        body.writeString(",\"status\":\(status.code),\"detail\":")
        JSONWriter.writeString(detail, into: &body)
        if let field {
            body.writeStaticString(",\"field\":")
            JSONWriter.writeString(field, into: &body)
        }
        body.writeStaticString("}\n")
        var headers = extraHeaders
        headers.replaceOrAdd(name: "content-type", value: "application/problem+json")
        return SimpleResponse(status: status, headers: headers, body: body)
    }

    public static func response(_ error: BatchError) -> SimpleResponse {
        response(HTTPResponseStatus(statusCode: error.status), detail: error.description, field: error.field)
    }
}
