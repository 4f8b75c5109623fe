"""MODEL_CARD.md beside a checkpoint: what it was trained on, how well it did, how to redo it.

Written by `angiogate.training.loop.train` after training. It states the data (and the
phantom generator's version when phantoms were used), the split sizes, the
held-out test metrics with CIs, the threshold and its rule, the command that
reproduces the run and the training time. A model trained only on phantoms
says so in plain words: its figures are not clinical performance.
"""

from __future__ import annotations

from pathlib import Path

from angiogate.engines.model import file_digest, load_checkpoint

PHANTOM_STATEMENT = ("Trained on synthetic phantoms only. Not a clinical model; "
                     "phantom figures are not clinical performance.")
METRICS = ("auc", "accuracy", "precision", "sensitivity", "specificity", "f1")


def synthetic_only(sources: dict) -> bool:
    """True when every training clip is a phantom (generated here or a folder of phantoms)."""
    folders = sources.get("folders") or []
    has_any = bool(sources.get("phantoms")) or bool(folders)
    return has_any and not sources.get("verdict_log") and all(f.get("synthetic") for f in folders)


def _data_lines(sources: dict) -> list[str]:
    lines = []
    for folder in sources.get("folders") or []:
        kind = " (synthetic phantoms)" if folder.get("synthetic") else ""
        lines.append(f"- labelled folder `{folder['folder']}`: {folder['clips']} clips{kind}")
        synth = folder.get("synth")
        if synth:
            lines.append(f"  - phantom generator {synth.get('generator')}, seed {synth.get('seed')}, "
                         f"{synth.get('per_kind')} per kind; made by `{synth.get('command')}`")
    if sources.get("verdict_log"):
        lines.append(f"- reviewer labels from the verdict log: {sources['verdict_log']['clips']} clips")
    phantoms = sources.get("phantoms")
    if phantoms:
        lines.append(f"- synthetic phantoms: {phantoms['clips']} clips ({phantoms['per_kind']} per kind, "
                     f"seed {phantoms['seed']}, {phantoms['size']}x{phantoms['size']} px), "
                     f"generator {phantoms['version']}")
    return lines or ["- (none recorded)"]


def _lineage_lines(init_from: str | None, depth: int = 0) -> list[str]:
    """Where the starting weights came from, read from the checkpoint itself while it exists.

    An angiogate checkpoint records the run that made it, so a model trained in
    stages names every stage's command and its sha256: the chain reproduces it.
    """
    if not init_from:
        return []
    path = Path(init_from)
    indent = "  " * depth
    lines = [f"{indent}- initialised from `{path.name}` (weights only; fine-tuned here)" if depth == 0 else
             f"{indent}- which was initialised from `{path.name}`"]
    if not path.exists():
        return lines
    digest = file_digest(path)
    try:
        _, start = load_checkpoint(path)
    except Exception:  # not an angiogate checkpoint (plain weights): its name and digest are all there is
        return [lines[0] + f"; sha256 {digest}"]
    extra = start.extra
    stage = f"{indent}  - that checkpoint: {start.version}, sha256 {digest}, input channels {start.input_channels}"
    if extra.get("best_epoch"):
        stage += f", weights of epoch {extra['best_epoch']}"
    if extra.get("val_auc") is not None:
        stage += f" (validation AUC {extra['val_auc']:.4f})"
    lines.append(stage)
    made_by = extra.get("train_config") or {}
    if made_by.get("command"):
        lines.append(f"{indent}  - made by `{made_by['command']}`, run until epoch {extra.get('best_epoch', '?')}")
    if depth < 8:  # a staged model names every stage while its checkpoints exist
        lines += _lineage_lines(made_by.get("init_from"), depth + 1)
    return lines


def write_model_card(checkpoint: str | Path, *, config, sources: dict, split_sizes: dict, test_metrics: dict | None,
                     threshold: float, threshold_rule: str, training_seconds: float, best_epoch: int,
                     epochs_run: int) -> Path:
    """Write MODEL_CARD.md in the checkpoint's folder and return its path."""
    checkpoint = Path(checkpoint)
    network, info = load_checkpoint(checkpoint)
    params = sum(p.numel() for p in network.parameters())
    only = synthetic_only(sources)
    partly = not only and (sources.get("phantoms") or any(f.get("synthetic") for f in sources.get("folders") or []))
    lines = [f"# Model card: {info.version}", ""]
    if only:
        lines += [f"**{PHANTOM_STATEMENT}**", ""]
    elif partly:
        lines += ["**Trained partly on synthetic phantoms; figures below are on a held-out split of the "
                  "same mixture and are not clinical performance.**", ""]
    lines += [
        "## Model",
        f"- checkpoint: `{checkpoint.name}` (sha256 {file_digest(checkpoint)}); architecture {info.arch}, "
        f"{params:,} parameters",
        f"- input: {info.num_frames} frames x {info.crop_size} x {info.crop_size} "
        f"(frames chosen and preprocessed exactly as the gate serves them); input channels "
        f"{info.input_channels}; normalisation mean "
        f"{info.mean:.4f}, std {info.std:.4f}",
        f"- output: P(unsatisfactory) and a reason head over {', '.join(info.reason_classes)}",
        "",
        "## Data",
        *_data_lines(sources),
        f"- split by patient (no patient in two splits), seed {config.seed}: train {split_sizes['train']}, "
        f"validation {split_sizes['validation']}, test {split_sizes['test']} clips",
        "",
        "## Threshold",
        f"- {threshold:.4f} (a clip is held as unsatisfactory when P(unsatisfactory) >= threshold)",
        f"- rule: {threshold_rule}",
        "",
        "## Held-out test split (positive class = unsatisfactory)",
    ]
    if test_metrics:
        metrics, ci = test_metrics["metrics"], test_metrics["ci95"]
        lines += ["| metric | value | 95% CI |", "|---|---|---|"]
        lines += [f"| {name} | {metrics[name]:.4f} | {ci[name][0]:.4f} - {ci[name][1]:.4f} |" for name in METRICS]
        c = test_metrics["complexity"]
        lines += ["", f"Confusion: TP {metrics['tp']}, FP {metrics['fp']}, TN {metrics['tn']}, FN {metrics['fn']} "
                  f"({test_metrics['clips']} clips). Complexity: {c['gmac']:.3f} GMAC, "
                  f"{c['ms_per_clip']:.1f} ms per clip on CPU ({c['threads']} threads, batch 1)."]
        groups = test_metrics.get("by_group") or {}
        if groups:
            lines += ["", "By kind of clip (held-out test split, at the threshold):", "",
                      "| clips | n | decided as labelled |", "|---|---|---|"]
            lines += [f"| {name} | {g['clips']} | {g['decided_as_labelled']} ({g['rate']:.1%}) |"
                      for name, g in groups.items()]
    else:
        lines.append("- no test split was available; no held-out figures")
    lines += [
        "",
        "## Training",
        f"- recipe: Adam lr {config.lr:g}, weight decay {config.weight_decay:g}, StepLR step {config.step_size} "
        f"gamma {config.gamma:g}, batch {config.batch_size}, reason loss weight {config.reason_loss_weight:g}, "
        f"augmentation {'on' if config.augment else 'off'}",
        *_lineage_lines(getattr(config, "init_from", None)),
        f"- epochs run {epochs_run} of {config.epochs} (early-stopping patience {config.patience}); "
        f"best epoch {best_epoch}",
        f"- training time {training_seconds / 60:.1f} min on CPU ({config.threads} threads)",
        f"- reproduce: `{config.command or config.to_command()}`",
        "",
    ]
    path = checkpoint.parent / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
