"""The operating threshold a training run writes into its checkpoint, chosen on the validation split.

A clip is held when P(unsatisfactory) >= threshold (the judge's rule). Two rules:

- Youden's J (the default): maximise sensitivity + specificity - 1; ties -> the
  lowest threshold (higher sensitivity for unsatisfactory).
- A keep target (`keep_target`, e.g. 0.95): the lowest threshold that still keeps
  at least that fraction of the validation split's satisfactory clips, so as many
  unsatisfactory clips are held as that keep rate allows. Issue 12 states its bar
  this way (keep >= 95% of good runs, then hold >= 90% of the rest); on a
  validation split of phantoms Youden's J sat where it kept all good phantoms and
  held fewer of the others (docs/model_comparison.md).

Thresholds are observed scores (as scikit-learn's ROC curve takes them), so the
validation split is decided at the threshold exactly as the rule counted it.
"""

from __future__ import annotations

import math

import numpy as np

NO_THRESHOLD = 0.5  # one class only in the validation split: nothing to choose from


def youden_threshold(y_true, scores) -> float:
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y_true.sum()), int((1 - y_true).sum())
    if positives == 0 or negatives == 0:
        return NO_THRESHOLD
    best_j, best_t = -np.inf, NO_THRESHOLD
    for t in np.unique(scores):  # ascending, so a strict > keeps the lowest threshold on ties
        predicted = scores >= t
        j = (predicted & (y_true == 1)).sum() / positives + (~predicted & (y_true == 0)).sum() / negatives - 1
        if j > best_j + 1e-12:
            best_j, best_t = j, float(t)
    return best_t


def keep_rate_threshold(y_true, scores, keep: float) -> float:
    """The lowest observed score that keeps >= `keep` of the satisfactory clips (label 0).

    When every score is at or below the satisfactory clip that must still be kept, the next
    float above it (everything below is kept)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep target {keep} is not in (0, 1]")
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64)
    satisfactory = np.sort(scores[y_true == 0])[::-1]  # highest first
    if satisfactory.size == 0 or satisfactory.size == scores.size:
        return NO_THRESHOLD
    may_hold = math.floor((1 - keep) * satisfactory.size + 1e-9)  # satisfactory clips the rate lets go
    must_keep = satisfactory[may_hold]  # the highest satisfactory score that must stay below the threshold
    above = np.unique(scores[scores > must_keep])
    return float(above[0]) if above.size else float(np.nextafter(must_keep, np.inf))


def choose_threshold(y_true, scores, keep_target: float | None = None) -> float:
    return youden_threshold(y_true, scores) if keep_target is None else keep_rate_threshold(y_true, scores,
                                                                                            keep_target)


def threshold_rule(keep_target: float | None = None) -> str:
    """The rule in words, as the checkpoint and the model card record it."""
    if keep_target is None:
        return ("maximise Youden's J (sensitivity + specificity - 1) on the validation split; "
                "ties -> lowest threshold (higher sensitivity for unsatisfactory)")
    return (f"the lowest threshold that keeps at least {keep_target:.0%} of the validation split's "
            f"satisfactory clips (keep target {keep_target:g}), holding as many unsatisfactory ones as that allows")
