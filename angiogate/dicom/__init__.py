"""DICOM facts every role shares, below all of them.

header: the header facts of one object (ClipHeader, read_header);
contexts: the SOP classes and transfer syntaxes the gate accepts and
offers; security: TLS contexts and the peer allow-list; untrusted: peer-
chosen strings made safe to log.
"""
