"""The bundled model: shipped, phantom-trained and saying so, its card true to the file,
and it tells fresh phantoms (seeds it never saw) apart through the gate's own score path.

Fresh phantoms are still phantoms: passing here says the model learnt the renderer's
kinds, not that it works on patients.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from angiogate.engines.metrics import roc_auc
from angiogate.engines.model import BUNDLED_MODEL, file_digest, load_checkpoint
from angiogate.modelstore.resolve import PHANTOM_NOTICE
from angiogate.training.model_card import PHANTOM_STATEMENT

CARD = BUNDLED_MODEL.parent / "MODEL_CARD.md"

# No model ships until one reaches the held-out bar (issue 3; docs/model_comparison.md says where
# training stands). Once angiogate/models/default.pt exists every check below applies to it.
pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.exists(),
                                reason=f"no bundled model yet ({BUNDLED_MODEL} is absent)")


def test_bundled_model_is_a_phantom_trained_x3d_s_that_says_so():
    network, info = load_checkpoint(BUNDLED_MODEL)
    assert info.arch == "x3d_s" and info.num_frames == 16
    assert info.extra.get("synthetic_only") is True
    assert PHANTOM_STATEMENT in info.description
    assert 0.0 < info.threshold < 1.0
    assert sum(p.numel() for p in network.parameters()) > 2_900_000  # the real X3D-S, not a toy


def test_model_card_matches_the_file_and_reports_the_held_out_bar():
    card = CARD.read_text()
    _, info = load_checkpoint(BUNDLED_MODEL)
    assert f"# Model card: {info.version}" in card
    assert PHANTOM_STATEMENT in card and "not a clinical model" in card.lower()
    assert file_digest(BUNDLED_MODEL) in card, "the card describes another checkpoint"
    auc = float(re.search(r"^\| auc \| ([0-9.]+) \|", card, re.M).group(1))
    assert auc >= 0.97, f"held-out phantom AUC {auc} is below the bar"
    assert f"{info.threshold:.4f}" in card
    assert "reproduce: `angiogate retrain" in card and "angiogate synth" in card


@pytest.fixture(scope="module")
def fresh_phantoms(tmp_path_factory):
    """Two clips of every kind from a seed no training run used, at the real 512x512."""
    from angiogate.synth import generate

    outdir = tmp_path_factory.mktemp("fresh")
    rows = generate(outdir, per_kind=2, seed=9090, size=512, syntaxes=("explicit", "jpeg-lossless"), workers=2)
    return outdir, rows


def test_score_serves_the_bundled_model_and_separates_fresh_phantoms(fresh_phantoms, tmp_path):
    outdir, rows = fresh_phantoms
    files = [str(outdir / row["file"]) for row in rows]
    # A folder without a promoted model: model.path auto falls back to the bundled one.
    scored = subprocess.run([sys.executable, "-m", "angiogate.cli", "score", "--json", *files],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert PHANTOM_NOTICE in scored.stderr + scored.stdout
    results = [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(rows)
    _, info = load_checkpoint(BUNDLED_MODEL)
    assert all(r["model_version"].startswith(info.version) for r in results)
    by_file = {r["file"]: r for r in results}
    judged = [by_file[f] for f in files]
    labels = np.array([row["label"] == "unsatisfactory" for row in rows], dtype=int)
    # A clip a header rule holds (an "LV gram" description, say) never reaches the model: for the
    # gate it ranks with the most unsatisfactory. Every other clip must carry the model's score.
    held_by_rule = [bool(r["failed_rules"]) for r in judged]
    assert all(r["score"] is not None for r, held in zip(judged, held_by_rule) if not held)
    assert sum(held_by_rule) < len(rows) // 2, "the rules, not the model, decided most clips"
    scores = np.array([1.0 if held else r["score"] for r, held in zip(judged, held_by_rule)], dtype=float)
    auc = roc_auc(labels, scores)
    decided = [r["decision"] == row["label"] for r, row in zip(judged, rows)]
    assert auc >= 0.9, f"AUC {auc:.3f} on fresh phantoms: {list(zip([r['kind'] for r in rows], scores.round(3)))}"
    assert sum(decided) >= 0.8 * len(rows), f"{sum(decided)}/{len(rows)} decided as labelled"
