"""A checkpoint's verdicts on real clips, for its model card.

Phantom figures say what a model learnt of the renderer; a few real runs say whether it
transfers at all. `real_verdicts` judges real clips (files, or folders of them) through the
gate's own judge (header rules, the contrast rule, the checkpoint in torch on the CPU) and
returns one row per cine clip. By default it takes the real runs in the project's
shared samples folder (../shared/samples beside the checkout) when that folder exists.
A handful of clips is a sanity check, not a validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from angiogate.config import load_config
from angiogate.decisions import NOT_APPLICABLE
from angiogate.engines.torch_engine import TorchEngine
from angiogate.judge.contrast import RULE as CONTRAST_RULE
from angiogate.judge.verdict import Judge

DEFAULT_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
# What the runs of the shared samples are (its README.md): the label each should get.
KNOWN_LABELS = {"XA-RCA-96f-30fps-jpeg-baseline.dcm": "satisfactory",
                "XA-MONO2-8-12x-catheter.dcm": "unsatisfactory"}


def _files(paths: Sequence[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        found += sorted(path.glob("*.dcm")) if path.is_dir() else [path]
    return found


def default_samples() -> list[Path]:
    """The shared samples folder when it is there, else nothing."""
    return [DEFAULT_SAMPLES] if DEFAULT_SAMPLES.is_dir() else []


def real_verdicts(checkpoint: str | Path, paths: Sequence[str | Path]) -> list[dict]:
    """One row per cine clip among `paths`: file, expected label (if known), decision, P, reason."""
    files = _files(paths)
    if not files:
        return []
    judge = Judge(load_config(), TorchEngine(Path(checkpoint), device="cpu"))
    rows = []
    for path in files:
        judgement = judge.judge(path)
        if judgement.decision == NOT_APPLICABLE:
            continue  # single frames and other objects the model never sees
        contrast = next((r.detail.split()[0] for r in judgement.rule_results if r.rule == CONTRAST_RULE), None)
        rows.append({"file": path.name, "expected": KNOWN_LABELS.get(path.name), "decision": judgement.decision,
                     "score": judgement.score, "threshold": judgement.threshold,
                     "reason_code": judgement.reason_code, "failed_rules": judgement.failed_rules,
                     "contrast_arrival": contrast})
    return rows
