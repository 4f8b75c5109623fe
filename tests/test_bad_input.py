"""Bad input never crashes the SCP and never vanishes.

Malformed objects are streamed byte for byte (pynetdicom's chunked send) to
a running gate; each is acknowledged only once kept, gets an `error` verdict
with a reason, and follows the fail-closed (held) or fail-open (forwarded)
policy. A hostile SOP Instance UID cannot steer the spool path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid
from pynetdicom import AE, _config

from peers import echoscu


def _xa(path: Path, *, frames: int = 40, rows: int = 64, declared_frames: int | None = None,
        pixel: bool = True, sop_instance_uid: str | None = None, header_rows: int | None = None) -> Path:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.SOPClassUID = XRayAngiographicImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BAD-1", "Test^Bad", "XA"
    ds.SeriesDescription = "Coronary LCA"
    ds.Rows = header_rows or rows
    ds.Columns = header_rows or rows
    ds.NumberOfFrames = declared_frames or frames
    ds.FrameTime = 66.67
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if pixel:
        ds.PixelData = np.random.default_rng(0).integers(0, 255, (frames, rows, rows), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _truncate(path: Path, keep_fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def _bad_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    corpus = {
        "truncated": _truncate(_xa(folder / "truncated.dcm"), 0.6),
        "no_pixel_data": _xa(folder / "nopixels.dcm", pixel=False),
        "frames_lie": _xa(folder / "frames_lie.dcm", frames=10, declared_frames=60),
        "absurd_dimensions": _xa(folder / "absurd.dcm", frames=2, rows=16, header_rows=60000),
    }
    # garbage after a valid file meta header
    garbage = folder / "garbage.dcm"
    head = _xa(folder / "tmp.dcm", frames=2).read_bytes()[:300]
    garbage.write_bytes(head + np.random.default_rng(1).bytes(5000))
    corpus["garbage"] = garbage
    return corpus


def _send_raw(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file's bytes exactly as they are on disk; the statuses answered."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(XRayAngiographicImageStorage, ExplicitVRLittleEndian)
    statuses = []
    assoc = ae.associate("127.0.0.1", port, ae_title="ANGIOGATE")
    assert assoc.is_established
    try:
        for path in files:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False
    return statuses


@pytest.mark.parametrize("policy", ["hold", "forward"])
def test_bad_objects_are_kept_with_error_verdicts(gate_factory, tmp_path, policy):
    corpus = _bad_corpus(tmp_path / "bad")
    gate = gate_factory({"policies": {"on_error": policy, "non_cine": "forward"}, "model": {"path": "none"}}).start()
    statuses = _send_raw(gate.port, list(corpus.values()))
    assert statuses == [0] * len(corpus), statuses  # acknowledged: each was kept
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0  # the SCP is still alive

    verdicts = gate.wait_settled(len(corpus))
    assert len(verdicts) == len(corpus)
    for v in verdicts:
        assert v["decision"] == "error", v
        assert v["reasons"] and v["reason_code"], v
        assert (gate.spool_dir / v["file_path"]).is_file()
        assert v["forward_status"] == ("held" if policy == "hold" else "forwarded")
    reasons = " ".join(v["reasons"] for v in verdicts)
    for expected in ("no pixel data", "absurd dimensions", "NumberOfFrames says 60", "truncated object"):
        assert expected in reasons, reasons
    if policy == "forward":
        assert len(list((gate.work_dir / "var" / "outbox").glob("*.dcm"))) == len(corpus)


def test_bad_objects_forwarded_to_a_dicom_peer_arrive_as_sent(gate_factory, tmp_path, storescp):
    """Fail-open to a real DICOM peer (DCMTK storescp): every bad object the log says was
    forwarded is at the peer under its SOP Instance UID with the Pixel Data the sender
    sent, byte for byte; any the peer refused is `failed` with the peer's answer (one
    attempt), never pending for ever or recorded as delivered."""
    from peers import pixel_sha256, received_pixels

    corpus = _bad_corpus(tmp_path / "bad")
    gate = gate_factory({"policies": {"on_error": "forward", "non_cine": "forward"}, "model": {"path": "none"},
                         "forwarding": {"max_attempts": 1},
                         "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1",
                                           "port": storescp.port}]}).start()
    assert _send_raw(gate.port, list(corpus.values())) == [0] * len(corpus)
    verdicts = gate.wait_settled(len(corpus))
    forwarded = {v["sop_instance_uid"] for v in verdicts if v["forward_status"] == "forwarded"}
    refused = [v for v in verdicts if v["forward_status"] != "forwarded"]
    assert forwarded, verdicts  # the parseable ones (no pixel data, frames lie, absurd dimensions) at least
    assert all(v["forward_status"] == "failed" for v in refused), refused
    for v in refused:
        [f] = gate.query(f"SELECT status, last_error FROM forwards WHERE sop_instance_uid = '{v['sop_instance_uid']}'")
        assert f["status"] == "failed" and f["last_error"], f
    at_peer = received_pixels(storescp)
    assert set(at_peer) == forwarded, (set(at_peer), forwarded)
    for v in verdicts:
        if v["sop_instance_uid"] in forwarded:  # the kept object's pixel data, as the sender sent it
            assert at_peer[v["sop_instance_uid"]] == pixel_sha256(gate.spool_dir / v["file_path"]), v


def test_hostile_uid_stays_inside_the_spool(gate_factory, tmp_path):
    from pydicom import dcmread

    path = _xa(tmp_path / "hostile.dcm")
    ds = dcmread(path)
    hostile = "../../etc/angiogate-x"
    ds.SOPInstanceUID = hostile  # the dataset lies; the request carries a valid UID
    ds.save_as(path)
    gate = gate_factory({"model": {"path": "none"}}).start()
    assert _send_raw(gate.port, [path]) == [0]
    verdicts = gate.wait_settled(1)
    assert verdicts[0]["sop_instance_uid"] == hostile
    kept = (gate.spool_dir / verdicts[0]["file_path"]).resolve()
    assert gate.spool_dir.resolve() in kept.parents and ".." not in verdicts[0]["file_path"]
    assert not Path("/etc/angiogate-x").exists()
