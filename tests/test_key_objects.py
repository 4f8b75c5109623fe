"""The verdict in DICOM: Key Object Selection documents for destinations that opt in.

The document is checked with dicom3tools' dciodvfy (the IOD validator) and
delivered through a real gate to a real Orthanc, after the clips it
references, in the same patient and study; a destination that did not opt
in gets the clips only.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from peers import count_successes, need, storescu

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _dciodvfy_errors(path: Path) -> list[str]:
    need(shutil.which("dciodvfy"), "dciodvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _codes(items, attribute="ConceptNameCodeSequence") -> set[tuple[str, str]]:
    return {(c.CodeValue, c.CodingSchemeDesignator) for item in items for c in item.get(attribute, [])}


def test_document_is_a_valid_key_object_selection_of_interest(phantoms, tmp_path):
    from angiogate.forward.key_objects import Reference, key_object_selection

    phantom_dir, rows = phantoms
    clips = [pydicom.dcmread(phantom_dir / r["file"], stop_before_pixels=True) for r in rows[:3]]
    references = [Reference(str(c.SOPClassUID), str(c.SOPInstanceUID), str(c.SeriesInstanceUID)) for c in clips]
    document = key_object_selection(clips[0], references, description="judged by angiogate; model m; threshold 0.5")
    path = tmp_path / "kos.dcm"
    document.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == KOS and ds.Modality == "KO"
    assert (ds.PatientID, ds.StudyInstanceUID) == (clips[0].PatientID, clips[0].StudyInstanceUID)
    assert _codes([ds]) == {("113000", "DCM")}  # "Of Interest", never a rejection title (113001...)
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    text = [i for i in ds.ContentSequence if i.ValueType == "TEXT"]
    assert _codes(text) == {("113012", "DCM")} and "threshold 0.5" in text[0].TextValue
    images = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in ds.ContentSequence if i.ValueType == "IMAGE"]
    assert images == [r.sop_instance_uid for r in references]
    # and the validator does find a broken one
    del ds.CurrentRequestedProcedureEvidenceSequence
    ds.save_as(path)
    assert _dciodvfy_errors(path)


def test_gate_sends_each_judged_series_a_document_after_its_clips(gate_factory, orthanc, storescp, phantoms,
                                                                 tiny_checkpoint, tmp_path):
    from test_bad_input import _xa

    phantom_dir, rows = phantoms
    good = [r for r in rows if r["label"] == "satisfactory"][:2]
    held = _xa(tmp_path / "short.dcm", frames=4)  # fewer frames than rules.min_frames: held
    files = [phantom_dir / r["file"] for r in good] + [held]
    gate = gate_factory({
        "model": {"path": str(tiny_checkpoint), "threshold": 0.99},
        "forwarding": {"retry_base_s": 0.5, "retry_cap_s": 2, "idle_release_s": 1, "key_object_quiet_s": 1},
        "destinations": [{"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                          "key_objects": True},
                         {"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}]}).start()
    result = storescu(files, gate.port, aec="ANGIOGATE", timeout=120)
    assert count_successes(result) == len(files)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        documents = gate.query("SELECT * FROM verdicts WHERE reason_code = 'key_object'")
        sent = gate.query("SELECT f.sent_at FROM forwards f JOIN verdicts v ON v.id = f.verdict_id "
                          "WHERE v.reason_code = 'key_object' AND f.status = 'sent'")
        if len(documents) == len(good) and len(sent) == len(good):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"documents not sent: {gate.query('SELECT * FROM forwards')}\n{gate.log_text()[-4000:]}")
    verdicts = {v["sop_instance_uid"]: v for v in gate.verdicts()}
    held_uid = str(pydicom.dcmread(held, stop_before_pixels=True).SOPInstanceUID)
    assert verdicts[held_uid]["forward_status"] == "held"
    for document in documents:
        stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.find_by_sop(document["sop_instance_uid"]))))
        [reference] = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in stored.ContentSequence
                       if i.ValueType == "IMAGE"]
        clip = verdicts[str(reference)]
        assert clip["decision"] == "satisfactory" and clip["study_instance_uid"] == stored.StudyInstanceUID
        clip_sent = gate.query("SELECT sent_at FROM forwards WHERE verdict_id = :v AND destination LIKE 'ORTHANC%'",
                               v=clip["id"])[0]["sent_at"]
        document_sent = gate.query("SELECT sent_at FROM forwards WHERE verdict_id = :v", v=document["id"])[0]
        assert document_sent["sent_at"] >= clip_sent  # after the clip it references
        assert held_uid not in str(stored)
        path = gate.work_dir / "kos-from-orthanc.dcm"
        stored.save_as(path, enforce_file_format=True)
        assert _dciodvfy_errors(path) == []
    # the destination that did not opt in got the satisfactory clips and no document
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in storescp.received_files()]
    assert {str(d.SOPClassUID) for d in received} != {KOS} and all(d.SOPClassUID != KOS for d in received)
    assert len(received) == len(good)
    # looked at again, a settled series gets no second document
    time.sleep(3)
    assert len(gate.query("SELECT id FROM verdicts WHERE reason_code = 'key_object'")) == len(good)
