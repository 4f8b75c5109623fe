"""Labelled clips for calibration and the agreement check: from labelled folders or a training split.

Folders hold a labels.csv (read by `angiogate.training.data.records_from_csv`);
a training run's split.json lists its train/validation/test clips.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    target: int  # 1 = unsatisfactory


def clips_from_folders(folders: Sequence[str | Path]) -> list[LabelledClip]:
    """Labelled clips of folders that each hold a labels.csv (`angiogate.training.data.records_from_csv`)."""
    from angiogate.training.data import records_from_csv

    return [LabelledClip(r.path, r.target) for folder in folders for r in records_from_csv(folder)]


def clips_from_split(split_json: Path, parts: Sequence[str]) -> list[LabelledClip]:
    """Labelled clips of a training run's split.json (`train`, `validation`, `test`)."""
    split = json.loads(Path(split_json).read_text())
    return [LabelledClip(Path(r["path"]), int(r["label"] == "unsatisfactory")) for part in parts
            for r in split.get(part, [])]


def sample(clips: Sequence[LabelledClip], limit: int, seed: int = 0) -> list[LabelledClip]:
    """At most `limit` clips, a seeded random choice, in their original order."""
    if len(clips) <= limit:
        return list(clips)
    chosen = set(random.Random(seed).sample(range(len(clips)), limit))
    return [clip for i, clip in enumerate(clips) if i in chosen]
