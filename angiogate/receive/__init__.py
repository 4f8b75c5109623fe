"""Receiving: the DICOM SCP and what it does with each object.

scp: the Storage SCP (pynetdicom event handlers, kept thin); receive_file:
streaming an incoming C-STORE straight to a spool file; intake: a received
file checked, spooled and recorded in the verdict log before Success is
answered. The peer allow-list lives in `angiogate.dicom.security`, TLS
contexts in `angiogate.dicom.tls` (shared with forwarding).
"""
