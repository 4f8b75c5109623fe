"""`retrain --promote` installs a new checkpoint only if it beats the serving model
on the held-out test split: both judge the same clips (real phantoms, real checkpoints)."""

from __future__ import annotations

import json

from angiogate.config import load_config
from angiogate.engines.model import BUNDLED_MODEL
from angiogate.export.promotion_check import compare_on_split


def _split(tmp_path, phantoms, parts=("test",)):
    phantom_dir, rows = phantoms
    entries = [{"path": str(phantom_dir / r["file"]), "label": r["label"]} for r in rows]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({part: entries for part in parts}))
    return path, entries


def test_a_weaker_candidate_is_refused_and_a_stronger_one_promoted(tmp_path, phantoms, tiny_checkpoint):
    split, entries = _split(tmp_path, phantoms)
    config = load_config()
    # The untrained tiny model gives every clip about 0.5; the bundled model ranks phantoms well.
    weaker = compare_on_split(tiny_checkpoint, BUNDLED_MODEL, split, config)
    assert weaker.clips == len(entries) and 0 < weaker.unsatisfactory < weaker.clips
    assert not weaker.promote and "does not beat" in weaker.why
    assert weaker.serving.auc > weaker.candidate.auc
    stronger = compare_on_split(BUNDLED_MODEL, tiny_checkpoint, split, config)
    assert stronger.promote and stronger.candidate.auc == weaker.serving.auc
    assert "PROMOTE: AUC" in stronger.report() and "good runs kept" in stronger.report()


def test_no_held_out_clips_of_both_kinds_is_a_refusal(tmp_path, phantoms, tiny_checkpoint):
    split, _ = _split(tmp_path, phantoms, parts=("train",))  # nothing in `test`
    result = compare_on_split(BUNDLED_MODEL, tiny_checkpoint, split, load_config())
    assert not result.promote and result.clips == 0 and "both kinds" in result.why
    # A gate serving rules only takes a trained model.
    assert compare_on_split(BUNDLED_MODEL, None, split, load_config()).promote
