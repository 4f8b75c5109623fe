"""The bundled-model bar (tests/model_bar.py) fails broken models: proved with fake scores."""

from __future__ import annotations

import numpy as np
import pytest

from model_bar import Bar, bar_failures, model_figures

BAR = Bar(min_auc=0.90, min_satisfactory_kept=0.75, min_unsatisfactory_held=0.75)  # the bundled model's
LABELS = ["satisfactory"] * 12 + ["unsatisfactory"] * 24  # as mixed as the phantom set: mostly bad clips
THRESHOLD = 0.78


def _failures(scores) -> list[str]:
    return bar_failures(model_figures(LABELS, scores, THRESHOLD), BAR)


def test_a_good_model_clears_the_bar():
    rng = np.random.default_rng(0)
    scores = [float(rng.uniform(0.0, 0.5)) for _ in range(12)] + [float(rng.uniform(0.85, 1.0)) for _ in range(24)]
    assert _failures(scores) == []


@pytest.mark.parametrize("constant", [0.99, 0.01])
def test_a_constant_model_fails(constant):
    failures = _failures([constant] * len(LABELS))
    assert any(f.startswith("auc") for f in failures)
    assert any(f.startswith("satisfactory_kept" if constant > THRESHOLD else "unsatisfactory_held") for f in failures)


@pytest.mark.parametrize("seed", range(5))
def test_a_random_model_fails(seed):
    assert _failures(list(np.random.default_rng(seed).uniform(0, 1, len(LABELS)))) != []


def test_clips_held_before_the_model_are_no_credit():
    """A model that holds everything, with most bad clips held by header rules: the rule-held ones
    are left out, and what it scored still fails (and too few clips of a class fail too)."""
    scores = [0.99] * 12 + [None] * 20 + [0.99] * 4
    figures = model_figures(LABELS, scores, THRESHOLD)
    assert figures["scored"] == 16 and figures["unsatisfactory"] == 4
    assert bar_failures(figures, BAR)
    only_bad = model_figures(LABELS, [None] * 12 + [0.9] * 24, THRESHOLD)
    assert any("only 0 satisfactory" in f for f in bar_failures(only_bad, BAR))
