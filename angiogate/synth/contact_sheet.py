"""Contact sheet: one row per clip, a few frames across time, for a person to look at.

``contact_sheet(source, png_path)`` accepts either a directory written by
``generate`` (it reads ``labels.csv`` and the DICOM files) or a list of clips,
each a ``(frames, caption)`` tuple or a dict with ``frames`` and optional
``kind``/``label``/``reason``/``frame_rate_hz``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def _load_dir(outdir: Path, limit: int | None, by_kind: bool):
    import pydicom

    with open(outdir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if by_kind:  # group rows of a kind together, in catalogue order
        from .kinds import KINDS

        order = {k: i for i, k in enumerate(KINDS)}
        rows.sort(key=lambda r: (order.get(r["kind"], len(order)), r["file"]))
    clips = []
    for row in rows[:limit]:
        ds = pydicom.dcmread(outdir / row["file"])
        arr = ds.pixel_array
        clips.append(dict(frames=arr if arr.ndim == 3 else arr[None], kind=row["kind"], label=row["label"],
                          reason=row["reason"], frame_rate_hz=float(row["frame_rate_hz"]), file=row["file"]))
    return clips


def _caption(clip) -> list[str]:
    if isinstance(clip, dict):
        lines = [str(clip.get("kind", ""))]
        lab = clip.get("label")
        if lab:
            lines.append(lab + (f" ({clip['reason']})" if clip.get("reason") else ""))
        n = len(clip["frames"])
        fps = clip.get("frame_rate_hz")
        lines.append(f"{n} fr" + (f" @ {fps:g} fps" if fps else ""))
        if clip.get("file"):
            lines.append(str(clip["file"])[-24:])
        return lines
    return [str(x) for x in str(clip[1]).split("\n")]


def contact_sheet(source, png_path, *, frames_per_row: int = 6, tile: int = 160, caption_width: int = 210,
                  limit: int | None = None, by_kind: bool = True) -> Path:
    """Write a PNG grid (one row per clip, frames evenly spaced in time); returns its path.

    For a directory, rows are grouped by kind unless ``by_kind`` is False
    (then they follow labels.csv).
    """
    if isinstance(source, (str, Path)):
        clips = _load_dir(Path(source), limit, by_kind)
    else:
        clips = list(source)[:limit]
    if not clips:
        raise ValueError("no clips to show")
    rows = []
    for clip in clips:
        frames = clip["frames"] if isinstance(clip, dict) else clip[0]
        frames = np.asarray(frames)
        idx = np.linspace(0, len(frames) - 1, min(frames_per_row, len(frames))).round().astype(int)
        row = np.zeros((tile, caption_width + frames_per_row * (tile + 2)), np.uint8)
        for j, i in enumerate(idx):
            x0 = caption_width + j * (tile + 2)
            row[:, x0:x0 + tile] = cv2.resize(frames[i], (tile, tile), interpolation=cv2.INTER_AREA)
            cv2.putText(row, f"#{i}", (x0 + 3, tile - 5), cv2.FONT_HERSHEY_PLAIN, 0.8, 255, 1, cv2.LINE_AA)
        for k, line in enumerate(_caption(clip)):
            cv2.putText(row, line, (6, 22 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
        rows.append(row)
        rows.append(np.full((3, row.shape[1]), 64, np.uint8))
    sheet = np.concatenate(rows[:-1], 0)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png_path), sheet):
        raise OSError(f"could not write {png_path}")
    return png_path
