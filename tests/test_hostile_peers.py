"""Limits against hostile peers (issue 14, items 10 and 11), on a real gate.

Raw sockets play the hostile peer on 127.0.0.1: silent, trickling an
A-ASSOCIATE-RQ byte by byte, holding more connections than
`max_associations`, announcing a 1 GiB PDU. DCMTK's echoscu and storescu
play the real sender who must still get in. Waits are generous and bounded
(`wait_for`); nothing here asserts a duration.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, XRayAngiographicImageStorage,
                         generate_uid)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from peers import dcmtk, echoscu, store_results, storescu, wait_for
from test_security import pki  # noqa: F401  (the test CA and certificates, a fixture)

RULES_ONLY = {"model": {"path": "none"}}


def _xa(path: Path, *, frames: int, rows: int) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "HOSTILE-1", "Test^Hostile", "XA"
    ds.SeriesDescription = "Coronary LCA"
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    ds.FrameTime = 66.67
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 255, (frames, rows, rows), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _closed_by_gate(sock: socket.socket) -> bool:
    """True once the gate has closed this connection (EOF or reset); reads and drops what it sent."""
    sock.settimeout(0.1)  # readable may be a TLS record with no data in it (a session ticket)
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(30)
    return False


def _associate_rq_bytes(called: str = "ANGIOGATE") -> bytes:
    """A real A-ASSOCIATE-RQ PDU (Verification), as pynetdicom encodes it."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.calling_ae_title, primitive.called_ae_title = "SLOWLORIS", called
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    cx = build_context(Verification)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def test_pdu_framing_refuses_on_the_header_alone():
    from angiogate.dicom.peer_limits import PduFraming

    framing = PduFraming(max_pdata_bytes=16384, max_control_bytes=1000)
    # a P-DATA-TF at the limit, its header split over two reads, then its body
    assert framing.feed(b"\x04\x00\x00") is None
    assert framing.feed(b"\x00\x40\x00") is None
    assert framing.feed(b"\x00" * 16384) is None
    # an A-RELEASE-RQ and the next P-DATA-TF's header in one read: one byte too long
    why = framing.feed(b"\x05\x00\x00\x00\x00\x04" + b"\x00" * 4 + b"\x04\x00\x00\x00\x40\x01")
    assert why == "P-DATA-TF of 16385 bytes, more than max_pdu_bytes (16384)"
    assert "A-ASSOCIATE-RQ of 1073741824 bytes" in PduFraming(16384).feed(struct.pack(">BBL", 1, 0, 1 << 30))
    assert "unknown PDU type 0x48" in PduFraming(16384).feed(b"HTTP/1.1 GET /")


def test_receive_file_stops_writing_past_max_object_bytes(tmp_path):
    from angiogate.receive.receive_file import ObjectTooLarge, ReceiveFile

    received = ReceiveFile(dir=tmp_path, delete=False, max_bytes=2500)
    for _ in range(10):
        received.write(b"x" * 1000)
        received.file.flush()
    received.close()
    assert isinstance(received.error, ObjectTooLarge) and received.received == 10_000
    assert Path(received.name).stat().st_size == 0  # space given back, the rest never written


def test_silent_and_trickling_connections_are_closed_at_the_deadline(gate_factory):
    gate = gate_factory(RULES_ONLY | {"association_deadline_s": 2, "network_timeout_s": 60}).start()
    ae = AE(ae_title="PATIENT")
    ae.add_requested_context(Verification)
    associated = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")  # the deadline is not for it
    assert associated.is_established
    silent = _connect(gate.port)
    trickling = _connect(gate.port)
    request = _associate_rq_bytes()
    sent = 0

    def trickle_until_closed():
        nonlocal sent
        if _closed_by_gate(trickling):
            return True
        try:
            trickling.send(request[sent % len(request):][:1])  # one byte a tick: never a whole PDU
            sent += 1
        except OSError:
            return True
        time.sleep(0.2)
        return False

    try:
        wait_for(trickle_until_closed, 30, "the gate to close a connection trickling its A-ASSOCIATE-RQ", gate)
        wait_for(lambda: _closed_by_gate(silent), 30, "the gate to close a silent connection", gate)
    finally:
        silent.close()
        trickling.close()
    assert sent < len(request)  # closed before its request was whole
    assert "no association within association_deadline_s (2 s)" in gate.log_text()
    assert associated.send_c_echo().Status == 0x0000  # an association outlives the deadline
    associated.release()
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0


def test_idle_sockets_beyond_max_associations_do_not_lock_senders_out(gate_factory, tmp_path):
    gate = gate_factory(RULES_ONLY | {"max_associations": 2, "max_pending_connections": 4,
                                      "association_deadline_s": 5, "network_timeout_s": 60}).start()
    idle = [_connect(gate.port) for _ in range(2 + 4)]  # max_associations + 4 bare connections
    try:
        echo = echoscu(gate.port, aec="ANGIOGATE")
        assert echo.returncode == 0, echo.stdout + echo.stderr
        clip = _xa(tmp_path / "clip.dcm", frames=20, rows=64)
        out = storescu([clip], gate.port, aec="ANGIOGATE")
        assert [status for _, status in store_results(out)] == ["Success"], out.stderr
        wait_for(lambda: all(_closed_by_gate(s) for s in idle), 30,
                 "the gate to close every idle connection", gate)
    finally:
        for s in idle:
            s.close()
    # The cap evicted the oldest; the rest were closed by the deadline or by pynetdicom (which
    # ends a connection it finds closed or unanswerable without a log line of ours): which one
    # differs from run to run, so only the cap's line is certain. The deadline's own line is
    # test_silent_and_trickling_connections_are_closed_at_the_deadline's to check.
    assert "more than max_pending_connections (4)" in gate.log_text()


def test_max_associations_counts_associations(gate_factory):
    gate = gate_factory(RULES_ONLY | {"max_associations": 2, "max_pending_connections": 4}).start()
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit
        held.pop().release()
        fourth = wait_for(lambda: (a := ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")).is_established
                          and a, 30, "a free association slot once one was released", gate)
        fourth.release()
    finally:
        for a in held:
            a.release()
    assert "max_associations (2) reached" in gate.log_text()


def test_association_request_claiming_one_gib_is_refused_unread(gate_factory):
    gate = gate_factory(RULES_ONLY).start()
    sock = _connect(gate.port)
    body = bytes(1 << 20)
    offered = 64 << 20
    taken = 0
    try:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30))
        try:
            while taken < offered:  # a gate that reads the body takes all 64 MiB
                sock.sendall(body)
                taken += len(body)
        except OSError:
            pass
        assert taken < offered, "the gate read 64 MiB of a PDU it should have refused on its header"
        wait_for(lambda: _closed_by_gate(sock), 30, "the gate to close the connection", gate)
    finally:
        sock.close()
    assert "refused a PDU from 127.0.0.1: A-ASSOCIATE-RQ of 1073741824 bytes" in gate.log_text()
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0


def test_p_data_longer_than_max_pdu_bytes_is_aborted(gate_factory):
    gate = gate_factory(RULES_ONLY | {"max_pdu_bytes": 16384}).start()
    ae = AE(ae_title="BIGPDU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    assert assoc.is_established and assoc.acceptor.maximum_length == 16384
    try:
        # straight onto the association's socket: a P-DATA-TF header claiming 1 MiB
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 1 << 20) + bytes(4096))
        wait_for(lambda: assoc.is_aborted or not assoc.is_established, 30,
                 "the gate to abort the association", gate)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert "P-DATA-TF of 1048576 bytes, more than max_pdu_bytes (16384)" in gate.log_text()
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0


def test_associated_peer_trickling_a_pdu_is_closed(gate_factory):
    gate = gate_factory(RULES_ONLY | {"network_timeout_s": 3}).start()
    ae = AE(ae_title="TRICKLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    pdu = struct.pack(">BBL", 0x04, 0, 1000) + bytes(1000)  # a P-DATA-TF within max_pdu_bytes
    sent = 0

    def trickle_until_closed():
        nonlocal sent
        if not assoc.is_established:
            return True
        try:
            raw.send(pdu[sent:sent + 1])  # one byte a tick
            sent += 1
        except OSError:
            return True
        time.sleep(0.2)
        return False

    try:
        wait_for(trickle_until_closed, 60, "the gate to close an association trickling a PDU", gate)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert sent < len(pdu)
    assert "a PDU took more than network_timeout_s (3 s) to arrive" in gate.log_text()
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0


def test_object_larger_than_max_object_bytes_is_refused_and_not_kept(gate_factory, tmp_path):
    gate = gate_factory(RULES_ONLY | {"max_object_bytes": 1 << 20}).start()
    big = _xa(tmp_path / "big.dcm", frames=50, rows=256)    # 3.3 MB
    small = _xa(tmp_path / "small.dcm", frames=20, rows=64)  # 82 kB
    out = storescu([big, small], gate.port, aec="ANGIOGATE")
    statuses = dict(store_results(out))
    assert statuses[str(small)] == "Success", out.stderr
    assert statuses[str(big)].startswith("Refused: OutOfResources"), out.stderr
    big_uid = pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID
    small_uid = pydicom.dcmread(small, stop_before_pixels=True).SOPInstanceUID
    wait_for(lambda: [r["sop_instance_uid"] for r in gate.verdicts()] == [small_uid], 30,
             "only the small object in the verdict log", gate)
    kept = [p for p in gate.spool_dir.rglob("*") if p.is_file()]
    assert all(p.stat().st_size < (1 << 20) for p in kept), kept  # nothing of the big one, not even a temp file
    refused = gate.query("SELECT sop_instance_uid, detail FROM events WHERE kind = 'refused'")
    assert [r["sop_instance_uid"] for r in refused] == [big_uid]
    assert "larger than max_object_bytes (1048576 bytes)" in refused[0]["detail"]
    assert "refused object" in gate.log_text() and "nothing kept" in gate.log_text()


def test_deflate_is_not_accepted_and_senders_fall_back(gate_factory, tmp_path):
    gate = gate_factory(RULES_ONLY).start()
    ae = AE(ae_title="DEFLATER")
    ae.add_requested_context(XRayAngiographicImageStorage, [DeflatedExplicitVRLittleEndian])
    ae.add_requested_context(Verification, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    try:
        accepted = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
    finally:
        if assoc.is_established:
            assoc.release()
    assert accepted == []
    # DCMTK proposing deflate (-xd) with a deflated file: it sends the object uncompressed
    plain = _xa(tmp_path / "plain.dcm", frames=20, rows=64)
    deflated = tmp_path / "deflated.dcm"
    subprocess.run([dcmtk("dcmconv"), "+td", str(plain), str(deflated)], check=True, timeout=60)
    assert pydicom.dcmread(deflated, stop_before_pixels=True).file_meta.TransferSyntaxUID == \
        DeflatedExplicitVRLittleEndian
    out = storescu([deflated], gate.port, aec="ANGIOGATE")
    assert "-xd" in str(out.args)
    assert [status for _, status in store_results(out)] == ["Success"], out.stderr
    rows = wait_for(gate.verdicts, 30, "the object in the verdict log", gate)
    assert rows[0]["transfer_syntax_uid"] != DeflatedExplicitVRLittleEndian
    assert rows[0]["transfer_syntax_uid"] in (ExplicitVRLittleEndian, "1.2.840.10008.1.2")


def test_pdu_limit_holds_under_tls(gate_factory, pki):
    from test_security import _tls_settings

    gate = gate_factory(RULES_ONLY | {"tls": _tls_settings(pki)}).start()
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    with ctx.wrap_socket(_connect(gate.port), server_hostname="127.0.0.1") as tls:
        tls.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30) + bytes(4096))
        wait_for(lambda: _closed_by_gate(tls), 30, "the gate to close the TLS connection", gate)
    assert "refused a PDU from 127.0.0.1: A-ASSOCIATE-RQ of 1073741824 bytes" in gate.log_text()
