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
- A keep target with a confidence (`keep_confidence`, e.g. 0.8): the same, but the
  validation split's keep rate must show the target with that confidence, not
  only meet it. A split of 150 good clips that keeps exactly 95% says little
  about the next 150: candidate 7's threshold, chosen to keep 95% of its
  validation split, kept 93.9% of 163 fresh good phantoms. With a confidence c,
  the rule holds at most m good clips, m the largest count for which keeping
  n - m of n would happen with probability <= 1 - c if the true keep rate were
  only the target (a one-sided exact binomial test; the Clopper-Pearson lower
  bound of the keep rate at c is >= the target). 150 clips at 0.95 and 0.8:
  m = 4 (97.3% kept on validation) where the plain target lets 7 go. When
  even keeping all n cannot show it (n < 32 at 0.95 and 0.8), every good
  validation clip is kept; the first may go at n = 59.

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


def binomial_upper_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n in the thousands stays finite)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return math.fsum(math.exp(log_n - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q)
                     for j in range(k, n + 1))


def confident_holds(n: int, keep: float, confidence: float) -> int:
    """The most of n good clips the threshold may hold while keeping n - m still shows a keep rate
    >= `keep` with `confidence` (0 when even keeping all n cannot show it)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep target {keep} is not in (0, 1]")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not in (0, 1)")
    alpha = 1.0 - confidence
    held = 0  # the tail grows with every clip let go: count up until the next one would fail
    while held < n and binomial_upper_tail(n, keep, n - held - 1) <= alpha:
        held += 1
    return held


def confident_keep_rate_threshold(y_true, scores, keep: float, confidence: float) -> float:
    """The lowest observed score that keeps enough satisfactory clips (label 0) to show a keep
    rate >= `keep` with `confidence`; see the module's docstring."""
    y_true = np.asarray(y_true).astype(int)
    n = int((y_true == 0).sum())
    if n == 0 or n == y_true.size:
        return NO_THRESHOLD
    # Holding m of n good clips is keep_rate_threshold at the rate (n - m) / n.
    return keep_rate_threshold(y_true, scores, (n - confident_holds(n, keep, confidence)) / n)


def check_rule(keep_target: float | None = None, keep_confidence: float | None = None) -> None:
    """Refuse a rule that names a confidence without a target (train() asks before writing a file)."""
    if keep_confidence is not None and keep_target is None:
        raise ValueError("a keep confidence needs a keep target (--keep-target)")


def choose_threshold(y_true, scores, keep_target: float | None = None, keep_confidence: float | None = None) -> float:
    check_rule(keep_target, keep_confidence)
    if keep_target is None:
        return youden_threshold(y_true, scores)
    if keep_confidence is None:
        return keep_rate_threshold(y_true, scores, keep_target)
    return confident_keep_rate_threshold(y_true, scores, keep_target, keep_confidence)


def threshold_rule(keep_target: float | None = None, keep_confidence: float | None = None) -> str:
    """The rule in words, as the checkpoint and the model card record it."""
    if keep_target is None:
        return ("maximise Youden's J (sensitivity + specificity - 1) on the validation split; "
                "ties -> lowest threshold (higher sensitivity for unsatisfactory)")
    if keep_confidence is not None:
        return (f"the lowest threshold whose keep rate on the validation split's satisfactory clips shows "
                f">= {keep_target:.0%} with {keep_confidence:.0%} confidence (keep target {keep_target:g}, "
                f"keep confidence {keep_confidence:g}; one-sided exact binomial bound), holding as many "
                f"unsatisfactory ones as that allows")
    return (f"the lowest threshold that keeps at least {keep_target:.0%} of the validation split's "
            f"satisfactory clips (keep target {keep_target:g}), holding as many unsatisfactory ones as that allows")
