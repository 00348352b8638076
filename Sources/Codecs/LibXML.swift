import CLibXML2

/// libxml2 wants one process-wide initialisation before threads use it; Swift runs this once.
public let libxmlInitialized: Void = {
    xmlInitParser()
}()

/// The XML namespaces Sheaf reads and writes.
public enum XMLNamespace {
    public static let dav = "DAV:"
    public static let sheaf = "urn:sheaf"
}
