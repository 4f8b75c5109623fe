"""MODEL_CARD.md beside a checkpoint: what it was trained on, how well it did, how to redo it.

Written by `angiogate.training.loop.train` after training. It states the data (and the
phantom generator's version when phantoms were used), what the model saw in training
(renderer versions, kinds and counts, matrices, frame rates, transfer syntaxes), the split
sizes, the held-out test metrics with CIs and per kind of clip, its verdicts on real clips
(`angiogate.training.real_samples`: ../shared/samples when present, or `--real-samples`),
the threshold and its rule, the command that reproduces the run, the training time and
device, and what the model is not. A model trained only on phantoms says so in plain
words: its figures are not clinical performance.
"""

from __future__ import annotations

from pathlib import Path

from angiogate.engines.model import file_digest, load_checkpoint
from angiogate.training.device import precision_name
from angiogate.training.evaluate import auc_cell
from angiogate.training.real_samples import default_samples, real_verdicts

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
        if folder.get("real_frames"):  # `angiogate real-frames`: real still frames in a made-up run
            kind = (f" ({folder['real_frames']} pseudo-runs of real still frames: real trees and backgrounds, "
                    f"synthetic injection, heart motion and catheter)")
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


def _lineage_lines(init_from: str | None, depth: int = 0, *, sha256: str | None = None,
                   child_version: str | None = None, seen: frozenset = frozenset()) -> list[str]:
    """Where the starting weights came from, read from the checkpoint itself while it exists.

    An angiogate checkpoint records the run that made it, so a model trained in
    stages names every stage's command and its sha256: the chain reproduces it.
    A path names a file, not a model: the chain ends where the file there now is
    not the one the run started from (another digest than recorded; for runs
    that recorded none, a checkpoint no older than the one it would have
    started, or one already in the chain).
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
    if (sha256 and digest != sha256) or digest in seen:
        return lines + [f"{indent}  - the file there now is another model (sha256 {digest[:12]}"
                        + (f", not {sha256[:12]}" if sha256 and digest != sha256 else "") + "): the chain ends here"]
    try:
        _, start = load_checkpoint(path)
    except Exception:  # not an angiogate checkpoint (plain weights): its name and digest are all there is
        return [lines[0] + f"; sha256 {digest}"]
    if not sha256 and child_version and _made_at(start.version) >= _made_at(child_version) > "":
        return lines + [f"{indent}  - the file there now ({start.version}) is no older than the model it "
                        "started: another model, the chain ends here"]
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
        lines += _lineage_lines(made_by.get("init_from"), depth + 1, sha256=made_by.get("init_from_sha256"),
                                child_version=start.version, seen=seen | {digest})
    return lines


def _made_at(version: str | None) -> str:
    """The UTC timestamp in a checkpoint's default version (`<arch>-YYYYMMDDTHHMMSSZ`), else ''."""
    stamp = (version or "").rsplit("-", 1)[-1]
    return stamp if len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z") else ""


def _renderers(sources: dict) -> list[str]:
    versions = [f["synth"].get("generator") for f in sources.get("folders") or [] if f.get("synth")]
    if sources.get("phantoms"):
        versions.append(sources["phantoms"].get("version"))
    return sorted({v for v in versions if v})


def _counts(counts: dict) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def _seen_lines(sources: dict, seen: dict | None) -> list[str]:
    """What the model saw in training: the training split's clips, read from their headers."""
    renderers = _renderers(sources)
    lines = [f"- phantom renderer: {', '.join(renderers)}" if renderers else "- phantom renderer: none (no phantoms)"]
    if not seen:
        return lines + ["- (the training split's clips were not described)"]
    lines += [f"- {seen['clips']} training clips ({seen['phantoms']} phantoms); by kind: {_counts(seen['kinds'])}",
              f"- matrices: {_counts(seen['matrices'])}",
              f"- frame rates (Hz): {_counts(seen['frame_rates_hz'])}",
              f"- transfer syntaxes: {_counts(seen['syntaxes'])}"]
    if seen.get("frames"):
        lines.append(f"- frames per clip: {seen['frames'][0]} to {seen['frames'][1]}")
    return lines


def _real_lines(checkpoint: Path, paths: list) -> list[str]:
    if not paths:
        return ["- no real clips were given (`--real-samples`) and ../shared/samples is absent: "
                "no verdicts on real runs"]
    try:
        rows = real_verdicts(checkpoint, paths)
    except Exception as exc:  # the card is still written; it says why this part is missing
        return [f"- judging the real clips failed: {type(exc).__name__}: {exc}"]
    if not rows:
        return [f"- no cine clips in {', '.join(str(p) for p in paths)}"]
    lines = [f"Judged through the gate's judge (default rules, this checkpoint) from "
             f"{', '.join(f'`{p}`' for p in paths)}:", "",
             "| clip | should be | decision | P(unsatisfactory) | reason | contrast_arrival |", "|---|---|---|---|---|---|"]
    for row in rows:
        score = "not run" if row["score"] is None else f"{row['score']:.3f} (threshold {row['threshold']:.3f})"
        lines.append(f"| {row['file']} | {row['expected'] or 'not given'} | {row['decision']} | {score} | "
                     f"{row['reason_code'] or ''} | {row['contrast_arrival'] or ''} |")
    known = [row for row in rows if row["expected"]]
    if known:
        right = sum(row["decision"] == row["expected"] for row in known)
        lines += ["", f"{right} of {len(known)} real clips with a known label judged as they should be "
                  "(a sanity check on a handful of runs, not a clinical validation)."]
    return lines


def write_model_card(checkpoint: str | Path, *, config, sources: dict, split_sizes: dict, test_metrics: dict | None,
                     threshold: float, threshold_rule: str, training_seconds: float, best_epoch: int,
                     epochs_run: int, device: str = "cpu", training_data: dict | None = None,
                     real_samples: list | None = None) -> Path:
    """Write MODEL_CARD.md in the checkpoint's folder and return its path.

    `real_samples`: real clips (files or folders) to judge; default the config's
    `real_samples`, else ../shared/samples when present."""
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
        "## What it saw in training",
        *_seen_lines(sources, training_data),
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
                      "| clips | n | decided as labelled | AUC against the satisfactory |", "|---|---|---|---|"]
            lines += [f"| {name} | {g['clips']} | {g['decided_as_labelled']} ({g['rate']:.1%}) | {auc_cell(g)} |"
                      for name, g in groups.items()]
    else:
        lines.append("- no test split was available; no held-out figures")
    paths = real_samples if real_samples is not None else (list(getattr(config, "real_samples", None) or [])
                                                           or default_samples())
    lines += ["", "## Verdicts on real clips", *_real_lines(checkpoint, paths)]
    lines += [
        "",
        "## Training",
        f"- recipe: Adam lr {config.lr:g}, weight decay {config.weight_decay:g}, StepLR step {config.step_size} "
        f"gamma {config.gamma:g}, batch {config.batch_size}, reason loss weight {config.reason_loss_weight:g}, "
        f"augmentation {'on' if config.augment else 'off'}",
        *_lineage_lines(getattr(config, "init_from", None), sha256=getattr(config, "init_from_sha256", None),
                        child_version=getattr(config, "version", None)),
        f"- epochs run {epochs_run} of {config.epochs} (early-stopping patience {config.patience}); "
        f"best epoch {best_epoch}",
        f"- training time {training_seconds / 60:.1f} min on {device}"
        + f" ({precision_name(device)}" + ("" if device == "cuda" else f", {config.threads} threads") + ")",
        f"- reproduce: `{config.command or config.to_command()}`",
        "",
        "## What it is not",
        "- Not a clinical device: not cleared or validated for any clinical use, and not for diagnosis. "
        "It sorts clips for research and AI work; a person decides anything about a patient.",
        "- Not validated on patients: " + ("its training and held-out figures come from synthetic phantoms and "
                                           "are not clinical performance" if only else
                                           "its held-out figures are from the data above, not a clinical study")
        + "; the real clips above are a sanity check, not a validation.",
        "- Not a judge of other modalities, of single frames, or of runs unlike those it saw in training "
        "(see What it saw in training).",
        "",
    ]
    path = checkpoint.parent / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
