"""Forwarding: one worker per destination drains its durable queue through a target.

worker: leases, sends, records and retries; target: what a target is (the
protocol the worker talks to, the item it sends, the error it raises);
targets: the kinds of target and which ones the configuration names;
dicom_target (over sender, a C-STORE SCU) and outbox_target: the two kinds.
DICOM over TLS is a DICOM destination's option (its `tls` block), not a kind.
A new kind of destination (DICOMweb, say) is a new module registered in
targets.py, not a branch in the worker.
"""
