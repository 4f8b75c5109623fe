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
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except OSError:
        return True
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