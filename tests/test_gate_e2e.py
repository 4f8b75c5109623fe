"""The gate end to end against real peers on loopback.

DCMTK storescu pushes phantoms and the public samples into `angiogate serve`
(a real child process); DCMTK storescp or Orthanc is the downstream AE. The
verdict log is read with SQL; what the downstream holds is read from its
files or its REST API.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from peers import count_successes, echoscu, storescu

SAMPLES = ["XA-MONO2-8-12x-catheter.dcm", "XA1_UNC.dcm", "XA1_JPLL.dcm", "XA1_RLE.dcm", "XA1_J2KR.dcm",
           "XA1_J2KI.dcm", "XA1_JLSL.dcm", "XA1_JLSN.dcm", "XA1_JPLY.dcm"]


def _pixel_bytes(path: Path) -> bytes:
    return pydicom.dcmread(path, force=True)["PixelData"].value


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def _push_all(gate, files: list[Path]):
    result = storescu(files, gate.port, aec="ANGIOGATE", timeout=120)
    assert count_successes(result) == len(files), result.stderr[-4000:]
    return result


def _gate_settings(tiny_checkpoint, destinations, **extra) -> dict:
    return {"model": {"path": str(tiny_checkpoint), "threshold": 0.99},
            "destinations": destinations} | extra


def test_end_to_end_storescp(gate_factory, storescp, phantoms, samples_dir, tiny_checkpoint):
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows] + [samples_dir / s for s in SAMPLES]
    gate = gate_factory(_gate_settings(tiny_checkpoint, [
        {"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}])).start()
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0

    _push_all(gate, files)
    verdicts = gate.wait_settled(len(files))

    # One verdict row per stored object, keyed by its SOP Instance UID.
    assert sorted(v["sop_instance_uid"] for v in verdicts) == sorted(_uid(f) for f in files)
    by_uid = {v["sop_instance_uid"]: v for v in verdicts}
    for v in verdicts:
        assert v["decision"] in {"satisfactory", "unsatisfactory", "error", "not_applicable"}
        assert v["reasons"], v
        assert v["model_version"].startswith("x3d_s-untrained-test+")

    # Known outcomes: the JPEG Extended 12-bit sample cannot be decoded -> error, held (fail-closed).
    jply = by_uid[_uid(samples_dir / "XA1_JPLY.dcm")]
    assert (jply["decision"], jply["forward_status"]) == ("error", "held")
    assert "decode" in jply["reasons"]
    # The real 12-frame 30 fps catheter run lasts 0.4 s: held by the duration rule, model not run.
    catheter = by_uid[_uid(samples_dir / "XA-MONO2-8-12x-catheter.dcm")]
    assert catheter["decision"] == "unsatisfactory" and "min_duration" in catheter["failed_rules"]
    assert catheter["score"] is None
    assert by_uid[_uid(samples_dir / "XA1_UNC.dcm")]["decision"] == "not_applicable"
    # Phantom ventriculograms/aortograms/grafts carry descriptions the default rules exclude.
    for r in rows:
        v = by_uid[r["sop_instance_uid"]]
        if v["decision"] == "satisfactory":
            assert v["score"] is not None and v["score"] < 0.99 and v["threshold"] == 0.99

    # The downstream holds exactly the forwarded objects (satisfactory + non-cine by policy),
    # byte-identical pixel data, in the syntax received.
    forwarded = {u for u, v in by_uid.items() if v["forward_status"] == "forwarded"}
    assert forwarded == {u for u, v in by_uid.items() if v["decision"] in ("satisfactory", "not_applicable")}
    assert any(v["decision"] == "satisfactory" for v in verdicts)
    assert any(v["decision"] == "unsatisfactory" for v in verdicts)
    received = {_uid(p): p for p in storescp.received_files()}
    assert set(received) == forwarded
    originals = {_uid(f): f for f in files}
    for uid, path in received.items():
        assert _pixel_bytes(path) == _pixel_bytes(originals[uid]), uid
        sent_syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert sent_syntax == pydicom.dcmread(originals[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID

    # Held clips are released on request, recorded, and arrive.
    held = sorted(u for u, v in by_uid.items() if v["forward_status"] == "held" and v["decision"] == "unsatisfactory")
    out = subprocess.run([sys.executable, "-m", "angiogate", "release", *held[:2], "--config",
                          str(gate.config_path), "--by", "dr-test"], capture_output=True, text=True, timeout=120,
                         cwd=gate.work_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("forward status forwarded") == 2, out.stdout
    released = gate.query("SELECT sop_instance_uid, released_by, forward_status FROM verdicts "
                          "WHERE released_at IS NOT NULL")
    assert {r["sop_instance_uid"] for r in released} == set(held[:2])
    assert all(r["released_by"] == "dr-test" and r["forward_status"] == "forwarded" for r in released)
    assert {_uid(p) for p in storescp.received_files()} == forwarded | set(held[:2])


def test_end_to_end_orthanc(gate_factory, orthanc, phantoms, samples_dir, tiny_checkpoint):
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows] + [samples_dir / "XA1_JPLL.dcm"]
    gate = gate_factory(_gate_settings(tiny_checkpoint, [
        {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}])).start()
    _push_all(gate, files)
    verdicts = gate.wait_settled(len(files))
    forwarded = {v["sop_instance_uid"] for v in verdicts if v["forward_status"] == "forwarded"}
    assert forwarded and orthanc.sop_instance_uids() == forwarded
    originals = {_uid(f): f for f in files}
    for uid in forwarded:
        orthanc_id = orthanc.find_by_sop(uid)
        stored = pydicom.dcmread(__import__("io").BytesIO(orthanc.instance_file(orthanc_id)))
        assert stored["PixelData"].value == _pixel_bytes(originals[uid])
        assert orthanc.transfer_syntax(orthanc_id) == str(
            pydicom.dcmread(originals[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID)


def test_duplicate_resend_is_one_row_and_one_forward(gate_factory, storescp, phantoms, tiny_checkpoint):
    phantom_dir, rows = phantoms
    good = [phantom_dir / r["file"] for r in rows if r["label"] == "satisfactory"][:1]
    gate = gate_factory(_gate_settings(tiny_checkpoint, [
        {"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}])).start()
    _push_all(gate, good)
    gate.wait_settled(1)
    _push_all(gate, good)
    verdicts = gate.wait_settled(1)
    assert len(verdicts) == 1 and verdicts[0]["received_count"] == 2
    assert verdicts[0]["forward_status"] == "forwarded"
    assert len(storescp.received_files()) == 1


def test_restart_resumes_pending_forwards(gate_factory, tmp_path, phantoms, tiny_checkpoint):
    """Downstream down: forwards wait with backoff; SIGKILL the gate; downstream up; restart: all arrive once."""
    from peers import StoreSCP, free_port

    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows]
    down_port = free_port()
    gate = gate_factory(_gate_settings(tiny_checkpoint, [
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": down_port}])).start()
    _push_all(gate, files)
    deadline = __import__("time").monotonic() + 120
    while __import__("time").monotonic() < deadline:
        tried = gate.query("SELECT count(*) AS n FROM forwards WHERE attempts > 0 AND status = 'pending'")[0]["n"]
        judged = gate.query("SELECT count(*) AS n FROM verdicts WHERE status = 'judged'")[0]["n"]
        if judged == len(files) and tried > 0:
            break
        __import__("time").sleep(0.25)
    queued = gate.query("SELECT count(*) AS n FROM forwards WHERE status = 'pending'")[0]["n"]
    assert queued > 0
    errors = gate.query("SELECT last_error FROM forwards WHERE attempts > 0")
    assert all("association" in e["last_error"] for e in errors)
    gate.kill()

    downstream = StoreSCP(tmp_path / "late", aet="STORESCP", port=down_port).start()
    try:
        gate.start()
        verdicts = gate.wait_settled(len(files))
        forwarded = {v["sop_instance_uid"] for v in verdicts if v["forward_status"] == "forwarded"}
        assert len(forwarded) == queued
        received = [_uid(p) for p in downstream.received_files()]
        assert sorted(received) == sorted(forwarded)  # each exactly once
    finally:
        downstream.stop()


def test_uncompressed_fallback_for_a_peer_without_jpeg(gate_factory, tmp_path, phantoms, tiny_checkpoint):
    """A peer that accepts no compressed syntax gets a decompressed copy, pixel for pixel."""
    import io

    import numpy as np

    from peers import Orthanc

    phantom_dir, rows = phantoms
    jpeg = [phantom_dir / r["file"] for r in rows if r["syntax"] == "jpeg-lossless" and r["label"] == "satisfactory"]
    assert jpeg
    peer = Orthanc(tmp_path / "plain", aet="PLAIN", config={
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]}).start()
    try:
        gate = gate_factory(_gate_settings(tiny_checkpoint, [
            {"ae_title": "PLAIN", "host": "127.0.0.1", "port": peer.dicom_port}])).start()
        _push_all(gate, jpeg)
        verdicts = gate.wait_settled(len(jpeg))
        assert all(v["forward_status"] == "forwarded" for v in verdicts)
        sent = gate.query("SELECT transfer_syntax_sent FROM forwards")
        assert {s["transfer_syntax_sent"] for s in sent} <= {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
        for path in jpeg:
            stored = pydicom.dcmread(io.BytesIO(peer.instance_file(peer.find_by_sop(_uid(path)))))
            assert not stored.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(stored.pixel_array, pydicom.dcmread(path).pixel_array)
    finally:
        peer.stop()
