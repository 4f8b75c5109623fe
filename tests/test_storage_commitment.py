"""Storage Commitment Push Model: a modality asks the running gate to commit to what it sent.

The modality is pynetdicom (DCMTK 3.6.7 has no Storage Commitment SCU), the
gate a real `angiogate serve` child process on loopback. The gate commits
only objects it holds (fsync'd and recorded), fails the others with the
standard reason, and delivers the N-EVENT-REPORT on the requesting
association or, once that is closed, on a new one to the modality's
configured address.
"""

from __future__ import annotations

import threading

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from peers import count_successes, storescu

INSTANCE = "1.2.840.10008.1.20.1.1"


def _uid_and_class(path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _request(references) -> Dataset:
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        info.ReferencedSOPSequence.append(item)
    return info


class Reports:
    """N-EVENT-REPORTs a modality received (on any association)."""

    def __init__(self):
        self.received: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()

    def handler(self, event):
        self.received.append((event.event_type, event.event_information))
        self.arrived.set()
        return 0x0000, None


def _pushed(gate, phantoms, n=2):
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows][:n]
    result = storescu(files, gate.port, aec="ANGIOGATE", timeout=120)
    assert count_successes(result) == len(files)
    return [_uid_and_class(f) for f in files]


def test_commitment_reported_on_the_requesting_association(gate_factory, phantoms):
    gate = gate_factory({"model": {"path": "none"}}).start()
    held = _pushed(gate, phantoms)
    unknown = (held[0][0], generate_uid())
    reports = Reports()
    ae = AE(ae_title="CATHLAB1")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    assert assoc.is_established
    try:
        request = _request(held + [unknown])
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, INSTANCE)
        assert status.Status == 0x0000
        assert reports.arrived.wait(30), gate.log_text()[-3000:]
    finally:
        assoc.release()
    [(event_type, info)] = reports.received
    assert event_type == 2  # some failed
    assert info.TransactionUID == request.TransactionUID
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == {u for _, u in held}
    [failed] = info.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (unknown[1], 0x0112)
    events = gate.query("SELECT sop_instance_uid, detail FROM events WHERE kind = 'commitment'")
    assert len(events) == 3 and sum(e["detail"].startswith("committed") for e in events) == 2
    assert "storage commitment" in gate.log_text() and "reported to CATHLAB1 on the requesting association" \
        in gate.log_text()


def test_commitment_reported_on_a_new_association_once_the_request_closed(gate_factory, phantoms):
    reports = Reports()
    modality = AE(ae_title="CATHLAB1")
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = modality.start_server(("127.0.0.1", 0), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        gate = gate_factory({"model": {"path": "none"}, "storage_commitment": {"peers": [
            {"ae_title": "CATHLAB1", "host": "127.0.0.1", "port": server.server_address[1]}]}}).start()
        held = _pushed(gate, phantoms)
        ae = AE(ae_title="CATHLAB1")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
        request = _request(held)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, INSTANCE)
        assoc.release()  # the modality does not wait on this association
        assert status.Status == 0x0000
        assert reports.arrived.wait(30), gate.log_text()[-3000:]
    finally:
        server.shutdown()
    [(event_type, info)] = reports.received
    assert event_type == 1 and "FailedSOPSequence" not in info
    assert {i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence} == {u for _, u in held}
    assert "on a new association to 127.0.0.1" in gate.log_text()


def test_commitment_fails_for_an_object_held_under_another_class(gate_factory, phantoms):
    gate = gate_factory({"model": {"path": "none"}}).start()
    [(sop_class, uid)] = _pushed(gate, phantoms, n=1)
    reports = Reports()
    ae = AE(ae_title="CATHLAB1")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    try:
        wrong_class = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        assoc.send_n_action(_request([(wrong_class, uid)]), 1, StorageCommitmentPushModel, INSTANCE)
        assert reports.arrived.wait(30)
    finally:
        assoc.release()
    [(event_type, info)] = reports.received
    assert event_type == 2 and info.FailedSOPSequence[0].FailureReason == 0x0119
