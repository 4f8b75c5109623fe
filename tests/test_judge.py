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


def _clip(path: Path, *, frames=40, frame_time_ms=66.67, description="Coronary LCA", modality="XA") -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = XRayAngiographicImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.PatientID = modality, description, "P1"
    ds.Rows = ds.Columns = 96
    ds.NumberOfFrames, ds.FrameTime = frames, frame_time_ms
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(3).integers(0, 255, (frames, 96, 96), dtype=np.uint8).tobytes()
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
