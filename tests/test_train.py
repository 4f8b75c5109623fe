"""Tests for the training package: data sources and splits, augmentation, metrics, train/resume/evaluate.

Clips are small multi-frame XA files written here (64x64, 24 frames), so the
tests do not depend on the phantom renderer's speed; one test checks the
phantom source end to end at a tiny size.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from angiogate.engines.model import REASON_CLASSES, load_checkpoint
from angiogate.engines.torch_engine import TorchEngine
from angiogate.training.augment import AugmentConfig, ClipAugment
from angiogate.training.data import ClipRecord, patient_split, reason_balanced_weights, records_from_csv, records_from_verdict_log
from angiogate.training.evaluate import METRICS, binary_metrics, evaluate
from angiogate.training.loop import TrainConfig, train
from angiogate.training.threshold import (binomial_upper_tail, choose_threshold, confident_holds,
                                         keep_rate_threshold, threshold_rule)

XA = "1.2.840.10008.5.1.4.1.1.12.1"


def write_clip(path: Path, frames: np.ndarray, *, patient_id: str, fps: float = 15.0) -> str:
    """A minimal uncompressed XA multi-frame file; returns its SOP Instance UID."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = XA, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = XA, uid, "XA"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, generate_uid(), generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.FrameTime, ds.NumberOfFrames = f"{1000 / fps:.4f}", len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def render(unsatisfactory: bool, rng: np.random.Generator, n: int = 24, size: int = 64) -> np.ndarray:
    """Satisfactory: a dark 'vessel' stripe that darkens over time; unsatisfactory: a bright blob, no stripe."""
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for t in range(n):
        image = 170 + rng.normal(0, 12, (size, size))
        if unsatisfactory:
            cy, cx = rng.integers(16, 48, 2)
            image += 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 120.0)
        else:
            offset = rng.integers(-6, 7)
            stripe = np.abs(xx - yy * 0.5 - 16 - offset) < 3
            image[stripe] -= 40 + 80 * t / n
        frames.append(np.clip(image, 0, 255))
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """24 clips of 12 patients; labels.csv without patient_id (read from the files)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        bad = i % 2 == 1
        pid = f"P{i // 2:02d}"
        rel = f"{pid}/clip{i:02d}.dcm"
        write_clip(folder / rel, render(bad, rng), patient_id=pid, fps=(7.5, 15.0, 30.0)[i % 3])
        rows.append({"file": rel, "label": "unsatisfactory" if bad else "satisfactory",
                     "reason": REASON_CLASSES[i % len(REASON_CLASSES)] if bad else ""})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_records_from_csv_reads_identifiers_from_files(clip_folder):
    records = records_from_csv(clip_folder)
    assert len(records) == 24
    assert {r.patient_id for r in records} == {f"P{i:02d}" for i in range(12)}
    assert all(r.sop_instance_uid.startswith("1.2.") for r in records)
    assert sum(r.target for r in records) == 12
    assert all(r.reason is None for r in records if r.label == "satisfactory")


def test_reason_balanced_weights_give_each_reason_an_equal_share():
    def rec(i, reason):
        return ClipRecord(Path(f"{i}.dcm"), "unsatisfactory" if reason else "satisfactory",
                          reason or None, f"P{i}", f"1.2.{i}")

    records = ([rec(i, None) for i in range(50)] + [rec(100 + i, "non_coronary") for i in range(30)]
               + [rec(200 + i, "graft") for i in range(10)])
    records[60] = ClipRecord(Path("x.dcm"), "unsatisfactory", None, "PX", "1.2.x")  # no reason given
    weights = reason_balanced_weights(records)
    by_group: dict[str, float] = {}
    for r, w in zip(records, weights):
        key = "satisfactory" if not r.target else (r.reason or "(no reason)")
        by_group[key] = by_group.get(key, 0.0) + w
    assert by_group["satisfactory"] == pytest.approx(50)       # satisfactory clips keep weight 1
    unsat = [by_group[k] for k in ("non_coronary", "graft", "(no reason)")]
    assert sum(unsat) == pytest.approx(40)                     # the unsatisfactory total is unchanged
    assert unsat == pytest.approx([40 / 3] * 3)                # and split equally between the reasons
    graft_weight = weights[records.index(rec(200, "graft"))]
    assert graft_weight > weights[records.index(rec(100, "non_coronary"))]


def test_reason_weight_scales_a_reasons_share_of_the_balanced_draws():
    def rec(i, reason):
        return ClipRecord(Path(f"{i}.dcm"), "unsatisfactory" if reason else "satisfactory",
                          reason or None, f"P{i}", f"1.2.{i}")

    records = ([rec(i, None) for i in range(40)] + [rec(100 + i, "graft") for i in range(30)]
               + [rec(200 + i, "device") for i in range(6)] + [rec(300 + i, "no_contrast") for i in range(24)])
    weights = reason_balanced_weights(records, {"graft": 3.0})
    share: dict[str, float] = {}
    for r, w in zip(records, weights):
        share[r.reason or "satisfactory"] = share.get(r.reason or "satisfactory", 0.0) + w
    assert share["satisfactory"] == pytest.approx(40)
    assert share["graft"] + share["device"] + share["no_contrast"] == pytest.approx(60)
    # graft gets three shares of five: 36 of the 60 unsatisfactory draws, the others 12 each
    assert [share["graft"], share["device"], share["no_contrast"]] == pytest.approx([36, 12, 12])
    assert reason_balanced_weights(records, {}) == pytest.approx(reason_balanced_weights(records))
    with pytest.raises(ValueError, match="partial"):
        reason_balanced_weights(records, {"partial": 2.0})      # no training clip has that reason
    with pytest.raises(ValueError, match="> 0"):
        reason_balanced_weights(records, {"graft": 0.0})


def test_reason_weight_needs_balanced_draws_and_is_recorded(clip_folder, tmp_path):
    config = _config(tmp_path / "unbalanced", clip_folder, epochs=1)
    config.reason_weights = {"graft": 2.0}
    with pytest.raises(ValueError, match="--balance-reasons"):
        train(config)
    config.balance_reasons = True
    assert "--balance-reasons --reason-weight graft=2" in config.to_command()


def test_balanced_training_run_draws_by_reason_and_records_it(clip_folder, tmp_path):
    config = _config(tmp_path / "balanced", clip_folder, epochs=1)
    config.balance_reasons = True
    result = train(config)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert "--balance-reasons" in result.model_card.read_text()


def test_patient_split_disjoint_sized_and_stratified():
    rng = random.Random(1)
    records = []
    for p in range(60):
        for c in range(rng.randint(1, 4)):
            bad = rng.random() < 0.3
            records.append(ClipRecord(Path(f"/x/{p}/{c}.dcm"), "unsatisfactory" if bad else "satisfactory",
                                      None, f"P{p}", f"1.2.{p}.{c}"))
    train_set, val_set, test_set = patient_split(records, (0.7, 0.15, 0.15), seed=3)
    patients = [{r.patient_id for r in part} for part in (train_set, val_set, test_set)]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert sorted(r.sop_instance_uid for r in train_set + val_set + test_set) == sorted(r.sop_instance_uid for r in records)
    n = len(records)
    for part, fraction in zip((train_set, val_set, test_set), (0.7, 0.15, 0.15)):
        assert abs(len(part) - fraction * n) <= 0.05 * n
        assert {r.label for r in part} == {"satisfactory", "unsatisfactory"}
    overall = sum(r.target for r in records) / n
    for part in (train_set, val_set, test_set):
        assert abs(sum(r.target for r in part) / len(part) - overall) < 0.12
    assert patient_split(records, seed=3) == (train_set, val_set, test_set)


def test_augment_keeps_shape_dtype_and_transforms_all_frames_alike():
    clip = torch.rand(1, 8, 48, 48, generator=torch.Generator().manual_seed(0))
    flipped = ClipAugment(AugmentConfig(**{**AugmentConfig.none().__dict__, "p_hflip": 1.0}))(
        clip, torch.Generator().manual_seed(1))
    assert torch.equal(flipped, clip.flip(-1))  # every frame flipped, nothing else changed

    full = ClipAugment(AugmentConfig(p_hflip=0.5, p_vflip=0.5, p_perspective=1.0, p_blur=1.0))
    for seed in range(6):
        out = full(clip, torch.Generator().manual_seed(seed))
        assert out.shape == clip.shape and out.dtype == clip.dtype
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert torch.equal(out, full(clip, torch.Generator().manual_seed(seed)))  # deterministic
    # Identical frames stay identical: one geometric/photometric draw serves the whole clip (exposure
    # settling, which changes frame by frame on purpose, off).
    still = clip[:, :1].expand(-1, 8, -1, -1).contiguous()
    no_noise = ClipAugment(AugmentConfig(p_perspective=1.0, p_blur=1.0, noise_std=(0.0, 0.0), p_settle=0.0,
                                         p_zoom=1.0, p_overlay=1.0))
    out = no_noise(still, torch.Generator().manual_seed(5))
    assert not torch.allclose(out, still)
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(8))
    half = no_noise(still.half(), torch.Generator().manual_seed(5))
    assert half.dtype == torch.float16


def test_site_looks_zoom_burn_in_and_settle_as_real_sites_do():
    import dataclasses

    flat = torch.full((1, 12, 112, 112), 0.4)
    none = AugmentConfig.none()
    assert torch.equal(ClipAugment(none)(flat, torch.Generator().manual_seed(0)), flat)
    # Burned-in annotation: bright box outlines and text, the same on every frame, nothing else moved.
    burned = ClipAugment(dataclasses.replace(none, p_overlay=1.0))(flat, torch.Generator().manual_seed(3))
    assert int((burned[0, 0] > 0.6).sum()) >= 20 and float(burned.min()) == pytest.approx(0.4)
    assert all(torch.equal(burned[:, 0], burned[:, t]) for t in range(12))
    # Exposure settling: frame 0 shifted by up to settle_offset, fading to ~nothing by the last third.
    settled = ClipAugment(dataclasses.replace(none, p_settle=1.0, settle_offset=0.1))(
        flat, torch.Generator().manual_seed(3))
    first = float(settled[0, 0].mean() - 0.4)
    assert 0.0 < abs(first) <= 0.1 + 1e-6 and abs(float(settled[0, -1].mean() - 0.4)) < 0.02 * abs(first) + 1e-4
    # Detector zoom: a centred square grows.
    square = torch.zeros(1, 2, 112, 112)
    square[..., 46:66, 46:66] = 1.0
    zoomed = ClipAugment(dataclasses.replace(none, p_zoom=1.0, zoom=(1.3, 1.3)))(
        square, torch.Generator().manual_seed(0))
    assert float((zoomed[0, 0] > 0.5).sum()) == pytest.approx(400 * 1.3 ** 2, rel=0.1)


def test_binary_metrics_match_sklearn():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
    s = np.array([.1, .4, .35, .8, .65, .9, .5, .2, .5, .5, .05, .7, .3, .95, .6])
    for t in (0.3, 0.5, 0.62):
        m = binary_metrics(y, s, t)
        p = (s >= t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, p).ravel()
        assert m["auc"] == pytest.approx(roc_auc_score(y, s))
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert m["precision"] == pytest.approx(precision_score(y, p))
        assert m["sensitivity"] == pytest.approx(recall_score(y, p))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["f1"] == pytest.approx(f1_score(y, p))
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert np.isnan(binary_metrics([1, 1], [0.2, 0.9], 0.5)["auc"])


def test_by_group_counts_each_kind_decided_as_labelled():
    from angiogate.training.evaluate import by_group

    def record(label, reason=None):
        return ClipRecord(Path("x.dcm"), label, reason, "P", "1")

    records = [record("satisfactory"), record("satisfactory"), record("unsatisfactory", "device"),
               record("unsatisfactory", "device"), record("unsatisfactory", "graft"), record("unsatisfactory")]
    table = by_group(records, [0.1, 0.6, 0.7, 0.2, 0.5, 0.9], threshold=0.5)
    assert list(table) == ["satisfactory", "device", "graft", "unsatisfactory (no reason given)"]
    assert (table["satisfactory"]["clips"], table["satisfactory"]["decided_as_labelled"]) == (2, 1)
    assert table["device"]["decided_as_labelled"] == 1 and table["device"]["mean_score"] == pytest.approx(0.45)
    assert table["graft"]["rate"] == 1.0  # 0.5 >= threshold: held, as the judge decides
    # Each unsatisfactory group ranked against both satisfactory clips (0.1, 0.6), whatever the threshold:
    # device 0.7 beats both, 0.2 one: 3 of 4 pairs; graft 0.5: 1 of 2.
    assert table["device"]["auc"] == pytest.approx(0.75) and table["graft"]["auc"] == pytest.approx(0.5)
    assert table["unsatisfactory (no reason given)"]["auc"] == 1.0 and "auc" not in table["satisfactory"]
    from angiogate.training.evaluate import auc_cell

    assert auc_cell(table["device"]) == "0.750" and auc_cell(table["satisfactory"]) == "-"
    no_good = by_group(records[2:], [0.7, 0.2, 0.5, 0.9], threshold=0.5)
    assert no_good["device"]["auc"] is None and auc_cell(no_good["device"]) == "-"


def test_threshold_rule_maximises_youden_and_prefers_sensitivity():
    y = np.array([0, 0, 0, 1, 1, 1])
    assert choose_threshold(y, np.array([.1, .2, .3, .7, .8, .9])) == pytest.approx(0.7)
    # J ties between t=0.4 (sens 1, spec 2/3) and t=0.6 (sens 2/3, spec 1): the lower one wins.
    assert choose_threshold(y, np.array([.1, .2, .5, .4, .6, .9])) == pytest.approx(0.4)


def test_keep_target_threshold_keeps_that_share_of_good_clips_and_holds_the_most():
    y = np.array([0] * 20 + [1] * 5)
    good = np.linspace(0.01, 0.20, 20)  # the two highest: 0.19, 0.20
    scores = np.concatenate([good, [0.05, 0.15, 0.195, 0.5, 0.9]])
    # 95% of 20 good clips: one may be held (0.20); 0.19 must be kept, so the lowest threshold above it.
    t = keep_rate_threshold(y, scores, 0.95)
    assert t == pytest.approx(0.195)
    held_good, held_bad = (scores[y == 0] >= t).sum(), (scores[y == 1] >= t).sum()
    assert (held_good, held_bad) == (1, 3)
    assert keep_rate_threshold(y, scores, 1.0) == pytest.approx(0.5)  # keep all 20: above 0.20
    assert choose_threshold(y, scores, 0.95) == t
    assert choose_threshold(y, scores, 0.5) == pytest.approx(0.11)  # half may go: 0.11-0.20 held, 0.10 kept
    top = np.concatenate([good, [0.01, 0.02, 0.03, 0.04, 0.05]])  # nothing scores above the last good kept
    assert keep_rate_threshold(y, top, 1.0) > 0.20 and (top[y == 0] < keep_rate_threshold(y, top, 1.0)).all()
    with pytest.raises(ValueError):
        keep_rate_threshold(y, scores, 0)


def test_binomial_tail_matches_a_direct_sum():
    from math import comb

    for n, p, k in ((10, 0.5, 7), (40, 0.95, 39), (25, 0.8, 0), (12, 0.3, 13)):
        direct = sum(comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert binomial_upper_tail(n, p, k) == pytest.approx(direct, rel=1e-9, abs=1e-15)
    assert 0 < binomial_upper_tail(3000, 0.95, 2900) < 1  # large n stays finite


def test_a_keep_confidence_lets_fewer_good_clips_go_and_none_from_a_small_split():
    # 150 good clips at 95%: the plain target lets 7 go; shown with 80% confidence, 4 (97.3% kept),
    # and keeping 146 of 150 would happen at most 20% of the time if the true rate were 95%.
    assert confident_holds(150, 0.95, 0.8) == 4
    assert binomial_upper_tail(150, 0.95, 146) <= 0.2 < binomial_upper_tail(150, 0.95, 145)
    assert confident_holds(150, 0.95, 0.9) < 4 <= confident_holds(150, 0.95, 0.5) < 7
    assert confident_holds(20, 0.95, 0.8) == 0  # 0.95 ** 20 = 0.36: 20 clips cannot show it; keep all
    assert confident_holds(1000, 0.95, 0.8) == 43
    rng = np.random.default_rng(3)
    y = np.array([0] * 150 + [1] * 100)
    scores = np.concatenate([rng.beta(2, 8, 150), rng.beta(8, 2, 100)])
    plain = choose_threshold(y, scores, 0.95)
    confident = choose_threshold(y, scores, 0.95, 0.8)
    assert confident > plain
    assert (scores[y == 0] >= plain).sum() == 7 and (scores[y == 0] >= confident).sum() == 4
    assert (scores[y == 1] >= confident).sum() <= (scores[y == 1] >= plain).sum()
    assert "80% confidence" in threshold_rule(0.95, 0.8) and threshold_rule(0.95, 0.8) != threshold_rule(0.95)
    with pytest.raises(ValueError):
        choose_threshold(y, scores, None, 0.8)
    with pytest.raises(ValueError):
        confident_holds(150, 0.95, 1.0)


def test_a_keep_confidence_without_a_target_is_refused_before_anything_is_written(tmp_path):
    config = TrainConfig(out_dir=tmp_path / "run", data=[str(tmp_path / "none")], keep_confidence=0.8)
    with pytest.raises(ValueError, match="keep target"):
        train(config)
    assert not (tmp_path / "run").exists()
    config.keep_target = 0.95
    assert config.to_command().endswith("--keep-target 0.95 --keep-confidence 0.8")


def test_the_model_card_names_pseudo_runs_of_real_frames_apart_from_phantoms():
    from angiogate.training.model_card import _data_lines

    lines = _data_lines({"folders": [
        {"folder": "ph", "clips": 4, "synthetic": True, "real_frames": 0, "synth": None},
        {"folder": "rf", "clips": 3, "synthetic": True, "real_frames": 3, "synth": None}]})
    assert lines[0] == "- labelled folder `ph`: 4 clips (synthetic phantoms)"
    assert lines[1].startswith("- labelled folder `rf`: 3 clips (3 pseudo-runs of real still frames")


def test_records_from_verdict_log_newest_label_wins(tmp_path, clip_folder):
    from datetime import datetime, timedelta

    from sqlalchemy.orm import Session

    from angiogate.store.db import open_database
    from angiogate.store.schema import Label, Verdict

    records = records_from_csv(clip_folder)[:3]
    url = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    engine = open_database(url)
    t0 = datetime(2026, 1, 1)
    with Session(engine) as session:
        for r in records:
            session.add(Verdict(sop_instance_uid=r.sop_instance_uid, patient_id=r.patient_id,
                                file_path=str(r.path.relative_to(clip_folder)), file_size=1, file_sha256="0" * 64))
        session.add(Label(sop_instance_uid=records[0].sop_instance_uid, label="satisfactory", created_at=t0))
        session.add(Label(sop_instance_uid=records[0].sop_instance_uid, label="unsatisfactory", reason="device",
                          created_at=t0 + timedelta(hours=1)))
        session.add(Label(sop_instance_uid=records[1].sop_instance_uid, label="unsatisfactory", reason="partial",
                          created_at=t0 + timedelta(hours=2)))
        session.add(Label(sop_instance_uid=records[1].sop_instance_uid, label="satisfactory", reason=None,
                          created_at=t0 + timedelta(hours=3)))
        session.add(Label(sop_instance_uid="9.9.9", label="satisfactory", created_at=t0))  # no verdict row
        session.commit()
    engine.dispose()
    found = {r.sop_instance_uid: r for r in records_from_verdict_log(url, clip_folder)}
    assert set(found) == {records[0].sop_instance_uid, records[1].sop_instance_uid}
    assert (found[records[0].sop_instance_uid].label, found[records[0].sop_instance_uid].reason) == ("unsatisfactory", "device")
    assert found[records[1].sop_instance_uid].label == "satisfactory"
    assert found[records[0].sop_instance_uid].path == records[0].path


def _config(out_dir: Path, folder: Path, epochs: int, resume: bool = False) -> TrainConfig:
    return TrainConfig(out_dir=out_dir, data=[str(folder)], cache_dir=out_dir.parent / "cache", arch="x3d_s",
                       num_frames=8, crop_size=32, epochs=epochs, batch_size=4, lr=2e-3, patience=10, seed=0,
                       resume=resume, n_bootstrap=50, timing_runs=15, progress=False,
                       threads=1)  # one thread: tiny inputs gain nothing from two, and a busy box hurts two


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clip_folder):
    root = tmp_path_factory.mktemp("train")
    return root, train(_config(root / "run", clip_folder, epochs=3))


def test_training_lowers_loss_and_writes_usable_checkpoint(trained):
    root, result = trained
    losses = [h["train_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert losses[-1] < losses[0]
    assert sum(result.split_sizes.values()) == 24 and min(result.split_sizes.values()) >= 2
    engine = TorchEngine(result.best_checkpoint, device="cpu")
    assert engine.info.arch == "x3d_s" and engine.info.threshold == pytest.approx(result.threshold)
    prediction = engine.predict(np.zeros((2, 3, 8, 32, 32), dtype=np.float32))
    assert prediction.unsatisfactory_probability.shape == (2,)
    assert prediction.reason_probabilities.shape == (2, len(REASON_CLASSES))
    card = result.model_card.read_text()
    assert "Threshold" in card and f"{result.threshold:.4f}" in card and "angiogate retrain" in card
    assert result.test_metrics and set(METRICS) <= set(result.test_metrics["metrics"])


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def test_a_cpu_run_writes_checkpoints_that_load_on_the_cpu(trained):
    """The same checkpoints whatever the device: every tensor saved on the CPU, so a file made on
    a GPU loads without one (torch.load without map_location would fail on a CUDA tensor)."""
    root, result = trained
    best = torch.load(result.best_checkpoint, weights_only=False)
    last = torch.load(result.last_checkpoint, weights_only=False)
    tensors = list(_tensors(best["state_dict"])) + list(_tensors(last["model"])) + list(_tensors(last["optimizer"]))
    assert tensors and {t.device.type for t in tensors} == {"cpu"}
    assert last["scaler"] == {}  # a CPU run's scaler is disabled: nothing to resume
    _, info = load_checkpoint(result.best_checkpoint)
    assert info.extra["device"] == "cpu" and info.extra["train_config"]["device"] == "auto"
    from angiogate.training.device import precision_name

    # fp32, or bf16 mixed precision on a CPU that computes bf16 natively
    assert f"min on cpu ({precision_name('cpu')}, 1 threads)" in result.model_card.read_text()
    assert result.test_metrics["device"] == "cpu" and result.test_metrics["complexity"]["device"] == "cpu"


def test_the_model_card_says_what_the_model_saw_how_it_did_and_what_it_is_not(trained):
    _, result = trained
    card = result.model_card.read_text()
    seen = card[card.index("## What it saw in training"):card.index("## Threshold")]
    assert "training clips (0 phantoms)" in seen and "phantom renderer: none" in seen
    assert "matrices: 64x64" in seen and "frame rates (Hz):" in seen and "7.5" in seen
    assert "Explicit VR Little Endian" in seen and "frames per clip: 24 to 24" in seen
    assert "by kind: " in seen and "satisfactory" in seen
    assert "## What it is not" in card and "Not a clinical device" in card
    assert "## Verdicts on real clips" in card


def test_the_model_card_lists_verdicts_on_real_clips(trained, tmp_path, samples_dir):
    from angiogate.training.model_card import write_model_card

    _, result = trained
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    checkpoint = card_dir / "best.pt"
    checkpoint.write_bytes(result.best_checkpoint.read_bytes())
    config = _config(card_dir, samples_dir, epochs=1)
    card = write_model_card(checkpoint, config=config, sources={}, split_sizes=result.split_sizes,
                            test_metrics=None, threshold=0.5, threshold_rule="r", training_seconds=1.0,
                            best_epoch=1, epochs_run=1,
                            real_samples=[samples_dir / "XA-RCA-96f-30fps-jpeg-baseline.dcm", samples_dir]).read_text()
    real = card[card.index("## Verdicts on real clips"):card.index("## Training")]
    assert "| XA-RCA-96f-30fps-jpeg-baseline.dcm | satisfactory |" in real
    assert "| XA-MONO2-8-12x-catheter.dcm | unsatisfactory | unsatisfactory |" in real  # min_duration holds it
    assert "XA1_UNC" not in real  # single frames are not judged by the model
    assert "real clips with a known label judged as they should be" in real and "not a clinical validation" in real


def test_resume_continues_at_next_epoch_exactly(trained, clip_folder):
    root, full = trained
    partial_dir = root / "partial"
    first = train(_config(partial_dir, clip_folder, epochs=2))
    assert first.epochs_run == 2
    resumed = train(_config(partial_dir, clip_folder, epochs=3, resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    # Same seed, same data: the interrupted run ends where the uninterrupted one did.
    assert resumed.history[2]["train_loss"] == pytest.approx(full.history[2]["train_loss"], rel=1e-4)
    a = torch.load(partial_dir / "last.pt", weights_only=False)["model"]
    b = torch.load(root / "run" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_resuming_a_finished_run_with_a_keep_target_re_chooses_only_its_threshold(trained, clip_folder):
    """A finished run resumed with --keep-target: no epoch runs, the best checkpoint keeps its weights
    and gets the keep-target threshold of its own validation split, and the card says so."""
    import shutil

    root, full = trained
    out = root / "rethreshold"
    shutil.copytree(root / "run", out)
    before_net, before = load_checkpoint(out / "best.pt")
    split = json.loads((out / "split.json").read_text())
    config = _config(out, clip_folder, epochs=3, resume=True)
    config.keep_target = 1.0
    resumed = train(config)
    after_net, after = load_checkpoint(out / "best.pt")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # nothing trained again
    assert all(torch.equal(a, b) for a, b in zip(before_net.state_dict().values(), after_net.state_dict().values()))
    assert after.extra["threshold_rule"] == threshold_rule(1.0) != before.extra["threshold_rule"]
    assert resumed.threshold == after.threshold
    # Keep target 1.0: every satisfactory validation clip scores below the new threshold.
    validation = [r for r in records_from_csv(clip_folder)
                  if r.sop_instance_uid in {v["sop_instance_uid"] for v in split["validation"]}]
    assert any(r.label == "satisfactory" for r in validation)
    scored = evaluate(out / "best.pt", validation, root / "rethreshold-val", n_bootstrap=10, timing_runs=1)
    assert all(s["score"] < after.threshold for s in scored["scores"] if s["label"] == "satisfactory")
    assert f"{after.threshold:.4f}" in resumed.model_card.read_text() and "keep target 1" in \
        resumed.model_card.read_text()


def test_resume_takes_the_schedule_given_now_from_the_current_rate(trained, clip_folder):
    """A run planned longer on resume: a stretched StepLR step applies from here on."""
    root, _ = trained
    out = root / "stretched"
    first = _config(out, clip_folder, epochs=2)
    first.step_size, first.gamma = 2, 0.5  # would halve the rate after epoch 2
    train(first)
    longer = _config(out, clip_folder, epochs=5, resume=True)
    longer.step_size, longer.gamma = 30, 0.5
    resumed = train(longer)
    # The halving after epoch 2 happened; the one the old step would make after epoch 4 does not.
    assert [h["lr"] for h in resumed.history] == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3, 1e-3])
    state = torch.load(out / "last.pt", weights_only=False)["scheduler"]
    assert (state["step_size"], state["last_epoch"]) == (30, 5)


def test_contrast_channels_train_and_serve_through_one_path(clip_folder, tmp_path):
    """--channels grey+contrast: the dataset gives the judge's own input, the checkpoint says
    which channels it takes, and the judge builds them for it."""
    from angiogate.clip.decode import decode_frames
    from angiogate.clip.input import FrameSampling, load_clip
    from angiogate.clip.preprocess import to_model_input
    from angiogate.config import load_config
    from angiogate.judge.verdict import Judge
    from angiogate.training.data import ClipDataset

    records = records_from_csv(clip_folder)[:2]
    sampling = FrameSampling.from_config()
    dataset = ClipDataset(records, num_frames=8, crop_size=32, mean=0.4, std=0.2, sampling=sampling,
                          channels="grey+contrast")
    served = load_clip(records[0].path, num_frames=8, crop_size=32, sampling=sampling, channels="grey+contrast")
    item = dataset[0][0].numpy()
    np.testing.assert_allclose(item, (served - 0.4) / 0.2, atol=2e-2)  # the cache is float16
    assert not np.allclose(item[1], item[0], atol=1e-2)  # not three grey copies

    config = _config(tmp_path / "contrast", clip_folder, epochs=1)
    config.input_channels = "grey+contrast"
    result = train(config)
    engine = TorchEngine(result.best_checkpoint, device="cpu")
    assert engine.info.input_channels == "grey+contrast"
    assert "--channels grey+contrast" in result.model_card.read_text()
    judge = Judge(load_config(model={"path": str(result.best_checkpoint)}), engine)
    judgement = judge.judge(records[0].path)
    assert judgement.score is not None
    frames = decode_frames(records[0].path, judgement.frame_indices)
    expected = engine.predict(to_model_input(frames, size=32, mean=engine.info.mean, std=engine.info.std,
                                             channels="grey+contrast")[None]).unsatisfactory_probability[0]
    assert judgement.score == pytest.approx(float(expected), abs=1e-5)
    with pytest.raises(ValueError, match="training state for another model"):
        other = _config(tmp_path / "contrast", clip_folder, epochs=2, resume=True)
        train(other)  # the saved run took grey+contrast; this one asks for grey


def test_evaluate_writes_metrics_with_cis_and_plots(trained, clip_folder, tmp_path):
    _, result = trained
    out = tmp_path / "eval"
    metrics = evaluate(result.best_checkpoint, records_from_csv(clip_folder), out, n_bootstrap=100, seed=1)
    saved = json.loads((out / "metrics.json").read_text())
    for name in METRICS:
        assert name in saved["metrics"] and len(saved["ci95"][name]) == 2
        low, high = saved["ci95"][name]
        assert low <= high
    assert saved["clips"] == 24 and saved["metrics"] == metrics["metrics"]
    assert saved["complexity"]["params"] > 1e6 and saved["complexity"]["gmac"] > 0
    assert saved["complexity"]["timing_runs"] >= 15
    assert (out / "roc.png").stat().st_size > 1000 and (out / "confusion_matrix.png").stat().st_size > 1000
    assert "| auc |" in (out / "metrics.md").read_text()


@pytest.mark.parametrize("arch", ["r2d_18", "r3d_18"])
def test_baseline_architectures_take_clips(arch):
    from angiogate.engines.model import build_network

    network = build_network(arch, num_frames=4, crop_size=32, num_outputs=7).eval()
    with torch.inference_mode():
        assert network(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 7)


def test_phantom_source_end_to_end(tmp_path):
    from angiogate.training.data import records_from_phantoms

    records = records_from_phantoms(tmp_path / "ph", n_per_kind=1, seed=0, size=64,
                                    min_seconds=1.5, max_seconds=2.0, min_frames=12, max_frames=20)
    from angiogate.synth import KINDS

    assert len(records) == len(KINDS)  # one clip of each kind
    assert {r.label for r in records} == {"satisfactory", "unsatisfactory"}
    again = records_from_phantoms(tmp_path / "ph", n_per_kind=1, seed=0, size=64,
                                  min_seconds=1.5, max_seconds=2.0, min_frames=12, max_frames=20)
    assert again == records  # reused, not re-rendered


def test_retrain_command_promotes_and_score_serves_the_new_model(tmp_path, clip_folder):
    """`angiogate retrain --force-promote` end to end: trains, writes the card, installs the
    checkpoint where model.path auto finds it, and `angiogate score` then judges with it."""
    import subprocess
    import sys

    site = tmp_path / "site.yaml"
    site.write_text("model:\n  promoted_path: models/current.pt\n")
    out_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "angiogate.cli"]
    trained = subprocess.run(cli + ["retrain", "--data", str(clip_folder), "--epochs", "2", "--frames", "8",
                                    "--size", "32", "--lr", "2e-3", "--batch-size", "4", "--threads", "1",
                                    "--out-dir", str(out_dir), "--force-promote", "--config", str(site)],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    promoted = tmp_path / "models" / "current.pt"
    assert promoted.exists() and "promoted" in trained.stdout
    card = (out_dir / "MODEL_CARD.md").read_text()
    assert "--frames 8 --size 32" in card and "--lr 0.002" in card
    _, info = __import__("angiogate.engines.model", fromlist=["load_checkpoint"]).load_checkpoint(promoted)
    assert (info.num_frames, info.crop_size) == (8, 32)

    clip = sorted(clip_folder.glob("*/*.dcm"))[0]
    scored = subprocess.run(cli + ["score", "--json", str(clip), "--config", str(site)],
                            capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    result = json.loads(scored.stdout.splitlines()[0])  # one JSON object per line
    assert result["model_version"].startswith(info.version)
    assert result["score"] is not None and 0.0 <= result["score"] <= 1.0


def test_the_lineage_ends_where_the_starting_file_was_replaced(trained, clip_folder, tmp_path):
    """A path names a file, not a model. The bundled model is fine-tuned from the file it replaces:
    once the child sits at its parent's path, the card's lineage must not present the child as its
    own parent (it did, eight times over) but say the chain ends there."""
    import shutil

    from angiogate.engines.model import file_digest, load_checkpoint
    from angiogate.training.model_card import _lineage_lines

    _, result = trained
    start = tmp_path / "default.pt"
    shutil.copy(result.best_checkpoint, start)
    config = _config(tmp_path / "tuned", clip_folder, epochs=1)
    config.init_from = str(start)
    tuned = train(config)
    recorded = json.loads((tmp_path / "tuned" / "train_config.json").read_text())["init_from_sha256"]
    assert recorded == file_digest(start)
    assert file_digest(start) in tuned.model_card.read_text()  # while the file is the parent: named

    shutil.copy(tuned.best_checkpoint, start)  # bundled: the child now sits at the parent's path
    child = file_digest(start)
    lines = _lineage_lines(str(start), sha256=recorded)
    assert "the chain ends here" in lines[-1] and child[:12] in lines[-1]
    assert not any("that checkpoint" in line for line in lines)
    # a checkpoint from before digests were recorded: the child at the path is no older than itself
    _, info = load_checkpoint(tuned.best_checkpoint)
    lines = _lineage_lines(str(start), child_version=info.version)
    assert "no older than the model it started" in lines[-1]
    # and a chain that comes back to a checkpoint it already named ends there too
    lines = _lineage_lines(str(start), seen=frozenset({child}))
    assert len(lines) == 2 and "the chain ends here" in lines[-1]


def test_init_from_starts_at_the_checkpoint_weights_at_another_input_size(trained, clip_folder, tmp_path):
    """Fine-tuning: a run started from a checkpoint begins with its weights, even at a new size."""
    from angiogate.engines.model import load_checkpoint
    from angiogate.training.loop import initial_weights

    _, result = trained
    config = _config(tmp_path / "bigger", clip_folder, epochs=1)
    config.crop_size, config.init_from = 48, str(result.best_checkpoint)
    weights = initial_weights(result.best_checkpoint, config)
    source, _ = load_checkpoint(result.best_checkpoint)
    assert all(torch.equal(weights[k], v) for k, v in source.state_dict().items())
    tuned = train(config)
    _, info = load_checkpoint(tuned.best_checkpoint)
    card = tuned.model_card.read_text()
    assert info.crop_size == 48 and "initialised from" in card
    # the card names the starting checkpoint's bytes and the command that made it
    from angiogate.engines.model import file_digest

    assert file_digest(result.best_checkpoint) in card
    _, start = load_checkpoint(result.best_checkpoint)
    assert f"made by `{start.extra['train_config']['command']}`" in card
    other = _config(tmp_path / "other", clip_folder, epochs=1)
    other.arch, other.init_from = "r2d_18", str(result.best_checkpoint)
    with pytest.raises(ValueError, match="x3d_s checkpoint"):
        initial_weights(result.best_checkpoint, other)


@pytest.mark.parametrize("pair", ["grafts=2", "graft=0", "graft=two", "graft"])
def test_retrain_rejects_a_malformed_reason_weight(pair, tmp_path):
    from typer.testing import CliRunner

    from angiogate.cli import app

    result = CliRunner().invoke(app, ["retrain", "--data", str(tmp_path), "--balance-reasons",
                                      "--reason-weight", pair, "--out-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "--reason-weight" in result.output and not (tmp_path / "run").exists()
