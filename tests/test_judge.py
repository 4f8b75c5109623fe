"""The judge on files, without a network: rules, model, thresholds, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

from angiogate.config import load_config
from angiogate.engines.model import REASON_CLASSES
from angiogate.engines.torch_engine import TorchEngine
from angiogate.judge.verdict import RULES_ONLY_VERSION, Judge
from test_contrast_arrival import synthetic_clip


def _clip(path: Path, *, frames=40, frame_time_ms=66.67, description="Coronary LCA", modality="XA",
          pixels: np.ndarray | None = None) -> Path:
    """An XA clip of random noise (every frame differs wildly, so contrast_arrival passes), or `pixels`."""
    if pixels is None:
        pixels = np.random.default_rng(3).integers(0, 255, (frames, 96, 96), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = XRayAngiographicImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.PatientID = modality, description, "P1"
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape
    ds.FrameTime = frame_time_ms
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return TorchEngine(tiny_checkpoint, device="cpu", threads=1)


def test_model_scores_and_threshold_decide(tmp_path, engine):
    clip = _clip(tmp_path / "c.dcm")
    low = Judge(load_config(model={"threshold": 0.0}), engine).judge(clip)
    high = Judge(load_config(model={"threshold": 1.0}), engine).judge(clip)
    assert low.score == pytest.approx(high.score) and 0.0 < low.score < 1.0
    assert low.decision == "unsatisfactory" and low.reason_code in REASON_CLASSES
    assert high.decision == "satisfactory" and high.reason_code is None
    assert low.model_version.startswith("x3d_s-untrained-test+")
    assert low.frame_indices == [16, 18, 20, 22, 24, 26, 28, 30]  # 8 samples at 7.5 Hz from 1.07 s, 15 fps
    assert set(low.timings_ms) >= {"decode", "preprocess", "inference", "total"}


def test_checkpoint_threshold_used_when_config_has_none(tmp_path, engine):
    judgement = Judge(load_config(), engine).judge(_clip(tmp_path / "c.dcm"))
    assert judgement.threshold == 0.5


def test_failed_rule_skips_the_model(tmp_path, engine):
    judgement = Judge(load_config(), engine).judge(_clip(tmp_path / "c.dcm", description="LV gram"))
    assert judgement.decision == "unsatisfactory" and judgement.score is None
    assert judgement.failed_rules == ["series_description"]
    slow = Judge(load_config(), engine).judge(_clip(tmp_path / "s.dcm", frame_time_ms=250.0))
    assert "frame_rate" in slow.failed_rules and "4.00 Hz" in slow.reasons[0]


def test_rules_only_without_model(tmp_path):
    judgement = Judge(load_config(model={"path": "none"}), None).judge(_clip(tmp_path / "c.dcm"))
    assert judgement.decision == "satisfactory" and judgement.score is None
    assert judgement.model_version == RULES_ONLY_VERSION
    assert "rules only" in judgement.reasons[0]


def test_non_dicom_file_is_an_error(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    judgement = Judge(load_config(), None).judge(junk)
    assert judgement.decision == "error" and judgement.reason_code == "unreadable"


def _rule(judgement, name):
    return next(r for r in judgement.rule_results if r.rule == name)


def test_a_clip_without_arriving_contrast_is_held_but_the_model_still_scores_it(tmp_path, engine):
    clip = _clip(tmp_path / "still.dcm", pixels=synthetic_clip("static"))
    judgement = Judge(load_config(model={"threshold": 1.0}), engine).judge(clip)  # the model passes all
    assert judgement.decision == "unsatisfactory" and judgement.reason_code == "contrast_arrival"
    assert judgement.failed_rules == ["contrast_arrival"]
    assert judgement.score is not None and 0.0 < judgement.score < 1.0 and judgement.threshold == 1.0
    assert judgement.reasons[0].startswith("contrast_arrival: ") and "minimum 0.08" in judgement.reasons[0]
    assert f"P(unsatisfactory)={judgement.score:.3f}" in judgement.reasons[1]
    assert {"decode", "contrast", "preprocess", "inference"} <= set(judgement.timings_ms)


def test_a_clip_with_arriving_contrast_is_judged_by_the_model_as_before(tmp_path, engine):
    clip = _clip(tmp_path / "tree.dcm", pixels=synthetic_clip("tree"))
    passed = Judge(load_config(model={"threshold": 1.0}), engine).judge(clip)
    held = Judge(load_config(model={"threshold": 0.0}), engine).judge(clip)
    assert _rule(passed, "contrast_arrival").passed and float(_rule(passed, "contrast_arrival").detail.split()[0]) > 0.3
    assert passed.decision == "satisfactory" and passed.failed_rules == []
    assert held.decision == "unsatisfactory" and held.reason_code in REASON_CLASSES  # never passes a held clip


def test_contrast_arrival_applies_without_a_model_and_can_be_switched_off(tmp_path):
    clip = _clip(tmp_path / "still.dcm", pixels=synthetic_clip("static"))
    rules_only = Judge(load_config(model={"path": "none"}), None).judge(clip)
    assert rules_only.decision == "unsatisfactory" and rules_only.reason_code == "contrast_arrival"
    assert rules_only.score is None and rules_only.model_version == RULES_ONLY_VERSION
    off = Judge(load_config(model={"path": "none"}, rules={"min_contrast_arrival": None}), None).judge(clip)
    assert off.decision == "satisfactory" and "contrast_arrival" not in [r.rule for r in off.rule_results]


def test_contrast_arrival_is_recorded_beside_a_failed_header_rule(tmp_path, engine):
    clip = _clip(tmp_path / "lv.dcm", pixels=synthetic_clip("tree"), description="LV gram")
    judgement = Judge(load_config(), engine).judge(clip)
    assert judgement.reason_code == "series_description" and judgement.score is None
    assert _rule(judgement, "contrast_arrival").passed
