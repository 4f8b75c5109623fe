"""Phantom clips for the bench: rendered once per run, from a fixed seed.

Only satisfactory kinds (left and right coronary runs) are rendered, at one
frame rate (15 fps) and one length, so every clip passes the header rules
and reaches the classifier, as a good run from a cath lab would. Phantoms
are synthetic: their compressibility and decode cost are close to, not
equal to, recorded clips'.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pydicom

BENCH_SEED = 5150
KINDS = ("left_coronary", "right_coronary")
FRAME_RATE_HZ = 15.0
CAVEAT = "phantom clips (synthetic): decode cost and compressibility approximate recorded clips"


def render(outdir: Path, *, count: int, syntax: str, size: int, frames: int, seed: int = BENCH_SEED) -> list[Path]:
    """`count` distinct clips of `size` x `size` x `frames` in `syntax` ("explicit" or "jpeg-lossless")."""
    from angiogate.synth import generate

    per_kind = -(-count // len(KINDS))
    rows = generate(outdir, per_kind=per_kind, seed=seed, kinds=list(KINDS), size=size,
                    frame_rates=(FRAME_RATE_HZ,), syntaxes=(syntax,), min_frames=frames, max_frames=frames)
    return [outdir / row["file"] for row in rows[:count]]


class PhantomSet:
    """Clips rendered on first use, by syntax, in a folder of the bench's temp dir."""

    def __init__(self, root: Path, *, size: int, frames: int, seed: int = BENCH_SEED):
        self.root, self.size, self.frames, self.seed = Path(root), size, frames, seed
        self._clips: dict[str, list[Path]] = {}

    def clips(self, syntax: str, count: int) -> list[Path]:
        have = self._clips.get(syntax, [])
        if len(have) < count:
            folder = self.root / f"{syntax}-{count}"
            have = render(folder, count=count, syntax=syntax, size=self.size, frames=self.frames, seed=self.seed)
            self._clips[syntax] = have
        return have[:count]

    @property
    def shape(self) -> str:
        return f"{self.size}x{self.size}x{self.frames}"


def new_uid(length: int | None = None) -> str:
    """A UUID-derived UID (2.25.<uuid as an integer>); of exactly `length` characters if
    given (44, "2.25." and 39 digits, is what about 70% of UUIDs give)."""
    while True:
        uid = f"2.25.{uuid.uuid4().int}"
        if length is None or len(uid) == length:
            return uid


def renew_uids(paths: list[Path]) -> None:
    """Give each file a new SOP Instance UID in place, so a gate sees new objects, not resends."""
    for path in paths:
        dataset = pydicom.dcmread(path)
        uid = new_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        dataset.save_as(path, enforce_file_format=True)


def fill_folder(folder: Path, sources: list[Path], count: int) -> list[Path]:
    """`count` DICOM files in `folder` (and nothing else), copied round-robin from `sources`."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        target = folder / f"clip{i:05d}.dcm"
        shutil.copyfile(sources[i % len(sources)], target)
        made.append(target)
    return made
