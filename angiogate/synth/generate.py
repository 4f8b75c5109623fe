"""Write a labelled synthetic data set: phantom clips as XA DICOM plus labels.csv.

Clips are grouped into phantom patients, each with one study holding several
runs of mixed kinds (one series per run), so training can split by patient as
the paper does. A patient keeps one frame rate (a site records at one rate);
transfer syntaxes alternate. Everything, UIDs included, follows from ``seed``:
the same seed gives byte-identical pixel data.

File names carry no label (``<patient>/S<series>.dcm``); the truth is in
labels.csv only.
"""

from __future__ import annotations

import csv
import math
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .dicom_writer import SYNTAXES, write_xa
from .kinds import KINDS
from .phantom import render_clip_meta

COLUMNS = ("file", "sop_instance_uid", "study_instance_uid", "patient_id", "kind", "label", "reason",
           "frame_rate_hz", "frames", "syntax")


_REAL_FPS_MIX = (0.55, 0.3, 0.15)  # 7.5 / 15 / 30 fps: one large Siemens archive, other sites
_NAMESPACE = uuid.UUID("5f0c6a4e-2b1d-5c47-9a7e-3d2f1b0a9c11")


def _uid(seed, *parts) -> str:
    """Deterministic UUID-derived UID (2.25.<uuid5>).

    pydicom 3's generate_uid(prefix=None, entropy_srcs=...) ignores the
    entropy and returns a random uuid4 UID, so it cannot be used here.
    """
    name = "|".join(["angiogate.synth", str(seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def _description(rng, kind, meta) -> str:
    options = KINDS[kind].series_descriptions
    side = meta.get("side")
    if side:  # a left-side run is not described as an RCA run, and vice versa
        wrong = ("RCA", "RIGHT") if side == "left" else ("LCA", "LEFT C", "LEFT HEART CATH LCA", "CORONARY LEFT")
        options = [d for d in options if not any(w in d.upper() for w in wrong)] or options
    desc = str(rng.choice(options))
    u = rng.random()
    if u < 0.1:
        return ""
    if u < 0.35 and "primary_angle" in meta:
        a, b = meta["primary_angle"], meta["secondary_angle"]
        desc += f" {'LAO' if a >= 0 else 'RAO'} {abs(a):.0f} {'CRA' if b >= 0 else 'CAU'} {abs(b):.0f}"
    return desc.upper() if rng.random() < 0.3 else desc


def _job(job):
    frames, meta = render_clip_meta(job["kind"], job["clip_seed"], job["frames"], job["frame_rate_hz"], job["size"])
    rng = np.random.default_rng(job["clip_seed"])
    write_xa(job["path"], frames, frame_rate_hz=job["frame_rate_hz"], syntax=job["syntax"],
             patient_id=job["patient_id"], patient_name=job["patient_name"],
             study_instance_uid=job["study_uid"], series_instance_uid=job["series_uid"],
             sop_instance_uid=job["sop_uid"], series_number=job["series_number"], instance_number=1,
             series_description=_description(rng, job["kind"], meta), accession_number=job["accession"],
             extra={"PositionerPrimaryAngle": f"{meta.get('primary_angle', 0):g}",
                    "PositionerSecondaryAngle": f"{meta.get('secondary_angle', 0):g}"})
    return job["path"]


def generate(outdir, *, per_kind: int = 2, seed: int = 0, kinds=None, size: int = 512,
             frame_rates=(7.5, 15.0, 30.0), syntaxes=("explicit", "jpeg-lossless"),
             min_seconds: float = 2.6, max_seconds: float = 8.5, min_frames: int = 20, max_frames: int = 100,
             patients: int | None = None, workers: int = 1, frame_rate_weights=None) -> list[dict]:
    """Render ``per_kind`` clips of each kind into ``outdir``; write labels.csv; return its rows.

    A patient's frame rate is drawn from ``frame_rates`` with ``frame_rate_weights`` (default:
    the mix of real archives, mostly 7.5 fps, for the default rates; else uniform). A run lasts
    ``min_seconds``..``max_seconds``, most often about 4.5 s (real runs: median 4.5 s, 30 frames
    at 7.5 fps), and ``min_frames``..``max_frames`` frames.
    """
    kinds = list(KINDS) if kinds is None else list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; expected some of {list(KINDS)}")
    bad = [s for s in syntaxes if s not in SYNTAXES]
    if bad or not syntaxes:
        raise ValueError(f"syntaxes must be from {sorted(SYNTAXES)}")
    if per_kind < 1 or not frame_rates or min_frames < 1 or max_frames < min_frames or max_seconds < min_seconds:
        raise ValueError("per_kind >= 1, frame_rates non-empty, 1 <= min_frames <= max_frames and "
                         "min_seconds <= max_seconds are required")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    order = [k for k in kinds for _ in range(per_kind)]
    rng.shuffle(order)
    n_pat = patients if patients else max(1, math.ceil(len(order) / 6))
    n_pat = min(n_pat, len(order))
    if frame_rate_weights is None:
        frame_rate_weights = _REAL_FPS_MIX if tuple(frame_rates) == (7.5, 15.0, 30.0) else None
    if frame_rate_weights is not None:
        frame_rate_weights = np.asarray(frame_rate_weights, float) / np.sum(frame_rate_weights)
    pat_fps = [float(rng.choice(frame_rates, p=frame_rate_weights)) for _ in range(n_pat)]
    series_count = [0] * n_pat
    jobs, rows = [], []
    for i, kind in enumerate(order):
        p = i % n_pat
        series_count[p] += 1
        sn = series_count[p]
        fps = pat_fps[p]
        seconds = min_seconds + (max_seconds - min_seconds) * rng.beta(2.0, 4.0)
        if kind == "stopped_early":  # recordings cut short
            seconds *= rng.uniform(0.5, 0.9)
        n = int(np.clip(round(seconds * fps), min_frames, max_frames))
        pid = f"SYN{int(seed) % 10000:04d}P{p:04d}"
        rel = f"{pid}/S{sn:03d}.dcm"
        job = dict(kind=kind, clip_seed=int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]),
                   frames=n, frame_rate_hz=fps, size=int(size), syntax=syntaxes[i % len(syntaxes)],
                   path=str(outdir / rel), patient_id=pid, patient_name=f"PHANTOM^P{p:04d}",
                   study_uid=_uid(seed, "study", p), series_uid=_uid(seed, "series", p, sn),
                   sop_uid=_uid(seed, "sop", p, sn), series_number=sn, accession=f"A{int(seed) % 10000:04d}{p:05d}")
        jobs.append(job)
        k = KINDS[kind]
        rows.append(dict(file=rel, sop_instance_uid=job["sop_uid"], study_instance_uid=job["study_uid"],
                         patient_id=pid, kind=kind, label=k.label, reason=k.reason or "", frame_rate_hz=fps,
                         frames=n, syntax=job["syntax"]))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_job, jobs))
    else:
        for job in jobs:
            _job(job)
    with open(outdir / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows
