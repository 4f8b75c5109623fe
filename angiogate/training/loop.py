"""The training loop: the paper's recipe, checkpointed every epoch, resumable.

It runs on CUDA when there is a GPU and `device` (`model.device`, `retrain
--device`) allows, in mixed precision (fp16 autocast + GradScaler), and on the
CPU otherwise: its training steps in bf16 autocast where the CPU computes bf16
natively, else fp32; validation scoring in fp32. The same code path
(`angiogate.training.device`) and the same checkpoints, their weights saved on
the CPU.

Recipe (DESIGN.md): patient-level split 70/15/15; Adam (lr 1e-4 for X3D-S,
weight decay 1e-4); StepLR (step 30, gamma 0.1); flips, rotation,
perspective and blur augmentation (plus intensity jitter and noise, see
`angiogate.training.augment`). Loss = cross-entropy on the two binary logits +
`reason_loss_weight` x cross-entropy on the reason logits, the latter only over unsatisfactory
clips whose reason is one of the checkpoint's reason classes.
`balance_reasons` draws training clips so that each unsatisfactory reason is
seen equally often, or in the proportions `reason_weights` sets
(`angiogate.training.data.reason_balanced_weights`); the draw is a
function of (seed, epoch) too. Fields left None take the recipe's defaults
(`angiogate.training.recipe`): the paper's, or, with `init_from` and a few dozen
clips, fine-tuning's (fewer epochs, lower rate, early blocks and batch norm frozen,
a floor of held-out clips per label). On the CPU the network trains through
`angiogate.training.fast_path` (same gradients: a fast depthwise backward, fused Swish).

Model selection and early stopping use the validation AUC, ties broken by
the lower validation loss (phantoms often reach AUC 1.0 early, and the loss
still tells a better-calibrated model); with a single-class validation split
AUC is undefined and the loss alone decides. Training stops after `patience`
epochs without improvement.

Threshold: chosen on the validation split at each best epoch
(angiogate/training/threshold.py): Youden's J by default, or with
`keep_target` the lowest threshold keeping that share of the satisfactory
clips (with `keep_confidence`, showing that share with that confidence).
Resuming a finished run with another rule re-chooses the threshold of its
best checkpoint on the same validation split (weights unchanged).

Files in `out_dir`: last.pt (model, optimiser, scheduler, epoch, best score,
RNG state: `resume=True` continues exactly where it stopped; the
StepLR step and gamma given then apply from the current rate on), best.pt (an
angiogate checkpoint, `angiogate.engines.model.save_checkpoint`, loadable by
TorchEngine), split.json, train_config.json, history.json, test/ (metrics
on the held-out test split) and MODEL_CARD.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, WeightedRandomSampler

from angiogate.clip.input import FrameSampling
from angiogate.engines.metrics import roc_auc
from angiogate.engines.model import REASON_CLASSES, ModelInfo, build_network, save_checkpoint
from angiogate.synth.manifest import generator_version, read_manifest
from angiogate.training.augment import ClipAugment
from angiogate.training.device import grad_scaler, mixed_precision, precision_name, training_device
from angiogate.training.data import (ClipDataset, ClipRecord, describe_records, held_out_floor_met, is_phantom,
                                    patient_split, reason_balanced_weights, records_from_csv,
                                    records_from_phantoms, records_from_verdict_log)
from angiogate.training.fast_path import use_fast_path
from angiogate.training.recipe import resolve_recipe
from angiogate.training.threshold import check_rule, choose_threshold, threshold_rule
from angiogate.training.evaluate import json_safe
from angiogate.training.model_card import PHANTOM_STATEMENT, synthetic_only

log = logging.getLogger(__name__)
LAST_FORMAT = "angiogate-train-state/1"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as train_config.json and in the checkpoints."""

    out_dir: Path = Path("runs/retrain")
    # Data: any mix of labelled folders, the verdict log and phantoms.
    data: list[str] = field(default_factory=list)            # folders of DICOM + labels CSV
    labels_csv: str | None = None                            # default: <folder>/labels.csv
    verdict_log: tuple[str, str] | None = None               # (database URL, spool folder)
    phantoms_per_kind: int = 0
    phantom_size: int = 512
    phantom_dir: Path | None = None                          # default: out_dir/phantoms
    phantom_workers: int = 2                                 # processes rendering phantoms
    # None: the recipe's default (angiogate.training.recipe: the paper's, or fine-tuning a few dozen labels)
    split: tuple[float, float, float] | None = None
    min_held_out: int | None = None                          # clips of each label in validation and test
    cache_dir: Path | None = None                            # default: out_dir/cache
    # Model and recipe.
    arch: str = "x3d_s"
    # None: the --init-from checkpoint's (its weights were trained on that input), else 16, 160, grey
    num_frames: int | None = None
    crop_size: int | None = None
    input_channels: str | None = None                        # grey | grey+contrast (clip/preprocess.py)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    step_size: int = 30
    gamma: float = 0.1
    reason_loss_weight: float = 0.5
    patience: int | None = None
    frozen_blocks: int | None = None                         # X3D: stem + first stages not trained
    freeze_batch_norm: bool | None = None                    # keep the running statistics
    recipe: str | None = None                                # set by train(): full | fine-tune
    augment: bool = True
    balance_reasons: bool = False                            # draw each unsatisfactory reason equally often
    reason_weights: dict[str, float] = field(default_factory=dict)  # with balance_reasons: {reason: factor}
                                                             # on its share of the draws (graft=2)
    keep_target: float | None = None                         # threshold keeps >= this share of validation's
                                                             # satisfactory clips; None: Youden's J
    keep_confidence: float | None = None                     # ... shown with this confidence (e.g. 0.8)
    seed: int = 0
    resume: bool = False
    init_from: str | None = None                             # start from this checkpoint's weights
    init_from_sha256: str | None = None                      # set by train(): that file's digest then
    threads: int = 2                                         # torch intra-op threads; on a shared 2-core
                                                             # box 1 can beat 2 (OpenMP spin-waits)
    device: str = "auto"                                     # auto | cpu | cuda (model.device)
    real_samples: list[str] = field(default_factory=list)    # real clips the model card judges
                                                             # (default: ../shared/samples if present)
    # Evaluation on the test split after training.
    n_bootstrap: int = 1000
    timing_runs: int = 15
    progress: bool = True
    version: str | None = None                               # default: <arch>-<UTC timestamp>
    command: str | None = None                               # what reproduces this run (model card)

    def as_json(self) -> dict:
        raw = dataclasses.asdict(self) | {"command": self.command or self.to_command()}
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in raw.items()}

    def to_command(self) -> str:
        """The `angiogate retrain` command line equivalent to this configuration."""
        parts = ["angiogate retrain"]
        parts += [f"--data {d}" for d in self.data]
        if self.labels_csv:
            parts.append(f"--labels-csv {self.labels_csv}")
        if self.verdict_log:
            parts.append("--from-verdict-log")
        if self.phantoms_per_kind:
            parts.append(f"--phantoms {self.phantoms_per_kind}")
        parts.append(f"--arch {self.arch}")
        parts += [f"--epochs {self.epochs}"] if self.epochs is not None else []
        parts += [f"--batch-size {self.batch_size}"] if self.batch_size is not None else []
        parts += [f"--lr {self.lr:g}"] if self.lr is not None else []
        parts += [f"--frames {self.num_frames}"] if self.num_frames is not None else []
        parts += [f"--size {self.crop_size}"] if self.crop_size is not None else []
        parts += [f"--channels {self.input_channels}"] if self.input_channels is not None else []
        parts += [f"--patience {self.patience}"] if self.patience is not None else []
        parts += [f"--frozen-blocks {self.frozen_blocks}"] if self.frozen_blocks is not None else []
        if self.freeze_batch_norm is not None:
            parts.append("--freeze-batch-norm" if self.freeze_batch_norm else "--train-batch-norm")
        parts += [f"--step-size {self.step_size}", f"--gamma {self.gamma:g}", f"--threads {self.threads}",
                  f"--seed {self.seed}", f"--out-dir {self.out_dir}"]
        if not self.augment:
            parts.append("--no-augment")
        if self.balance_reasons:
            parts.append("--balance-reasons")
        parts += [f"--reason-weight {reason}={factor:g}" for reason, factor in sorted(self.reason_weights.items())]
        if self.keep_target is not None:
            parts.append(f"--keep-target {self.keep_target:g}")
        if self.keep_confidence is not None:
            parts.append(f"--keep-confidence {self.keep_confidence:g}")
        if self.init_from:
            parts.append(f"--init-from {self.init_from}")
        if self.device != "auto":
            parts.append(f"--device {self.device}")
        parts += [f"--real-samples {path}" for path in self.real_samples]
        return " ".join(parts)


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    model_card: Path | None
    best_epoch: int
    best_val_auc: float                # NaN when the validation split holds one class
    best_val_loss: float
    threshold: float
    epochs_run: int                    # last epoch completed (1-based)
    stopped_early: bool
    history: list[dict]
    split_sizes: dict[str, int]
    test_metrics: dict | None
    seconds: float


# ---------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_records(config: TrainConfig) -> tuple[list[ClipRecord], dict]:
    """All labelled clips the configuration names, and a description of where they came from."""
    records: list[ClipRecord] = []
    sources: dict = {"folders": [], "verdict_log": None, "phantoms": None}
    for folder in config.data:
        found = records_from_csv(folder, config.labels_csv)
        records += found
        sources["folders"].append({"folder": str(folder), "clips": len(found),
                                   "synthetic": bool(found) and all(is_phantom(r.path) for r in found),
                                   "real_frames": sum(1 for r in found if (r.kind or "").startswith("real_frames")),
                                   "synth": read_manifest(folder)})
    if config.verdict_log:
        url, spool = config.verdict_log
        found = records_from_verdict_log(url, spool)
        records += found
        sources["verdict_log"] = {"clips": len(found)}
    if config.phantoms_per_kind:
        phantom_dir = Path(config.phantom_dir or Path(config.out_dir) / "phantoms")
        found = records_from_phantoms(phantom_dir, config.phantoms_per_kind, config.seed, config.phantom_size,
                                      workers=config.phantom_workers)
        records += found
        sources["phantoms"] = {"folder": str(phantom_dir), "clips": len(found), "per_kind": config.phantoms_per_kind,
                               "seed": config.seed, "size": config.phantom_size, "version": generator_version()}
    seen: set[str] = set()
    unique = []
    for record in records:  # the same clip from two sources would leak across splits
        if record.sop_instance_uid not in seen:
            seen.add(record.sop_instance_uid)
            unique.append(record)
    if not unique:
        raise ValueError("no labelled clips: give --data folders, --from-verdict-log or --phantoms")
    return unique, sources


def initial_weights(checkpoint: Path, config: TrainConfig) -> dict:
    """The weights of an angiogate checkpoint to start training from (fine-tuning).

    The architecture and reason classes must match; frames and input size may
    differ: the networks' weights do not depend on them (X3D's and the video
    ResNets' pooling has no weights), so a model trained small can be refined
    at full size, or the bundled model refined on a site's own clips.
    """
    from angiogate.engines.model import load_checkpoint

    network, info = load_checkpoint(checkpoint)
    if info.arch != config.arch or tuple(info.reason_classes) != tuple(REASON_CLASSES):
        raise ValueError(f"{checkpoint} is a {info.arch} checkpoint with reasons {list(info.reason_classes)}; "
                         f"cannot start a {config.arch} run with reasons {list(REASON_CLASSES)} from it")
    return network.state_dict()


def is_improvement(auc: float, loss: float, best_auc: float, best_loss: float) -> bool:
    """Higher validation AUC, or equal AUC and lower loss; loss alone when AUC is undefined."""
    if math.isnan(auc) or math.isnan(best_auc):
        return loss < best_loss - 1e-9
    return auc > best_auc + 1e-9 or (abs(auc - best_auc) <= 1e-9 and loss < best_loss - 1e-9)


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, reasons: torch.Tensor,
                 reason_weight: float) -> torch.Tensor:
    logits = logits.float()
    loss = F.cross_entropy(logits[:, :2], targets)
    has_reason = (reasons >= 0) & (targets == 1)
    if reason_weight > 0 and bool(has_reason.any()):
        loss = loss + reason_weight * F.cross_entropy(logits[has_reason, 2:], reasons[has_reason])
    return loss


def _on_cpu(value):
    """A state dict (nested dicts and lists of tensors) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _atomic_save(payload: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=not enabled, transient=False)


# ------------------------------------------------------------ train / eval

def memory_format(arch: str) -> torch.memory_format:
    """Channels-last for the 3D networks: the same numbers, laid out for oneDNN's fast 3D kernels
    (X3D-S at 16x112 trains in ~0.66x the time per clip on this CPU). r2d folds time into the
    batch and runs 2D convolutions, which keep the default layout."""
    return torch.channels_last_3d if arch in ("x3d_s", "r3d_18", "r3d_152") else torch.contiguous_format


def run_epoch(network, loader, optimizer, scaler, config: TrainConfig, progress: Progress, description: str,
              device: str = "cpu") -> float:
    with warnings.catch_warnings():
        # pytorchvideo 0.1.5's Swish warns on every backward pass; say it once, not per batch.
        warnings.filterwarnings("ignore", message=".*saved_variables.*", category=DeprecationWarning)
        return _run_epoch(network, loader, optimizer, scaler, config, progress, description, device)


def set_train_mode(network, config: TrainConfig) -> None:
    """Training mode, except what the recipe freezes: the first `frozen_blocks` blocks and,
    with `freeze_batch_norm`, every batch norm keep eval mode (their running statistics)."""
    network.train()
    for block in list(getattr(network, "blocks", []))[:config.frozen_blocks or 0]:
        block.eval()
    if config.freeze_batch_norm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def freeze_blocks(network, count: int) -> int:
    """No gradients for the first `count` blocks (X3D: the stem, then the stages); returns
    the number of parameters left trainable."""
    blocks = list(getattr(network, "blocks", []))
    if count and len(blocks) <= count:
        raise ValueError(f"cannot freeze {count} blocks of a network with {len(blocks)} blocks")
    for block in blocks[:count]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def _run_epoch(network, loader, optimizer, scaler, config: TrainConfig, progress: Progress, description: str,
               device: str) -> float:
    set_train_mode(network, config)
    task = progress.add_task(description, total=len(loader), info="")
    total, count = 0.0, 0
    layout = memory_format(config.arch)
    for clips, targets, reasons in loader:
        clips, targets, reasons = clips.to(device), targets.to(device), reasons.to(device)
        with mixed_precision(device):
            logits = network(clips.to(memory_format=layout))
        loss = compute_loss(logits, targets, reasons, config.reason_loss_weight)  # in fp32
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # disabled on the CPU: loss.backward(), optimizer.step()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(targets)
        count += len(targets)
        progress.update(task, advance=1, info=f"loss {total / count:.4f}")
    progress.remove_task(task)
    return total / max(count, 1)


@torch.inference_mode()
def predict(network, loader, config: TrainConfig, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, float]:
    """(targets, P(unsatisfactory), mean loss) over a loader, in eval mode."""
    network.eval()
    targets, scores, total = [], [], 0.0
    layout = memory_format(config.arch)
    for clips, y, reasons in loader:
        with mixed_precision(device, training=False):
            logits = network(clips.to(device).to(memory_format=layout))
        total += float(compute_loss(logits, y.to(device), reasons.to(device), config.reason_loss_weight)) * len(y)
        scores.append(torch.softmax(logits[:, :2].float(), dim=1)[:, 1].cpu().numpy())
        targets.append(y.numpy())
    y_true = np.concatenate(targets) if targets else np.zeros(0, int)
    return y_true, (np.concatenate(scores) if scores else np.zeros(0)), total / max(len(y_true), 1)


def _model_info(config: TrainConfig, mean: float, std: float, threshold: float, version: str,
                extra: dict) -> ModelInfo:
    synthetic = synthetic_only(extra["data_sources"])
    description = (f"{config.arch} {config.num_frames}x{config.crop_size}x{config.crop_size} "
                   f"({config.input_channels}) trained by angiogate train")
    if synthetic:
        description += ". " + PHANTOM_STATEMENT
    return ModelInfo(arch=config.arch, num_frames=config.num_frames, crop_size=config.crop_size, mean=mean, std=std,
                     threshold=threshold, version=version, reason_classes=REASON_CLASSES,
                     input_channels=config.input_channels,
                     description=description, extra={**extra, "synthetic_only": synthetic})


def _rethreshold_if_rule_changed(best_path: Path, val_loader, config: TrainConfig, device: str, rule: str,
                                 console) -> float:
    """The best checkpoint's threshold under `rule`, the one asked for now (a resumed run may ask another)."""
    from angiogate.engines.model import load_checkpoint

    network, info = load_checkpoint(best_path)
    if info.extra.get("threshold_rule") == rule:
        return info.threshold
    network = network.to(device).to(memory_format=memory_format(config.arch))
    y_val, s_val, _ = predict(network, val_loader, config, device)
    chosen = choose_threshold(y_val, s_val, config.keep_target, config.keep_confidence)
    save_checkpoint(best_path, network, dataclasses.replace(
        info, threshold=chosen, extra={**info.extra, "threshold_rule": rule}))
    console.print(f"threshold of {best_path.name} re-chosen on the validation split: {info.threshold:.4f} -> "
                  f"{chosen:.4f} ({rule})")
    return chosen


def train(config: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    console = Console(stderr=True)
    check_rule(config.keep_target, config.keep_confidence)  # before any file is written
    if config.reason_weights and not config.balance_reasons:
        raise ValueError("--reason-weight sets a reason's share of balanced draws: give --balance-reasons too")
    device = training_device(config.device, torch.cuda.is_available())
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, config.threads))
    seed_everything(config.seed)

    records, sources = gather_records(config)
    start_info = None
    if config.init_from:
        from angiogate.engines.model import file_digest, load_checkpoint

        _, start_info = load_checkpoint(Path(config.init_from))
        if not config.init_from_sha256:  # the card's lineage checks the file there is still the one started from
            recorded = out_dir / "train_config.json"
            sha256 = json.loads(recorded.read_text()).get("init_from_sha256") if config.resume and recorded.exists() \
                else None
            config = dataclasses.replace(config, init_from_sha256=sha256 or file_digest(Path(config.init_from)))
    config = resolve_recipe(config, len(records), start_info)
    train_records, val_records, test_records = patient_split(records, config.split, config.seed,
                                                             min_held_out=config.min_held_out)
    split_sizes = {"train": len(train_records), "validation": len(val_records), "test": len(test_records)}
    if not train_records or not val_records:
        raise ValueError(f"too few patients to split: {split_sizes}")
    evaluable = held_out_floor_met(val_records, test_records, max(config.min_held_out, 1))
    (out_dir / "split.json").write_text(json.dumps(
        {**{name: [{"sop_instance_uid": r.sop_instance_uid, "path": str(r.path), "label": r.label,
                    "reason": r.reason, "patient_id": r.patient_id} for r in part]
            for name, part in zip(("train", "validation", "test"), (train_records, val_records, test_records))},
         "min_held_out": config.min_held_out, "evaluable": evaluable}, indent=1))
    (out_dir / "train_config.json").write_text(json.dumps(config.as_json(), indent=1))
    console.print(f"clips: {len(records)} ({sum(r.target for r in records)} unsatisfactory); split by patient "
                  f"train {split_sizes['train']} / validation {split_sizes['validation']} / test {split_sizes['test']}; "
                  f"training on {device} ({precision_name(device)})")
    console.print(f"recipe: {config.recipe} (epochs {config.epochs}, batch {config.batch_size}, lr {config.lr:g}, "
                  f"patience {config.patience}, frozen blocks {config.frozen_blocks}, batch norm "
                  f"{'frozen' if config.freeze_batch_norm else 'trained'})")
    if not evaluable:
        console.print(f"[yellow]evaluation is not possible: the labelled clips cannot give validation and test "
                      f"{max(config.min_held_out, 1)} clip(s) of each label from patients not trained on; "
                      f"label more clips (--promote will refuse)[/yellow]")

    sampling = FrameSampling.from_config()
    cache_dir = Path(config.cache_dir or out_dir / "cache")
    shape = dict(num_frames=config.num_frames, crop_size=config.crop_size, sampling=sampling, cache_dir=cache_dir,
                 channels=config.input_channels)
    with _progress(config.progress, console) as progress:
        task = progress.add_task("decoding clips", total=len(train_records) + len(val_records), info="(once; cached)")
        advance = lambda n: progress.update(task, advance=n)  # noqa: E731
        train_set = ClipDataset(train_records, **shape, augment=ClipAugment() if config.augment else None,
                                seed=config.seed, progress=advance)
        val_set = ClipDataset(val_records, **shape, progress=advance)
    skipped = [{"path": str(r.path), "error": e} for r, e in train_set.skipped + val_set.skipped]
    if skipped:
        console.print(f"[yellow]{len(skipped)} clip(s) could not be decoded and are left out "
                      f"(listed in {out_dir / 'skipped.json'})[/yellow]")
        (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=1))
    if not train_set.records or not val_set.records:
        raise ValueError("no decodable clips left in the training or validation split")
    mean, std = train_set.pixel_stats()  # normalisation the checkpoint records
    if config.init_from:  # the starting weights were trained on their checkpoint's normalisation
        mean, std = start_info.mean, start_info.std
    for dataset in (train_set, val_set):
        dataset.mean, dataset.std = mean, std

    network = build_network(config.arch, num_frames=config.num_frames, crop_size=config.crop_size,
                            num_outputs=2 + len(REASON_CLASSES))
    if config.init_from and not (config.resume and (out_dir / "last.pt").exists()):
        initial = initial_weights(Path(config.init_from), config)
        network.load_state_dict(initial)
        console.print(f"weights initialised from {config.init_from}")
    trainable = freeze_blocks(network, config.frozen_blocks)
    if device == "cpu":
        use_fast_path(network)  # same numbers, faster CPU kernels (depthwise backward, Swish)
    network = network.to(device).to(memory_format=memory_format(config.arch))
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    if config.frozen_blocks:
        console.print(f"first {config.frozen_blocks} blocks frozen: {trainable:,} parameters trained")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = grad_scaler(device)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = {"epoch": 0, "best_auc": -math.inf, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0, "threshold": 0.5,
             "history": [], "version": config.version or
             f"{config.arch}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"}
    if config.resume and last_path.exists():
        saved = torch.load(last_path, map_location="cpu", weights_only=False)
        if saved.get("format") != LAST_FORMAT or saved["arch"] != config.arch \
                or saved["shape"] != [config.num_frames, config.crop_size] \
                or saved.get("config", {}).get("input_channels", "grey") != config.input_channels:
            raise ValueError(f"{last_path} is a training state for another model; use another out_dir")
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])  # moves its state to the parameters' device
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # saved by a CUDA run; a CPU run's scaler is disabled and has none
            scaler.load_state_dict(saved["scaler"])
        # The schedule named now carries on from the current rate (a run planned for more
        # epochs than it started with can stretch its step); the epoch count does not restart.
        scheduler.step_size, scheduler.gamma = config.step_size, config.gamma
        torch.set_rng_state(saved["torch_rng"])
        state.update(saved["state"])
        mean, std = saved["mean"], saved["std"]
        for dataset in (train_set, val_set):
            dataset.mean, dataset.std = mean, std
        console.print(f"resuming after epoch {state['epoch']} (best validation AUC {state['best_auc']:.4f} "
                      f"at epoch {state['best_epoch']})")

    rule = threshold_rule(config.keep_target, config.keep_confidence)
    extra = {"data_sources": sources, "split_sizes": split_sizes, "threshold_rule": rule,
             "train_config": config.as_json(), "device": device,
             "training_data": describe_records(train_records)}
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False)
    stopped_early = state["bad_epochs"] >= config.patience
    weights = reason_balanced_weights(train_set.records, config.reason_weights) if config.balance_reasons else None
    with _progress(config.progress, console) as progress:
        epochs_task = progress.add_task("epochs", total=config.epochs, completed=state["epoch"], info="")
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if stopped_early:
                break
            t0 = time.perf_counter()
            train_set.set_epoch(epoch)
            # The shuffle order is a function of (seed, epoch): resuming replays it exactly.
            order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            if weights is not None:  # drawn with replacement, as many draws as clips
                sampler = WeightedRandomSampler(weights, len(train_set), replacement=True, generator=order)
                loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler)
            else:
                loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=order)
            train_loss = run_epoch(network, loader, optimizer, scaler, config, progress, f"epoch {epoch}", device)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            y_val, s_val, val_loss = predict(network, val_loader, config, device)
            auc = roc_auc(y_val, s_val)
            improved = is_improvement(auc, val_loss, state["best_auc"], state["best_val_loss"])
            entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": auc, "lr": lr,
                     "seconds": round(time.perf_counter() - t0, 2), "best": improved}
            state["history"].append(entry)
            state["epoch"] = epoch
            if improved:
                state.update(best_auc=auc, best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                             threshold=choose_threshold(y_val, s_val, config.keep_target, config.keep_confidence))
                info = _model_info(config, mean, std, state["threshold"], state["version"],
                                   {**extra, "best_epoch": epoch, "val_auc": auc})
                save_checkpoint(best_path, network, info)
            else:
                state["bad_epochs"] += 1
            stopped_early = state["bad_epochs"] >= config.patience
            _atomic_save({"format": LAST_FORMAT, "arch": config.arch, "shape": [config.num_frames, config.crop_size],
                          "model": _on_cpu(network.state_dict()), "optimizer": _on_cpu(optimizer.state_dict()),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "torch_rng": torch.get_rng_state(),
                          "mean": mean, "std": std, "state": state, "config": config.as_json()}, last_path)
            progress.update(epochs_task, advance=1)
            console.print(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                          f"val AUC {auc:.4f}{' (best)' if improved else ''}, {entry['seconds']:.1f} s")
    if best_path.exists():
        state["threshold"] = _rethreshold_if_rule_changed(best_path, val_loader, config, device, rule, console)
    (out_dir / "history.json").write_text(json.dumps(json_safe(state["history"]), indent=1))
    if stopped_early:
        console.print(f"early stop: no validation improvement for {config.patience} epochs")

    test_metrics, card = None, None
    if best_path.exists() and test_records:
        from angiogate.training.evaluate import evaluate

        test_metrics = evaluate(best_path, test_records, out_dir / "test", n_bootstrap=config.n_bootstrap,
                                seed=config.seed, timing_runs=config.timing_runs, cache_dir=cache_dir,
                                device=device)
    seconds = time.perf_counter() - started
    training_seconds = sum(h["seconds"] for h in state["history"])
    if best_path.exists():
        from angiogate.training.model_card import write_model_card

        card = write_model_card(best_path, config=config, sources=sources, split_sizes=split_sizes,
                                test_metrics=test_metrics, threshold=state["threshold"],
                                threshold_rule=rule, training_seconds=training_seconds,
                                best_epoch=state["best_epoch"], epochs_run=state["epoch"], device=device,
                                training_data=extra["training_data"])
    return TrainResult(best_checkpoint=best_path, last_checkpoint=last_path, model_card=card,
                       best_epoch=state["best_epoch"], best_val_auc=state["best_auc"],
                       best_val_loss=state["best_val_loss"], threshold=state["threshold"],
                       epochs_run=state["epoch"], stopped_early=stopped_early, history=state["history"],
                       split_sizes=split_sizes, test_metrics=test_metrics, seconds=seconds)
