"""May a retrained checkpoint replace the serving model? Both judge the same held-out clips.

`angiogate retrain --promote` installs the new checkpoint only when it beats
the model serving now on the clips of the run's test split (split.json
`test`: patients the new model never trained on): a higher AUC on the same
clips, both models in torch fp32 on the CPU, each at its own threshold for
the share of satisfactory clips it keeps. Too few clips to tell (none, one
class only, or fewer of a label than the run's floor `min_held_out`, set for
fine-tuning on a few dozen labels) is a refusal, not a pass. A gate serving no model (rules
only) takes any trained model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from angiogate.config import Config


@dataclass
class ModelScore:
    checkpoint: Path
    version: str
    auc: float | None
    kept_good: float | None  # satisfactory clips scored below the threshold
    threshold: float


@dataclass
class Comparison:
    clips: int
    unsatisfactory: int
    candidate: ModelScore
    serving: ModelScore | None
    promote: bool
    why: str
    skipped: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"held-out test split: {self.clips} clips ({self.unsatisfactory} unsatisfactory)"]
        for name, score in (("new", self.candidate), ("serving", self.serving)):
            if score is None:
                lines.append(f"  {name:8s} none (rules only)")
                continue
            auc = "n/a" if score.auc is None else f"{score.auc:.4f}"
            kept = "n/a" if score.kept_good is None else f"{100 * score.kept_good:.1f}%"
            lines.append(f"  {name:8s} AUC {auc}, good runs kept {kept} at threshold {score.threshold:.3f}: "
                         f"{score.version}")
        lines.append(("PROMOTE: " if self.promote else "NOT PROMOTED: ") + self.why)
        if self.skipped:
            lines.append(f"  {len(self.skipped)} clip(s) skipped (unreadable): {self.skipped[:3]}")
        return "\n".join(lines)


def _score(checkpoint: Path, clips, config: Config, batch_size: int = 8):
    from sklearn.metrics import roc_auc_score

    from angiogate.engines.torch_engine import TorchEngine
    from angiogate.clip.input import model_input

    engine = TorchEngine(checkpoint, device="cpu")
    scores, targets, skipped = [], [], []
    for start in range(0, len(clips), batch_size):
        batch, batch_targets = [], []
        for clip in clips[start:start + batch_size]:
            try:
                batch.append(model_input(clip.path, engine.info, config))
                batch_targets.append(clip.target)
            except (ValueError, OSError) as exc:
                skipped.append(f"{clip.path}: {exc}")
        if batch:
            scores.append(engine.predict(np.stack(batch)).unsatisfactory_probability)
            targets.extend(batch_targets)
    scores = np.concatenate(scores) if scores else np.zeros(0)
    targets = np.asarray(targets, dtype=int)
    threshold = config.model.threshold if config.model.threshold is not None else engine.info.threshold
    auc = float(roc_auc_score(targets, scores)) if 0 < targets.sum() < len(targets) else None
    good = targets == 0
    kept = float((scores[good] < threshold).mean()) if good.any() else None
    return ModelScore(checkpoint, engine.version, auc, kept, threshold), targets, skipped


def _held_out_floor(split_json: Path) -> int:
    """The run's floor of held-out clips per label (split.json `min_held_out`; 0 when absent)."""
    import json

    try:
        return int(json.loads(Path(split_json).read_text()).get("min_held_out") or 0)
    except (OSError, ValueError):
        return 0


def compare_on_split(candidate: Path, serving: Path | None, split_json: Path, config: Config) -> Comparison:
    """Judge the test split of `split_json` with both checkpoints and decide."""
    from angiogate.export.clips import clips_from_split

    clips = clips_from_split(split_json, ["test"]) if Path(split_json).exists() else []
    new, targets, skipped = _score(candidate, clips, config)
    n, positives = len(targets), int(targets.sum())
    if serving is None:
        return Comparison(n, positives, new, None, True, "no model is serving (rules only)", skipped)
    floor = _held_out_floor(split_json)
    if floor and min(positives, n - positives) < floor:
        return Comparison(n, positives, new, None, False,
                          f"evaluation is not possible: the test split holds fewer than {floor} clips of each "
                          "label from patients the new model did not train on; label more clips (or use "
                          "--force-promote)", skipped)
    old, _, _ = _score(serving, clips, config)
    if new.auc is None or old.auc is None:
        return Comparison(n, positives, new, old, False,
                          "the test split needs labelled clips of both kinds to compare the models; label "
                          "more clips (or use --force-promote)", skipped)
    if new.auc > old.auc:
        return Comparison(n, positives, new, old, True,
                          f"AUC {new.auc:.4f} > {old.auc:.4f} on the same held-out clips", skipped)
    return Comparison(n, positives, new, old, False,
                      f"AUC {new.auc:.4f} does not beat the serving model's {old.auc:.4f} on the same "
                      "held-out clips", skipped)
