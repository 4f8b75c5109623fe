"""Pseudo-runs from real still frames: real trees and backgrounds, a synthetic injection.

Real cine runs are scarce (the project holds one good run); real frames are less so
(shared/realism/cadica: 43 frames, short excerpts of 13 runs of 4 patients). A frame
of a filled coronary tree holds what phantoms miss: real calibres, branching, overlap,
backgrounds and grey mappings. `make_runs` turns each run's frames into a clip a gate
would receive: the tree removed (black top-hat mask, inpainted) for the frames before
the injection, then iodine washing in over about half a second, a plateau, and a
partial wash-out, the run's own frames walked through with a synthetic heart beat that
warps the field (`CardiacMotion`), quantum-like noise on top.

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


def group_frames(folder: Path) -> dict[str, list[Path]]:
    """Frames by run: `<run>_<frame number>.<ext>` (a name without a number is a run of its own)."""
    runs: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in FRAME_SUFFIXES:
            match = re.match(r"(.+?)[_-]?(\d+)$", path.stem)
            runs[match.group(1) if match else path.stem].append(path)
    return dict(runs)


def background(frame: np.ndarray, *, vessel_px: int = 31, margin: float = 0.05) -> np.ndarray:
    """`frame` (uint8) without what is dark and narrower than `vessel_px`: the tree (and the catheter)
    found by a black top-hat, dilated a little, and inpainted from around it. The outer `margin` of
    the field is kept as it is: there the top-hat finds the detector's dark rim (vignetting, the
    collimator's edge), which a pre-contrast frame has too; taken away, the rim would appear
    with the injection."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (vessel_px, vessel_px))
    hat = cv2.morphologyEx(frame, cv2.MORPH_BLACKHAT, kernel).astype(np.float32)
    mask = (cv2.GaussianBlur(hat, (0, 0), 1) > 10).astype(np.uint8) * 255
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    rows, cols = frame.shape
    rim_r, rim_c = int(round(margin * rows)), int(round(margin * cols))
    mask[:rim_r], mask[rows - rim_r:], mask[:, :rim_c], mask[:, cols - rim_c:] = 0, 0, 0, 0
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


class CardiacMotion:
    """A heart's beat as a smooth warp of the whole field, frame by frame.

    CADICA's runs hold 1-8 consecutive frames: cycled, a one-frame run is a still and a
    two-frame run a flicker, which no real run is (and a model rightly distrusts). Real
    coronaries move with every beat, most near the heart and least at the field's edges.
    Here: a beat of 1.0-1.5 Hz (a fast systole, a slower diastole: the fundamental and
    its second harmonic); a displacement field of a few pixels (smooth: a 4 x 4 grid of
    random vectors, upsampled) strongest about a random centre in the middle of the field,
    on top of a translation of 1-3 px; and a breath (0.2-0.3 Hz) shifting it all by up to 4 px:
    peak displacements of about 4-12 px at 512 x 512, scaled with the frame."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]):
        rows, cols = shape
        self.beat_hz, self.breath_hz = rng.uniform(1.0, 1.5), rng.uniform(0.2, 0.3)
        self.lag, self.breath_phase = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        scale = max(rows, cols) / 512.0
        grid = rng.normal(0.0, 1.0, (4, 4, 2)).astype(np.float32) * rng.uniform(3.0, 7.0) * scale
        field = cv2.resize(grid, (cols, rows), interpolation=cv2.INTER_CUBIC)
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        cy, cx = rng.uniform(0.35, 0.65) * rows, rng.uniform(0.35, 0.65) * cols
        weight = np.exp(-(((yy - cy) / (0.45 * rows)) ** 2 + ((xx - cx) / (0.45 * cols)) ** 2))
        self.field = field * weight[..., None] + rng.normal(0.0, 1.0, 2).astype(np.float32) * rng.uniform(1, 3) * scale
        self.breath = rng.normal(0.0, 1.0, 2).astype(np.float32) * rng.uniform(0.0, 4.0) * scale
        self.xx, self.yy = xx, yy

    def phase(self, t: float) -> float:
        """Where in its beat the heart is at `t` seconds: 0 (diastole) .. 1 (end-systole)."""
        a = 2 * np.pi * self.beat_hz * t + self.lag
        return float(np.clip(0.5 - 0.5 * np.cos(a) + 0.15 * np.sin(2 * a), 0.0, 1.0))

    def warp(self, image: np.ndarray, t: float) -> np.ndarray:
        breath = float(np.sin(2 * np.pi * self.breath_hz * t + self.breath_phase))
        move = (self.field * self.phase(t) + self.breath * breath).astype(np.float32)
        return cv2.remap(image, self.xx + move[..., 0], self.yy + move[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)


def pseudo_run(frames: list[np.ndarray], backs: list[np.ndarray], rate_hz: float,
               rng: np.random.Generator, *, level: np.ndarray | None = None, noise: float = 2.0,
               overlay: np.ndarray | None = None) -> np.ndarray:
    """(n, rows, cols) uint8: the frames' tree washing into their backgrounds (`backs`) as `level`
    says (default: `iodine_level` over SECONDS), with `CardiacMotion`: the run's frames are walked
    through with the beat's phase (first frame in diastole, last at end-systole) and the field warped.
    `overlay` (float, rows x cols: grey levels to darken by, a catheter say) is drawn into every frame
    before the warp, so it moves with the heart as what it lies in does."""
    if level is None:
        level = iodine_level(int(round(rate_hz * SECONDS)), rate_hz)
    motion = CardiacMotion(rng, frames[0].shape)
    trees = [f.astype(np.float32) for f in frames]  # once, not once per output frame
    fields = [b.astype(np.float32) for b in backs]
    out = []
    for i, opacity in enumerate(level):
        t = i / rate_hz
        j = int(round(motion.phase(t) * (len(frames) - 1)))
        tree, back = trees[j], fields[j]
        image = back + opacity * (tree - back)
        if overlay is not None:
            image -= overlay
        image = motion.warp(image, t) + rng.normal(0.0, noise, tree.shape)
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
