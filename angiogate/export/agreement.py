"""The agreement check: an export against torch fp32 on the same labelled clips.

The clips are prepared exactly as the judge prepares them and scored by both;
the AUCs must differ by at most `model.agreement_max_auc_difference` and the
decisions at the served threshold must be identical on at least
`model.agreement_min_identical_decisions` of the clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from angiogate.clip.input import model_input
from angiogate.config import Config
from angiogate.engines.metrics import roc_auc
from angiogate.engines.torch_engine import TorchEngine
from angiogate.export.clips import LabelledClip


@dataclass
class Agreement:
    """The export against torch fp32 on the same labelled clips."""

    clips: int
    unsatisfactory: int
    threshold: float
    auc_torch: float
    auc_export: float
    auc_difference: float
    identical_decisions: float  # fraction of clips
    flipped: int
    max_probability_difference: float
    max_auc_difference: float
    min_identical_decisions: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_agreement(targets, torch_scores, export_scores, threshold: float, *,
                    max_auc_difference: float, min_identical_decisions: float) -> Agreement:
    """Compare two sets of scores of the same clips; `failures` says by how much a limit was missed."""
    targets = np.asarray(targets, dtype=int)
    torch_scores = np.asarray(torch_scores, dtype=np.float64)
    export_scores = np.asarray(export_scores, dtype=np.float64)
    n = len(targets)
    auc_torch, auc_export = roc_auc(targets, torch_scores), roc_auc(targets, export_scores)
    difference = abs(auc_export - auc_torch)
    flipped = int(np.sum((torch_scores >= threshold) != (export_scores >= threshold)))
    identical = (n - flipped) / n if n else float("nan")
    failures = []
    if n == 0:
        failures.append("no evaluation clip could be scored")
    elif np.isnan(difference):
        failures.append("AUC is undefined: the evaluation set needs both satisfactory and unsatisfactory clips")
    elif difference > max_auc_difference:
        failures.append(f"|AUC difference| {difference:.4f} exceeds {max_auc_difference:.4f} "
                        f"by {difference - max_auc_difference:.4f}")
    if n and identical < min_identical_decisions:
        failures.append(f"identical decisions {identical:.2%} ({flipped} of {n} clips flipped) is "
                        f"{min_identical_decisions - identical:.2%} below the required {min_identical_decisions:.2%}")
    return Agreement(n, int(targets.sum()), float(threshold), auc_torch, auc_export, float(difference), identical,
                     flipped, float(np.abs(torch_scores - export_scores).max(initial=0.0)),
                     max_auc_difference, min_identical_decisions, failures)


def score_both(torch_engine: TorchEngine, export_engine, clips: Sequence[LabelledClip], config: Config,
               batch_size: int = 8, progress: Callable[[int], None] | None = None):
    """(targets, torch scores, export scores, skipped) for the clips that decode."""
    info = torch_engine.info
    targets, ours, theirs, skipped = [], [], [], []
    for start in range(0, len(clips), batch_size):
        batch, batch_targets = [], []
        for clip in clips[start:start + batch_size]:
            try:
                batch.append(model_input(clip.path, info, config))
                batch_targets.append(clip.target)
            except (ValueError, OSError) as exc:
                skipped.append((str(clip.path), str(exc)))
        if batch:
            stacked = np.stack(batch)
            theirs.append(torch_engine.predict(stacked).unsatisfactory_probability)
            ours.append(export_engine.predict(stacked).unsatisfactory_probability)
            targets.extend(batch_targets)
        if progress:
            progress(len(clips[start:start + batch_size]))
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return np.asarray(targets, dtype=int), join(theirs), join(ours), skipped
