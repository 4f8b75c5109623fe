"""Promotion: a new model becomes the serving model while the gate runs.

One association stays open across the switch; the clip sent before is judged
by the old model (the bundled phantom model when one is installed, else rules
only), the clip sent after by the promoted checkpoint, each exactly once, and
both reach a real DICOM peer (DCMTK storescp) with their pixel data intact.
"""

from __future__ import annotations

import time

import pydicom
from pynetdicom import AE

from angiogate.engines.base import checkpoint_version
from angiogate.engines.model import BUNDLED_MODEL, file_digest, load_checkpoint
from angiogate.modelstore.promote import promote
from peers import pixel_sha256, received_pixels, wait_for


def _serving_before_promotion() -> str:
    """What `model.path: auto` serves before anything is promoted."""
    if not BUNDLED_MODEL.exists():
        return "none (rules only)"
    return checkpoint_version(load_checkpoint(BUNDLED_MODEL)[1], file_digest(BUNDLED_MODEL))


def test_running_gate_switches_to_a_promoted_model(gate_factory, phantoms, tiny_checkpoint, tmp_path, storescp):
    phantom_dir, rows = phantoms
    clips = [phantom_dir / r["file"] for r in rows if r["label"] == "satisfactory"][:2]
    promoted = tmp_path / "models" / "current.pt"
    # threshold 0.99: the untrained checkpoint passes everything, so both clips are forwarded
    gate = gate_factory({"model": {"path": "auto", "promoted_path": str(promoted), "reload_check_s": 0.3,
                                   "threshold": 0.99},
                         "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1",
                                           "port": storescp.port}]}).start()

    ae = AE(ae_title="MODALITY")
    for clip in clips:
        meta = pydicom.dcmread(clip, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(clips[0])).Status == 0
        gate.wait_settled(1)
        promote(tiny_checkpoint, promoted)
        deadline = time.monotonic() + 60
        while "serving model switched" not in gate.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert assoc.is_established  # the switch did not touch the association
        assert assoc.send_c_store(pydicom.dcmread(clips[1])).Status == 0
    finally:
        assoc.release()
    verdicts = gate.wait_settled(2)
    assert [v["judge_attempts"] for v in verdicts] == [1, 1]
    assert verdicts[0]["model_version"].split("/")[0] == _serving_before_promotion()
    assert verdicts[1]["model_version"].startswith("x3d_s-untrained-test+")
    assert verdicts[1]["score"] is not None
    events = gate.query("SELECT kind, COUNT(*) AS n FROM events WHERE kind = 'judged' GROUP BY kind")
    assert events == [{"kind": "judged", "n": 2}]
    # what the peer holds: each clip once, its pixel data byte for byte
    assert [v["decision"] for v in verdicts] == ["satisfactory", "satisfactory"], verdicts
    assert [v["forward_status"] for v in verdicts] == ["forwarded", "forwarded"], verdicts
    sent = {str(pydicom.dcmread(c, stop_before_pixels=True).SOPInstanceUID): pixel_sha256(c) for c in clips}
    wait_for(lambda: len(storescp.received_files()) >= 2, 30, "both clips at storescp", gate)
    assert received_pixels(storescp) == sent and len(storescp.received_files()) == 2
