"""DICOM facts every role shares, below all of them.

header: the header facts of one object (ClipHeader, read_header);
contexts: the SOP classes and transfer syntaxes the gate accepts and
offers; security: the peer allow-list (certificate bindings included) and
the SCP's TLS handshake; tls: every TLS context, inbound and outbound;
untrusted: peer-chosen strings made safe to log.
"""
