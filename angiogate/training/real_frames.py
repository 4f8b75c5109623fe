"""Pseudo-runs from real still frames: real trees and backgrounds, a synthetic injection.

Real cine runs are scarce (the project holds one good run); real frames are less so
(shared/realism/cadica: 43 frames, short excerpts of 13 runs of 4 patients). A frame
of a filled coronary tree holds what phantoms miss: real calibres, branching, overlap,
backgrounds and grey mappings. `make_runs` turns each run's frames into a clip a gate
would receive: the tree removed (black top-hat mask, inpainted) for the frames before
the injection, then iodine washing in over about half a second, a plateau, and a
partial wash-out, the run's own frames cycled for motion, quantum-like noise on top.

Only satisfactory clips are written: a background left by inpainting is not a fair
pre-contrast frame (the catheter goes with the tree), so it makes no negative. What
the set measures is whether a model keeps good runs whose trees are real; the
timing is synthetic, so it is a proxy, never a validation set, and never a figure to
quote as clinical performance.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from angiogate.synth.dicom_writer import write_xa
from angiogate.training.real_variants import derived_uid, write_labels

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RATES_HZ = (7.5, 15.0)
SECONDS = 4.0          # clip length
ARRIVAL_S = 0.8        # iodine reaches the ostium
FILL_S = 0.6           # ... and fills the tree
MOTION_HZ = 7.5        # the run's frames are cycled at this rate, whatever the clip's


def group_frames(folder: Path) -> dict[str, list[Path]]:
    """Frames by run: `<run>_<frame number>.<ext>` (a name without a number is a run of its own)."""
    runs: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in FRAME_SUFFIXES:
            match = re.match(r"(.+?)[_-]?(\d+)$", path.stem)
            runs[match.group(1) if match else path.stem].append(path)
    return dict(runs)


def background(frame: np.ndarray, *, vessel_px: int = 31) -> np.ndarray:
    """`frame` (uint8) without what is dark and narrower than `vessel_px`: the tree (and the catheter)
    found by a black top-hat, dilated a little, and inpainted from around it."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (vessel_px, vessel_px))
    hat = cv2.morphologyEx(frame, cv2.MORPH_BLACKHAT, kernel).astype(np.float32)
    mask = (cv2.GaussianBlur(hat, (0, 0), 1) > 10).astype(np.uint8) * 255
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    return cv2.inpaint(frame, mask, 9, cv2.INPAINT_TELEA)


def iodine_level(n: int, rate_hz: float, *, arrival_s: float = ARRIVAL_S, fill_s: float = FILL_S,
                 wash_from: float = 0.8, wash_to: float = 0.5) -> np.ndarray:
    """Fraction of the tree's full opacity in each of `n` frames: none before `arrival_s`, a linear
    fill over `fill_s`, a plateau, and a wash-out to `wash_to` from `wash_from` of the clip's length."""
    t = np.arange(n) / rate_hz
    seconds = n / rate_hz
    level = np.clip((t - arrival_s) / fill_s, 0.0, 1.0)
    wash = np.clip((t - wash_from * seconds) / max((1.0 - wash_from) * seconds, 1e-6), 0.0, 1.0)
    return level * (1.0 - (1.0 - wash_to) * wash)


def pseudo_run(frames: list[np.ndarray], backs: list[np.ndarray], rate_hz: float,
               rng: np.random.Generator, *, level: np.ndarray | None = None, noise: float = 2.0) -> np.ndarray:
    """(n, rows, cols) uint8: the frames' tree washing into their backgrounds (`backs`) as `level`
    says (default: `iodine_level` over SECONDS), the frames cycled forth and back at MOTION_HZ."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    if level is None:
        level = iodine_level(int(round(rate_hz * SECONDS)), rate_hz)
    step = max(1, int(round(rate_hz / MOTION_HZ)))
    out = []
    for i, opacity in enumerate(level):
        j = order[(i // step) % len(order)]
        tree, back = frames[j].astype(np.float32), backs[j].astype(np.float32)
        image = back + opacity * (tree - back) + rng.normal(0.0, noise, tree.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def patient_of(run: str) -> str:
    """The patient of a run named `<patient>_v<number>` (CADICA's naming); else the run itself."""
    match = re.match(r"(.+?)[_-]v\d+$", run)
    return match.group(1) if match else run


def runs_in(folder: Path, hold_out: tuple[str, ...] = ()) -> list[tuple[str, list[Path]]]:
    """(run, frame paths) of each run of frames in `folder`, by name, the runs of the `hold_out`
    patients left out; a ValueError when none is left."""
    runs = sorted((name, paths) for name, paths in group_frames(folder).items() if patient_of(name) not in hold_out)
    if not runs:
        raise ValueError(f"{folder}: no runs of frames ({', '.join(FRAME_SUFFIXES)})"
                         + (f" besides those of {', '.join(hold_out)}" if hold_out else ""))
    return runs


def read_run(name: str, paths: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A run's frames (uint8 grey) and each one's `background`; a clear error for unreadable
    frames or frames of different sizes."""
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    if any(f is None for f in frames) or len({f.shape for f in frames}) != 1:
        raise ValueError(f"{name}: unreadable frames or frames of different sizes")
    return frames, [background(f) for f in frames]


def write_pseudo_run(path: Path, clip: np.ndarray, rate_hz: float, *, uid: str, patient_id: str,
                     series_number: int, instance_number: int, description: str) -> None:
    """`clip` as an XA file (Explicit VR LE), its study and series UIDs derived from `uid`."""
    write_xa(path, clip, frame_rate_hz=rate_hz, syntax="explicit", patient_id=patient_id,
             patient_name="REAL^FRAMES", study_instance_uid=derived_uid(uid, "study"),
             series_instance_uid=derived_uid(uid, "series"), sop_instance_uid=uid, series_number=series_number,
             instance_number=instance_number, series_description=description)


def make_runs(folder: Path, out_dir: Path, *, rates_hz=RATES_HZ, seed: int = 0) -> list[dict]:
    """Write a satisfactory pseudo-run per run of frames in `folder` and frame rate, with labels.csv."""
    runs = runs_in(folder)
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (name, paths) in enumerate(runs, start=1):
        frames, backs = read_run(name, paths)
        for rate in rates_hz:
            file = f"{name}-{rate:g}fps.dcm"
            uid = derived_uid("real-frames", name, rate, seed)
            clip = pseudo_run(frames, backs, rate, rng)
            write_pseudo_run(out_dir / file, clip, rate, uid=uid, patient_id=f"REALFRAMES-{name}",
                             series_number=number, instance_number=1, description="pseudo-run of real frames")
            rows.append({"file": file, "label": "satisfactory", "reason": "", "frame_rate_hz": rate,
                         "frames": len(clip), "source_frames": len(frames), "run": name})
    write_labels(out_dir, rows)
    return rows
