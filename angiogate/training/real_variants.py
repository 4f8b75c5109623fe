"""Variants of one real satisfactory run, made the way real sets differ from it.

A site rarely has more than a handful of real runs to hand, and the project has one
whole satisfactory run. What real sets do to a good run is known (docs/realism.md,
issue 12): they are recorded at 7.5, 15 or 30 fps, zoomed, with annotation boxes
burned in, lossy-compressed; and a fair negative is the same run's pre-contrast
frames played to the run's length. `make_variants` writes such a set from one
real run, labelled, so a checkpoint can be asked whether it keeps a real good run
whatever the frame rate and overlays, and holds the same run without its contrast.

The variants share one patient and one injection: a check of robustness on real
pixels, never a validation set, and not a figure to quote as clinical performance.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom

from angiogate.clip.preprocess import normalise_intensity, square_resize
from angiogate.synth.dicom_writer import write_xa

RATES_HZ = (7.5, 15.0, 30.0)
LOOKS = ("plain", "zoom", "boxes", "lossy")
ARRIVAL_SIZE = 112  # pixels, as the contrast rule measures


@dataclass(frozen=True)
class Run:
    frames: np.ndarray   # (n, rows, cols) uint8
    rate_hz: float


def read_run(path: Path) -> Run:
    """The run's frames as 8-bit grey and its frame rate (FrameTime, else CineRate, else 30)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    if frames.ndim == 2:
        raise ValueError(f"{path.name}: one frame, not a run")
    if frames.ndim == 4:
        frames = frames.mean(axis=-1)
    frames = frames.astype(np.float32)
    low, high = np.percentile(frames, (0.5, 99.5))
    frames = np.clip((frames - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        frames = 255 - frames
    rate = 1000.0 / float(ds.FrameTime) if ds.get("FrameTime") else float(ds.get("CineRate") or 30)
    return Run(frames, rate)


def arrival_frame(frames: np.ndarray) -> int:
    """Index of the first frame darkened against frame 0 by half the run's largest darkening.

    Half the peak, not a fixed small level: on a real run the catheter's motion and the
    exposure settling darken a frame against the first one by as much as 0.18 before any
    iodine arrives (the right coronary run in shared/samples: iodine from frame 14 of 96,
    which this finds; a level of 0.04 would say frame 2)."""
    clip = np.stack([normalise_intensity(square_resize(f.astype(np.float32), ARRIVAL_SIZE)[None])[0]
                     for f in frames])
    darkening = np.percentile((clip[0][None] - clip).reshape(len(clip), -1), 99, axis=1)
    return max(1, int(np.flatnonzero(darkening >= darkening.max() / 2)[0]))


def at_rate(frames: np.ndarray, source_hz: float, rate_hz: float) -> np.ndarray:
    """Every k-th frame, k = source / rate rounded (a rate above the source's is not made)."""
    step = max(1, round(source_hz / rate_hz))
    return frames[::step]


def played_to_length(frames: np.ndarray, length: int) -> np.ndarray:
    """`frames` played forth and back until there are `length` of them (a looped pre-contrast run)."""
    cycle = np.concatenate([frames, frames[-2:0:-1]]) if len(frames) > 2 else frames
    return cycle[np.arange(length) % len(cycle)]


def apply_look(frames: np.ndarray, look: str, rng: np.random.Generator) -> np.ndarray:
    """`frames` (n, rows, cols) uint8 as a real set presents them: one of `LOOKS`."""
    rows, cols = frames.shape[1:]
    if look == "zoom":  # a 1.25x detector zoom: the centre, magnified
        r0, c0 = rows // 10, cols // 10
        return np.stack([cv2.resize(f[r0:rows - r0, c0:cols - c0], (cols, rows), interpolation=cv2.INTER_LINEAR)
                         for f in frames])
    if look == "boxes":  # small annotation boxes and a label burned into every frame, as one site does
        out = frames.copy()
        for _ in range(3):
            h, w = (int(v) for v in rng.integers(24, 64, size=2))
            y, x = int(rng.integers(0, rows - h)), int(rng.integers(0, cols - w))
            for f in out:
                cv2.rectangle(f, (x, y), (x + w, y + h), 255, 2)
        for f in out:
            cv2.putText(f, "LAO 30 CAU 20", (12, rows - 16), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1)
        return out
    if look == "lossy":  # a lossy round trip, as archives and video exports do
        quality = int(rng.integers(50, 75))
        return np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                      cv2.IMREAD_GRAYSCALE) for f in frames])
    return frames


def derived_uid(*parts: object) -> str:
    """A UID (2.25 form) derived from `parts`: the same parts, the same UID."""
    return "2.25." + str(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16))


def make_variants(source: Path, out_dir: Path, *, seed: int = 0) -> list[dict]:
    """Write the variants of the satisfactory run `source` into `out_dir` with labels.csv.

    Per frame rate not above the source's and per look (`LOOKS`): the run (satisfactory)
    and its pre-contrast frames played to the run's length (unsatisfactory, no_contrast)."""
    run = read_run(source)
    first_contrast = arrival_frame(run.frames)
    if first_contrast >= len(run.frames) // 2:
        raise ValueError(f"{source.name}: no contrast arrives in the first half; not a satisfactory run")
    pre_contrast = run.frames[:max(2, first_contrast - 1)]  # a frame's margin before the arrival
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = derived_uid(source.name, seed, "study")
    rows = []
    for rate in (r for r in RATES_HZ if r <= run.rate_hz + 1e-6):
        whole = at_rate(run.frames, run.rate_hz, rate)
        negative = played_to_length(at_rate(pre_contrast, run.rate_hz, rate) if rate < run.rate_hz
                                    else pre_contrast, len(whole))
        for look in LOOKS:
            for label, frames in (("satisfactory", whole), ("unsatisfactory", negative)):
                name = f"{label[:5]}-{rate:g}fps-{look}.dcm"
                uid = derived_uid(source.name, seed, name)
                write_xa(out_dir / name, np.ascontiguousarray(apply_look(frames, look, rng)), frame_rate_hz=rate,
                         syntax="explicit", patient_id="REALVARIANT", patient_name="REAL^VARIANT",
                         study_instance_uid=study, series_instance_uid=derived_uid(uid, "series"),
                         sop_instance_uid=uid, series_number=len(rows) + 1, instance_number=1,
                         series_description=f"variant of a real run: {look} at {rate:g} fps")
                rows.append({"file": name, "label": label,
                             "reason": "" if label == "satisfactory" else "no_contrast",
                             "frame_rate_hz": rate, "frames": len(frames), "look": look})
    write_labels(out_dir, rows)
    return rows


def write_labels(out_dir: Path, rows: list[dict]) -> None:
    """`out_dir/labels.csv` with `rows` (the columns of the first), as `evaluate` and `retrain` read it."""
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
