import Foundation

/// PEM files for the `tls` tests, written to a fresh directory per test: a self-signed
/// certificate for localhost / 127.0.0.1 (valid until 2126), its key, and a key of its own.
struct TLSFiles {
    static let certificate = """
-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUH3psJ0AXvNkbqZV8IYtPtVzXoLMwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTIxNTYyMFoYDzIxMjYxMTAx
MjE1NjIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQRrAAlty9qk1VkOxxtlfhPCZ4GZGBhbhBS+KWRq0Xu1WtIWYI3DyeV
v8NoXbTw8G4qQnKVnyTY9cBye+Bul8dno28wbTAdBgNVHQ4EFgQURnwVfuXgVfCL
ykyI4qqeR5OraLowHwYDVR0jBBgwFoAURnwVfuXgVfCLykyI4qqeR5OraLowDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSQAwRgIhAL7a67njWr9c7I04svMi6S+eECm8wWf2nBwZlkHu+P8mAiEA
rS7pPu7w8qij9ruj821tO4UZ50P5MiD6wQS7L7d5TU0=
-----END CERTIFICATE-----
"""
    static let key = """
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQdnt192yc0wpTUcG
ZdFNrTrxKgYkusYY775TZ3fFMTKhRANCAAQRrAAlty9qk1VkOxxtlfhPCZ4GZGBh
bhBS+KWRq0Xu1WtIWYI3DyeVv8NoXbTw8G4qQnKVnyTY9cBye+Bul8dn
-----END PRIVATE KEY-----
"""
    static let otherKey = """
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgAMeJyRHHQJ2MgMow
3kGHZcdElgCJIL9wed2xdfMbZFihRANCAARkoNhMUCtPpkPjmTXc5JaMNQa1W8Be
PKgMOQ15CURnGaoDnYnbTY6CxJPu/ERs/IVrR+MBIbzt4o5bXPVSG7QP
-----END PRIVATE KEY-----
"""

    let directory: String
    var certificate: String { directory + "/cert.pem" }
    var key: String { directory + "/key.pem" }
    var otherKey: String { directory + "/other-key.pem" }

    init() throws {
        directory = NSTemporaryDirectory() + "sheaf-tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.certificate.write(toFile: certificate, atomically: true, encoding: .utf8)
        try Self.key.write(toFile: key, atomically: true, encoding: .utf8)
        try Self.otherKey.write(toFile: otherKey, atomically: true, encoding: .utf8)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
