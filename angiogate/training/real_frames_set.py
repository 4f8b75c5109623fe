"""A training set from real still frames: real trees washing in, and the same fields without them.

Phantoms taught the model a world whose trees are thinner and sparser than real ones, so it
held real good runs as grafts (issue 12). Real frames (shared/realism/cadica, CC BY 4.0) hold
real trees; `make_training_set` turns each run of frames into many clips a gate could receive:

- satisfactory: the tree removed for the frames before an injection of random timing (arrival
  0.2-1.5 s, fill 0.3-1.0 s, wash-out), at 7.5, 15 or 30 fps, 3-5 s long;
- unsatisfactory (`no_contrast`): the same fields, tree removed, played for as long: the same
  backgrounds and looks with nothing arriving, so a model cannot keep a clip for its real
  texture alone.

The inpainting removes the run's catheter with its tree, and a field without one is no fair
pre-contrast run (stage 4 kept moving catheter-less fields as satisfactory): most clips, trees
and fields alike, get a synthetic catheter, drawn before the heart's warp so that it moves with
the field it lies in (`pseudo_run`'s overlay).

Each clip gets its own look (mirror, detector zoom 1.0-1.3x, grey mapping, noise). Runs of the
patients in `hold_out` are left out, so the pseudo-runs of those patients (`make_runs`) stay a
check the model has not seen. The timing is synthetic: a training aid, never a validation set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from angiogate.training.real_frames import (iodine_level, patient_of, pseudo_run, read_run, runs_in,
                                            write_pseudo_run)
from angiogate.training.real_variants import derived_uid, write_labels

RATES_HZ = (7.5, 15.0, 30.0)
SECONDS = (3.0, 5.0)
TREE_KIND = "real_frames_tree"
FIELD_KIND = "real_frames_field"


def random_look(rng: np.random.Generator, shape: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """One clip's look, the same for every frame: mirror (p 0.5), zoom 1.0-1.3x about a random
    centre, and a grey mapping (gamma 0.75-1.35, contrast 0.75-1.1, offset -20..+10)."""
    rows, cols = shape
    mirror = rng.random() < 0.5
    zoom = rng.uniform(1.0, 1.3)
    h, w = int(round(rows / zoom)), int(round(cols / zoom))
    top, left = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
    gamma, gain, offset = rng.uniform(0.75, 1.35), rng.uniform(0.75, 1.1), rng.uniform(-20.0, 10.0)
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma * gain + offset, 0, 255).astype(np.uint8)

    def look(frame: np.ndarray) -> np.ndarray:
        out = frame[top:top + h, left:left + w]
        out = cv2.resize(out, (cols, rows), interpolation=cv2.INTER_LINEAR) if zoom > 1.0 else out
        out = cv2.LUT(np.ascontiguousarray(out), table)
        return out[:, ::-1].copy() if mirror else out

    return look


def catheter_darkening(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """float32 (rows, cols): how much a catheter darkens each pixel. A 5-9 px tube (5-7 F at a
    cath lab's magnification) enters from a random edge and curves to a tip in the middle half
    of the field, 25-50 grey levels dark: the inpainting took the run's own catheter away with
    the tree, and a real pre-contrast run always shows one."""
    rows, cols = shape
    along, across = rng.uniform(0.2, 0.8), rng.integers(4)
    start = [(along * cols, -10.0), (cols + 10.0, along * rows), (along * cols, rows + 10.0), (-10.0, along * rows)][across]
    tip = np.array([rng.uniform(0.25, 0.75) * cols, rng.uniform(0.25, 0.75) * rows])
    bend = (np.array(start) + tip) / 2 + rng.normal(0.0, 0.15, 2) * (cols, rows)
    t = np.linspace(0.0, 1.0, 200)[:, None]
    curve = (1 - t) ** 2 * np.array(start) + 2 * (1 - t) * t * bend + t ** 2 * tip
    canvas = np.zeros(shape, np.float32)
    cv2.polylines(canvas, [np.round(curve * 16).astype(np.int32)], False, 1.0, int(rng.integers(5, 10)),
                  cv2.LINE_AA, 4)
    return cv2.GaussianBlur(canvas, (0, 0), 1.0) * rng.uniform(25.0, 50.0)


def make_training_set(folder: Path, out_dir: Path, *, per_run: int = 12, fields_per_run: int = 6,
                      hold_out: tuple[str, ...] = (), seed: int = 0, catheter: float = 0.9) -> list[dict]:
    """Write `per_run` satisfactory pseudo-runs and `fields_per_run` no-contrast clips per run of
    frames in `folder` (runs of `hold_out` patients skipped), with labels.csv as `retrain` reads it;
    a fraction `catheter` of them (trees and fields alike) with a synthetic catheter."""
    runs = runs_in(folder, tuple(hold_out))
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (name, paths) in enumerate(runs, start=1):
        frames, backs = read_run(name, paths)
        patient = patient_of(name)
        for k in range(per_run + fields_per_run):
            tree = k < per_run
            rate = float(rng.choice(RATES_HZ))
            n = int(round(rate * rng.uniform(*SECONDS)))
            look = random_look(rng, frames[0].shape)
            level = (iodine_level(n, rate, arrival_s=rng.uniform(0.2, 1.5), fill_s=rng.uniform(0.3, 1.0),
                                  wash_from=rng.uniform(0.6, 0.9), wash_to=rng.uniform(0.3, 0.8))
                     if tree else np.zeros(n))
            tube = catheter_darkening(rng, frames[0].shape) if rng.random() < catheter else None
            clip = pseudo_run([look(f) for f in frames], [look(b) for b in backs], rate, rng,
                              level=level, noise=rng.uniform(1.0, 4.0), overlay=tube)
            file = f"{name}-{'tree' if tree else 'field'}{k:02d}.dcm"
            uid = derived_uid("real-frames-set", name, k, seed)
            write_pseudo_run(out_dir / file, clip, rate, uid=uid, patient_id=f"REALFRAMES-{patient}",
                             series_number=number, instance_number=k + 1,
                             description="training pseudo-run of real frames")
            rows.append({"file": file, "sop_instance_uid": uid, "patient_id": f"REALFRAMES-{patient}",
                         "kind": TREE_KIND if tree else FIELD_KIND,
                         "label": "satisfactory" if tree else "unsatisfactory",
                         "reason": "" if tree else "no_contrast", "frame_rate_hz": rate, "frames": n, "run": name})
    write_labels(out_dir, rows)
    return rows
