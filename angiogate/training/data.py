"""Training data: labelled clips from a CSV, the verdict log or phantoms; splits; a cached Dataset.

A `ClipRecord` names one DICOM clip and its reviewer label. Three sources:
  - `records_from_csv`: a folder of DICOM plus a labels CSV (columns `file`,
    `label`; optional `patient_id`, `reason`, `sop_instance_uid`; missing
    identifiers are read from the file's header);
  - `records_from_verdict_log`: reviewer labels joined to the verdict log,
    the newest label per clip winning;
  - `records_from_phantoms`: synthetic phantoms rendered by `angiogate.synth`.

`patient_split` splits by patient (no patient in two splits), stratified by
label as far as whole patients allow. `ClipDataset` turns each clip into the
model's input through exactly the serving path (`angiogate.clip.input.load_grey`)
once, caches the grey clip as float16, and then serves augmented, normalised
(3, T, S, S) tensors cheaply every epoch, their channels made by the judge's
own `model_channels`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from angiogate.clip.input import FrameSampling, load_grey
from angiogate.clip.preprocess import check_channels, model_channels
from angiogate.dicom.header import read_header
from angiogate.engines.model import REASON_CLASSES

log = logging.getLogger(__name__)

SATISFACTORY = "satisfactory"
UNSATISFACTORY = "unsatisfactory"
_LABEL_WORDS = {"satisfactory": SATISFACTORY, "unsatisfactory": UNSATISFACTORY,
                "0": SATISFACTORY, "1": UNSATISFACTORY}


@dataclass(frozen=True)
class ClipRecord:
    """One labelled clip. `label` is 'satisfactory' or 'unsatisfactory'."""

    path: Path
    label: str
    reason: str | None
    patient_id: str
    sop_instance_uid: str
    kind: str | None = None  # the phantom kind (labels.csv `kind`), when known

    @property
    def target(self) -> int:
        """1 = unsatisfactory (the positive class throughout training and metrics)."""
        return int(self.label == UNSATISFACTORY)


def _label(value: str, where: str) -> str:
    word = _LABEL_WORDS.get(str(value).strip().lower())
    if word is None:
        raise ValueError(f"{where}: label {value!r} is neither 'satisfactory' nor 'unsatisfactory'")
    return word


def _reason(value: str | None, label: str) -> str | None:
    # Reasons only mean something for unsatisfactory clips; blank means "not given".
    text = (value or "").strip()
    return text if text and label == UNSATISFACTORY else None


def records_from_csv(folder: str | Path, csv_path: str | Path | None = None) -> list[ClipRecord]:
    """Records for a folder of DICOM clips described by a labels CSV.

    `csv_path` defaults to `folder/labels.csv`; `file` paths are relative to
    `folder` (absolute paths are kept).
    """
    folder = Path(folder)
    csv_path = Path(csv_path) if csv_path is not None else folder / "labels.csv"
    if not csv_path.is_absolute() and not csv_path.exists():
        csv_path = folder / csv_path
    records = []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            path = Path(row["file"])
            path = path if path.is_absolute() else folder / path
            if not path.exists():
                raise FileNotFoundError(f"{where}: no such clip {path}")
            label = _label(row["label"], where)
            patient_id = (row.get("patient_id") or "").strip()
            sop_uid = (row.get("sop_instance_uid") or "").strip()
            if not patient_id or not sop_uid:
                try:
                    header = read_header(path)
                except ValueError as exc:  # HeaderError: say which CSV row it was
                    raise ValueError(f"{where}: {exc}") from exc
                patient_id = patient_id or (header.patient_id or "")
                sop_uid = sop_uid or (header.sop_instance_uid or "")
            # A clip without a PatientID is its own patient: it cannot leak into another split.
            patient_id = patient_id or f"unknown:{sop_uid or path}"
            records.append(ClipRecord(path, label, _reason(row.get("reason"), label), patient_id, sop_uid or str(path),
                                      (row.get("kind") or "").strip() or None))
    return records


def describe_records(records: Sequence[ClipRecord]) -> dict:
    """What a set of clips holds, for the model card: counts by kind (the phantom kind, else the
    label and reason), matrix, frame rate, transfer syntax and frames per clip, read from headers."""
    from pydicom.uid import UID

    kinds, matrices, rates, syntaxes, frames = Counter(), Counter(), Counter(), Counter(), []
    unreadable = 0
    for record in records:
        kinds[record.kind or (record.reason and f"{record.label} ({record.reason})") or record.label] += 1
        try:
            header = read_header(record.path)
        except (OSError, ValueError):
            unreadable += 1
            continue
        matrices[f"{header.rows}x{header.columns}"] += 1
        rates[f"{header.frame_rate_hz:g}" if header.frame_rate_hz else "unknown"] += 1
        syntaxes[UID(header.transfer_syntax_uid).name if header.transfer_syntax_uid else "unknown"] += 1
        if header.frames:
            frames.append(header.frames)
    return {"clips": len(records), "phantoms": sum(is_phantom(r.path) for r in records if r.path.exists()),
            "kinds": dict(kinds.most_common()), "matrices": dict(matrices.most_common()),
            "frame_rates_hz": dict(rates.most_common()), "syntaxes": dict(syntaxes.most_common()),
            "frames": [min(frames), max(frames)] if frames else None, "unreadable": unreadable}


def records_from_verdict_log(database_url: str, spool_dir: str | Path) -> list[ClipRecord]:
    """Reviewer labels joined to their verdict rows; the newest label per clip wins.

    Clips whose spooled file is gone are skipped with a warning (the label
    stays in the log; there is nothing to train on).
    """
    from sqlalchemy import select

    from angiogate.store.db import make_engine
    from angiogate.store.schema import Label, Verdict

    spool_dir = Path(spool_dir)
    engine = make_engine(database_url)
    query = (select(Label.sop_instance_uid, Label.label, Label.reason, Label.created_at, Label.id,
                    Verdict.patient_id, Verdict.file_path)
             .join(Verdict, Verdict.sop_instance_uid == Label.sop_instance_uid)
             .order_by(Label.sop_instance_uid, Label.created_at, Label.id))
    newest: dict[str, tuple] = {}
    try:
        with engine.connect() as connection:
            for row in connection.execute(query):
                newest[row.sop_instance_uid] = row  # ordered by time, so the last one wins
    finally:
        engine.dispose()
    records = []
    for uid, row in sorted(newest.items()):
        path = spool_dir / row.file_path
        if not path.exists():
            log.warning("labelled clip %s: spooled file %s is gone; skipped", uid, path)
            continue
        try:
            label = _label(row.label, f"labels row {row.id} ({uid})")
        except ValueError as exc:
            log.warning("%s; skipped", exc)
            continue
        records.append(ClipRecord(path, label, _reason(row.reason, label), row.patient_id or f"unknown:{uid}", uid))
    return records


def records_from_phantoms(outdir: str | Path, n_per_kind: int, seed: int = 0, size: int = 512, *,
                          patients: int | None = None, workers: int = 1, **synth_options) -> list[ClipRecord]:
    """Render (or reuse) `n_per_kind` phantom clips of every kind and return their records.

    `patients` defaults to about three clips per phantom patient, so even small
    sets split by patient into three non-empty parts. A stamp file remembers
    the parameters: the same call on the same folder reuses the clips.
    """
    from angiogate.synth import KINDS, generate

    outdir = Path(outdir)
    if patients is None:
        patients = max(3, math.ceil(n_per_kind * len(KINDS) / 3))
    params = {"n_per_kind": n_per_kind, "seed": seed, "size": size, "patients": patients,
              "synth_options": {k: list(v) if isinstance(v, tuple) else v for k, v in synth_options.items()}}
    stamp = outdir / "phantoms.json"
    if not (stamp.exists() and (outdir / "labels.csv").exists()
            and json.loads(stamp.read_text()) == params):
        generate(outdir, per_kind=n_per_kind, seed=seed, size=size, patients=patients, workers=workers,
                 **synth_options)
        stamp.write_text(json.dumps(params, indent=1))
    return records_from_csv(outdir, outdir / "labels.csv")


def is_phantom(path: str | Path) -> bool:
    """True for clips written by `angiogate.synth` (it signs its Manufacturer)."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except Exception:  # unreadable here means "not known to be a phantom"; decoding reports it later
        return False
    return "synthetic phantom" in str(ds.get("Manufacturer", "")).lower()


def patient_split(records: Sequence[ClipRecord], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0, min_held_out: int = 0) -> tuple[list[ClipRecord], list[ClipRecord], list[ClipRecord]]:
    """(train, validation, test) with every patient's clips in exactly one split.

    Patients are placed greedily, largest first (ties in a seeded random
    order), each into the split where it most reduces the squared gap to the
    target clip count and target unsatisfactory count, so the splits are
    near the requested sizes and class mix. With three or more patients no
    split is left empty.

    `min_held_out` (tiny sets, fine-tuning): validation and test each get at
    least this many clips of each label, patients moved from training (the
    smallest first) as long as training keeps a clip of each label. When the
    clips do not allow it the floor is left unmet; `held_out_floor_met` says so.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups: dict[str, list[ClipRecord]] = defaultdict(list)
    for record in records:
        groups[record.patient_id].append(record)
    patients = sorted(groups)
    random.Random(seed).shuffle(patients)
    patients.sort(key=lambda p: -len(groups[p]))  # stable: equal sizes keep the seeded order
    total = len(records)
    positives = sum(r.target for r in records)
    target_n = [f * total for f in fractions]
    target_p = [f * positives for f in fractions]
    n, p = [0, 0, 0], [0, 0, 0]
    assignment: dict[str, int] = {}

    def cost(counts, pos):
        return sum(((counts[s] - target_n[s]) / max(total, 1)) ** 2
                   + ((pos[s] - target_p[s]) / max(positives, 1)) ** 2 for s in range(3))

    for patient in patients:
        size, pos = len(groups[patient]), sum(r.target for r in groups[patient])
        best = min(range(3), key=lambda s: (cost([n[i] + size * (i == s) for i in range(3)],
                                                 [p[i] + pos * (i == s) for i in range(3)]), s))
        assignment[patient] = best
        n[best] += size
        p[best] += pos
    # Tiny sets: make sure validation and test get someone (threshold and metrics need them).
    for empty in range(3):
        if n[empty] == 0 and fractions[empty] > 0 and len(patients) >= 3:
            donor = max(range(3), key=lambda s: sum(1 for q in assignment.values() if q == s))
            moved = min((q for q in patients if assignment[q] == donor), key=lambda q: len(groups[q]))
            assignment[moved] = empty
            n[donor] -= len(groups[moved])
            n[empty] += len(groups[moved])
    if min_held_out > 0:
        _raise_held_out_floor(groups, assignment, min_held_out)
    splits: tuple[list, list, list] = ([], [], [])
    for record in records:
        splits[assignment[record.patient_id]].append(record)
    return splits


def _raise_held_out_floor(groups: dict[str, list[ClipRecord]], assignment: dict[str, int], floor: int) -> None:
    """Move patients from training (0) into validation (1) and test (2) until each holds
    `floor` clips of each label, keeping at least one clip of each label in training."""
    def count(split: int, target: int) -> int:
        return sum(r.target == target for p, s in assignment.items() if s == split for r in groups[p])

    for split in (1, 2):
        for target in (0, 1):
            while count(split, target) < floor:
                movable = [p for p, s in assignment.items() if s == 0
                           and any(r.target == target for r in groups[p])
                           and all(count(0, t) - sum(r.target == t for r in groups[p]) >= 1 for t in (0, 1))]
                if not movable:
                    break
                # The patient giving most of the missing label for the fewest other clips.
                chosen = min(movable, key=lambda p: (len(groups[p]) - sum(r.target == target for r in groups[p]),
                                                     len(groups[p]), p))
                assignment[chosen] = split


def held_out_floor_met(validation: Sequence[ClipRecord], test: Sequence[ClipRecord], floor: int) -> bool:
    """True when validation and test each hold `floor` clips of each label."""
    return all(sum(r.target == t for r in part) >= floor for part in (validation, test) for t in (0, 1))


def reason_balanced_weights(records: Sequence[ClipRecord],
                            factors: Mapping[str, float] | None = None) -> list[float]:
    """Sampling weights that give every unsatisfactory reason the same share of the
    unsatisfactory draws, leaving the satisfactory/unsatisfactory balance as it is.

    A rare reason (bypass grafts beside three reasons twice their size) is drawn
    as often as a common one; each satisfactory clip keeps weight 1, and the
    unsatisfactory clips keep their total weight. Unsatisfactory clips without a
    reason form a group of their own.

    `factors` ({reason: factor}, `retrain --reason-weight graft=2`) scale a reason's
    share against the others' (graft=2: grafts drawn twice as often as any other
    reason); the unsatisfactory total is still unchanged. Balancing fixes each
    reason's share whatever its clip count, so more clips of a hard reason do not
    get it drawn more often: a factor does.
    """
    factors = dict(factors or {})
    counts = Counter(r.reason for r in records if r.target)  # None: the group without a reason
    missing = sorted(set(factors) - {reason for reason in counts if reason})
    if missing:
        raise ValueError(f"--reason-weight for {', '.join(missing)}: no unsatisfactory training clip has "
                         f"that reason (reasons here: {', '.join(sorted(str(r) for r in counts)) or 'none'})")
    if any(not (factor > 0) for factor in factors.values()):
        raise ValueError(f"reason weights must be > 0, got {factors}")
    scale = {reason: factors.get(reason, 1.0) for reason in counts}
    unit = sum(counts.values()) / max(sum(scale.values()), 1e-12)
    return [unit * scale[r.reason] / counts[r.reason] if r.target else 1.0 for r in records]


def _cache_key(path: Path, num_frames: int, crop_size: int, sampling: FrameSampling) -> str:
    stat = path.stat()
    text = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, num_frames, crop_size,
                       sampling.window_start_s, sampling.sample_rate_hz, sampling.assumed_frame_rate_hz])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ClipDataset(Dataset):
    """Preprocessed clips decoded once, cached as float16, served as normalised float32.

    Items are (clip (3, T, S, S) float32, target 0/1, reason index or -1).
    The cache holds the grey clip (one channel); the input channels the model
    takes (`channels`, see `angiogate.clip.preprocess`) are made from it after
    augmentation, with the judge's own arithmetic.
    `cache_dir`, when given, keeps the decoded clips as .npy files between runs.
    Clips that cannot be read or decoded are left out and listed in `skipped`.
    `augment(clip01, generator)` runs on the 0..1 clip before normalisation;
    item i of epoch e draws from a generator seeded with (seed, e, i), so runs
    are reproducible whatever the worker layout.
    """

    def __init__(self, records: Sequence[ClipRecord], *, num_frames: int, crop_size: int,
                 mean: float = 0.0, std: float = 1.0, sampling: FrameSampling | None = None,
                 cache_dir: str | Path | None = None,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 reason_classes: Sequence[str] = REASON_CLASSES, seed: int = 0,
                 progress: Callable[[int], None] | None = None, channels: str = "grey"):
        self.records = list(records)
        self.channels = check_channels(channels)
        self.mean, self.std = float(mean), float(std)
        self.augment, self.seed, self.epoch = augment, int(seed), 0
        sampling = sampling or FrameSampling.from_config()
        self.reason_index = {name: i for i, name in enumerate(reason_classes)}
        cache = Path(cache_dir) if cache_dir else None
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
        self.clips: list[torch.Tensor] = []
        self.skipped: list[tuple[ClipRecord, str]] = []
        kept = []
        for record in self.records:
            try:
                self.clips.append(self._load(record.path, num_frames, crop_size, sampling, cache))
                kept.append(record)
            except (ValueError, OSError) as exc:  # HeaderError/DecodeError are ValueErrors
                # One unreadable clip must not sink a retrain; it is reported, not trained on.
                log.warning("skipping %s: %s", record.path, exc)
                self.skipped.append((record, str(exc)))
            if progress:
                progress(1)
        self.records = kept

    @staticmethod
    def _load(path: Path, num_frames: int, crop_size: int, sampling: FrameSampling, cache: Path | None) -> torch.Tensor:
        file = cache / f"{_cache_key(path, num_frames, crop_size, sampling)}.npy" if cache else None
        if file is not None and file.exists():
            return torch.from_numpy(np.load(file))
        grey = load_grey(path, num_frames=num_frames, crop_size=crop_size, sampling=sampling)
        stored = grey[None].astype(np.float16)
        if file is not None:
            tmp = file.with_suffix(".tmp.npy")
            np.save(tmp, stored)
            tmp.replace(file)
        return torch.from_numpy(stored)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and std of the cached 0..1 clips: the normalisation a checkpoint records."""
        total, total_sq, count = 0.0, 0.0, 0
        for clip in self.clips:
            values = clip.double()
            total += float(values.sum())
            total_sq += float((values * values).sum())
            count += values.numel()
        mean = total / max(count, 1)
        std = math.sqrt(max(total_sq / max(count, 1) - mean * mean, 0.0))
        return mean, max(std, 1e-3)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        clip = self.clips[index].float()
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            clip = self.augment(clip, generator)
        clip = (torch.from_numpy(model_channels(clip[0].numpy(), self.channels)) - self.mean) / self.std
        reason = self.reason_index.get(record.reason, -1) if record.reason else -1
        return clip, record.target, reason
