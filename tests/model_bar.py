"""The bar a model must clear on labelled clips, measured on the model alone.

Only clips the model scored count (a clip a header rule held never reached it: no free credit).
Both classes must be there, and each class must mostly be decided as labelled at the model's
threshold: a model that holds everything, passes everything or guesses fails, however the clips
are mixed. `tests/test_model_bar.py` proves that with fake scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from angiogate.engines.metrics import roc_auc


@dataclass(frozen=True)
class Bar:
    min_auc: float
    min_satisfactory_kept: float     # share of satisfactory clips scored below the threshold
    min_unsatisfactory_held: float   # share of unsatisfactory clips scored at or above it
    min_per_class: int = 4           # clips of each class the model must have scored


def model_figures(labels: Sequence[str], scores: Sequence[float | None], threshold: float) -> dict:
    """AUC and per-class shares over the clips with a score (None: held before the model)."""
    scored = [(label == "unsatisfactory", score) for label, score in zip(labels, scores) if score is not None]
    y = np.array([u for u, _ in scored], dtype=int)
    s = np.array([v for _, v in scored], dtype=float)
    sat, unsat = s[y == 0], s[y == 1]
    return {"scored": len(s), "satisfactory": len(sat), "unsatisfactory": len(unsat),
            "auc": roc_auc(y, s) if len(sat) and len(unsat) else float("nan"),
            "satisfactory_kept": float(np.mean(sat < threshold)) if len(sat) else float("nan"),
            "unsatisfactory_held": float(np.mean(unsat >= threshold)) if len(unsat) else float("nan")}


def bar_failures(figures: dict, bar: Bar) -> list[str]:
    """What misses the bar, in words (empty: it clears it). NaN figures fail."""
    failures = []
    for cls in ("satisfactory", "unsatisfactory"):
        if figures[cls] < bar.min_per_class:
            failures.append(f"only {figures[cls]} {cls} clips scored by the model (need {bar.min_per_class})")
    for name, minimum in (("auc", bar.min_auc), ("satisfactory_kept", bar.min_satisfactory_kept),
                          ("unsatisfactory_held", bar.min_unsatisfactory_held)):
        if not figures[name] >= minimum:  # NaN fails too
            failures.append(f"{name} {figures[name]:.3f} < {minimum}")
    return failures
