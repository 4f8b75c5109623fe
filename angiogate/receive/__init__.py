"""Receiving: the DICOM SCP and what it does with each object.

scp: the Storage SCP (pynetdicom event handlers, kept thin); receive_file:
streaming an incoming C-STORE straight to a spool file; intake: a received
file checked, spooled and recorded in the verdict log before Success is
answered. TLS and the peer allow-list live in `angiogate.dicom.security`,
shared with future TLS forwarding.
"""
