"""Pseudo-runs of real frames (angiogate real-frames): real trees and backgrounds, a synthetic
injection; and the bundled model keeps them through `angiogate score`. CADICA frames (CC BY 4.0,
Jimenez-Partinen et al., Expert Systems 2024) from ../shared/realism/cadica."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from angiogate.training.data import records_from_csv
from angiogate.training.real_frames import background, group_frames, iodine_level

CADICA = Path(__file__).resolve().parents[2] / "shared" / "realism" / "cadica"
pytestmark = pytest.mark.skipif(not CADICA.is_dir(), reason="../shared/realism/cadica is not here")


def test_frames_are_grouped_by_run():
    runs = group_frames(CADICA)
    assert len(runs) == 13 and sum(len(v) for v in runs.values()) == 43
    assert [p.name for p in runs["p26_v1"]][:2] == ["p26_v1_00020.png", "p26_v1_00021.png"]


def test_the_background_loses_the_tree_and_keeps_the_field():
    frame = cv2.imread(str(CADICA / "p26_v1_00020.png"), cv2.IMREAD_GRAYSCALE)
    back = background(frame)
    tree = cv2.morphologyEx(frame, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (31, 31))) > 40
    rim = np.ones(frame.shape, bool)
    rim[26:-26, 26:-26] = False  # the outer 5%: the detector's dark rim, which a pre-contrast frame has too
    assert np.array_equal(back[rim], frame[rim])
    tree &= ~rim
    assert tree.mean() > 0.01  # a filled tree: over 1% of the field
    # Where the tree was, the background is lighter by tens of grey levels; elsewhere nearly unchanged.
    assert float((back.astype(int) - frame)[tree].mean()) > 25
    far = ~cv2.dilate(tree.astype(np.uint8), np.ones((15, 15))).astype(bool)
    change = np.abs(back.astype(int) - frame)[far]
    assert far.mean() > 0.8 and np.median(change) == 0 and change.mean() < 6  # small dark details go too


def test_iodine_arrives_fills_and_washes_half_out():
    level = iodine_level(60, 15.0)
    assert level[:13].max() == 0 and level[22:48].min() == 1.0 and level[21] > 0.99 and 0.5 <= level[-1] < 0.6


def _made_and_scored(out: Path, *options: str) -> tuple[list[dict], list[dict]]:
    """`angiogate real-frames` into `out` with `options`, then every clip through `angiogate
    score` (the bundled model): the labels.csv rows and the verdicts, in the same order."""
    # Run where no site state is (var/ of the checkout may hold a promoted model or export records):
    # model.path auto then serves the bundled model, and nothing is written into the checkout.
    made = subprocess.run([sys.executable, "-m", "angiogate.cli", "real-frames", str(CADICA), str(out), *options],
                          capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert made.returncode == 0, made.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "labels.csv")))
    scored = subprocess.run([sys.executable, "-m", "angiogate.cli", "score", "--json",
                             *[str(out / r["file"]) for r in rows]], capture_output=True, text=True, timeout=600,
                            cwd=out.parent)
    assert scored.returncode in (0, 1), scored.stderr[-2000:]
    verdicts = [json.loads(line) for line in scored.stdout.splitlines() if line.strip()]
    assert len(verdicts) == len(rows)
    # The model judged every one: a clip the header rules hold must not count as held by the model.
    assert all(v["score"] is not None for v in verdicts), verdicts
    return rows, verdicts


def test_the_bundled_model_keeps_good_runs_of_real_trees(tmp_path):
    out = tmp_path / "runs"
    rows, verdicts = _made_and_scored(out)
    assert len(rows) == 26 and {r["label"] for r in rows} == {"satisfactory"}
    clip = pydicom.dcmread(out / rows[0]["file"]).pixel_array
    assert clip.shape == (int(rows[0]["frames"]), 512, 512)
    by_run: dict[str, list[str]] = {}
    for row, verdict in zip(rows, verdicts):
        by_run.setdefault(row["run"], []).append(verdict["decision"])
    kept = sum(all(d == "satisfactory" for d in decisions) for decisions in by_run.values())
    # 12 of the 13 runs kept at both rates with the bundled model; a model holding real trees fails.
    assert kept >= 11, by_run


def test_the_bundled_model_holds_real_backgrounds_without_contrast(tmp_path):
    """A fresh draw of the training recipe (seeds no training run used; the four patients the
    model's lineage trained on): the real fields, tree inpainted and no iodine, must be held, and
    the trees with a synthetic injection kept. The contrast rule holds almost none of the fields
    (their heart motion and catheter darken 0.10-0.46), so the network is the line here."""
    rows, verdicts = _made_and_scored(tmp_path / "fresh", "--train", "2", "--seed", "2102")
    fields = [r for r in rows if r["label"] == "unsatisfactory"]
    assert len(rows) == 39 and len(fields) == 13 and {r["reason"] for r in fields} == {"no_contrast"}
    held = [v["decision"] == "unsatisfactory" for v in verdicts]
    fields_held = sum(h for r, h in zip(rows, held) if r["label"] == "unsatisfactory")
    trees_kept = sum(not h for r, h in zip(rows, held) if r["label"] == "satisfactory")
    detail = [(r["file"], v["decision"], v["score"] and round(v["score"], 3)) for r, v in zip(rows, verdicts)]
    # The bundled model (candidate 22), torch fp32: fields held 12 of 13, trees kept 24 of 26
    # (candidate 20, bundled before it: 11 and 25; candidate 17: 12 and 24). Candidate 12 held 7
    # of these fields and fails here; a model that holds everything fails on the trees.
    assert fields_held >= 10, detail
    assert trees_kept >= 22, detail


def _darkening(clip: np.ndarray) -> float:
    """The most any sampled frame darkened against the first (99th percentile of the grey drop)."""
    first = clip[0].astype(np.int16)
    return max(float(np.percentile(first - frame.astype(np.int16), 99)) for frame in clip[1:])


def test_the_training_set_holds_trees_and_their_fields_apart(tmp_path):
    out = tmp_path / "train"
    made = subprocess.run([sys.executable, "-m", "angiogate.cli", "real-frames", str(CADICA), str(out), "--train", "4",
                           "--hold-out", "p14", "--hold-out", "p19", "--hold-out", "p26", "--seed", "3"],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    records = records_from_csv(out)  # as `retrain --data` reads it
    assert {r.patient_id for r in records} == {"REALFRAMES-p4"}  # the held-out patients' runs left out
    trees = [r for r in records if r.label == "satisfactory"]
    fields = [r for r in records if r.label == "unsatisfactory"]
    assert len(trees) == 2 * 4 and len(fields) == 2 * 2 and {r.reason for r in fields} == {"no_contrast"}
    rates, darkening = set(), {}
    for record in records:
        ds = pydicom.dcmread(record.path)
        rates.add(round(1000.0 / float(ds.FrameTime), 1))
        clip = ds.pixel_array
        assert clip.shape[1:] == (512, 512) and clip.shape[0] >= 3 * 7.5 - 1
        darkening.setdefault((record.path.name.split("-")[0], record.label), []).append(_darkening(clip))
    assert len(rates) >= 2 and rates <= {7.5, 15.0, 30.0}
    # The real fields move (the heart beats between a run's frames), so they darken a little here
    # and there; iodine arriving in the tree darkens more than any field of its run.
    for run in ("p4_v1", "p4_v5"):
        assert min(darkening[run, "satisfactory"]) > max(darkening[run, "unsatisfactory"]) + 10, darkening


def test_hold_out_is_for_the_training_set_only(tmp_path):
    made = subprocess.run([sys.executable, "-m", "angiogate.cli", "real-frames", str(CADICA), str(tmp_path / "x"),
                           "--hold-out", "p14"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 2 and "--hold-out needs --train" in made.stderr


def test_a_catheter_enters_from_an_edge_and_moves_with_the_heart():
    from angiogate.training.real_frames import pseudo_run
    from angiogate.training.real_frames_set import catheter_darkening

    rng = np.random.default_rng(0)
    for _ in range(5):
        dark = catheter_darkening(rng, (512, 512))
        tube = dark > 10
        assert 0.002 < tube.mean() < 0.03  # a tube, not a blob or a hair
        assert tube[0].any() or tube[-1].any() or tube[:, 0].any() or tube[:, -1].any()  # from outside the field
        assert not tube[192:320, 192:320].all()
    flat = [np.full((512, 512), 150, np.uint8)]
    out = pseudo_run(flat, flat, 15.0, rng, level=np.zeros(30), noise=0.0, overlay=dark)
    darkened = [int(((150 - f.astype(int)) > 10).sum()) for f in out]
    assert min(darkened) > 0.8 * tube.sum()  # in every frame
    # and it moves with the heart: where the tube lies changes from frame to frame
    moved = [int((((150 - a.astype(int)) > 10) ^ ((150 - b.astype(int)) > 10)).sum()) for a, b in zip(out, out[1:])]
    assert max(moved) > 0.05 * tube.sum(), moved
