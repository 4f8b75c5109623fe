"""Plain functions behind `angiogate retrain` and `angiogate evaluate` (the Typer app wires them).

`retrain_command` gathers labelled clips (folders with a labels CSV, reviewer
labels from the verdict log, synthetic phantoms), trains with the paper's
recipe and returns the best checkpoint's path; promoting it into service is
the caller's job. `evaluate_command` scores a checkpoint on labelled folders.
Both say plainly when figures come from phantoms: those are not clinical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from angiogate.training.evaluate import METRICS

if TYPE_CHECKING:
    from angiogate.config import Config

NOT_CLINICAL = ("Phantom-trained or phantom-evaluated results are NOT clinical figures: "
                "they say the pipeline works, not how the model does on patients.")


def _metrics_table(title: str, result: dict) -> Table:
    table = Table(title=title)
    for column in ("metric", "value", "95% CI"):
        table.add_column(column)
    for name in METRICS:
        low, high = result["ci95"][name]
        table.add_row(name, f"{result['metrics'][name]:.4f}", f"{low:.4f} - {high:.4f}")
    return table


def retrain_command(data: list[str] | None, labels_csv: str | None, from_verdict_log: bool, phantoms: int,
                    arch: str, epochs: int | None, batch_size: int | None, out_dir: str, resume: bool, seed: int,
                    promote: bool, config: Config | None = None, **recipe) -> Path:
    """Train a model; returns the best checkpoint (best.pt in out_dir).

    `config` is the configuration whose verdict log `from_verdict_log` reads (by default
    the one every command finds).

    `recipe` passes further TrainConfig fields (lr, num_frames, crop_size, patience, threads,
    device, real_samples, frozen_blocks, ...). None (epochs, batch_size, lr, ...) takes the
    recipe's default: the paper's, or fine-tuning's for a few dozen labels
    (`angiogate.training.recipe`)."""
    from angiogate.training.loop import TrainConfig, train

    console = Console(stderr=True)
    verdict_log = None
    if from_verdict_log:
        from angiogate.config import load_site_config

        config = config or load_site_config()
        verdict_log = (config.database_url_with_password(), str(config.spool_dir))
    if not (data or verdict_log or phantoms):
        raise ValueError("nothing to train on: give --data folders, --from-verdict-log or --phantoms N")
    train_config = TrainConfig(out_dir=Path(out_dir), data=list(data or []), labels_csv=labels_csv,
                               verdict_log=verdict_log, phantoms_per_kind=phantoms, arch=arch, epochs=epochs,
                               batch_size=batch_size, seed=seed, resume=resume, **recipe)
    train_config.command = train_config.to_command() + (" --resume" if resume else "")
    if phantoms:
        console.print(f"[yellow]{NOT_CLINICAL}[/yellow]")
    result = train(train_config)
    if result.test_metrics:
        console.print(_metrics_table(f"held-out test split ({result.split_sizes['test']} clips)",
                                     result.test_metrics))
    console.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
                  f"threshold {result.threshold:.4f}); model card: {result.model_card}")
    if phantoms:
        console.print(f"[yellow]{NOT_CLINICAL}[/yellow]")
    if promote:
        console.print("promotion requested: the caller installs this checkpoint as the serving model")
    return result.best_checkpoint


def evaluate_command(data: list[str], checkpoint: str, out_dir: str, device: str = "auto") -> dict:
    """Evaluate `checkpoint` on labelled folders (each with labels.csv); returns the metrics dict.

    `device`: auto | cpu | cuda (`model.device`); CUDA runs in mixed precision."""
    import torch

    from angiogate.training.data import is_phantom, records_from_csv
    from angiogate.training.device import training_device
    from angiogate.training.evaluate import evaluate

    console = Console(stderr=True)
    chosen = training_device(device, torch.cuda.is_available())
    records = [record for folder in data for record in records_from_csv(folder)]
    result = evaluate(checkpoint, records, out_dir, device=chosen)
    console.print(_metrics_table(f"{Path(checkpoint).name} on {len(records)} clips", result))
    c = result["complexity"]
    console.print(f"{c['params']:,} parameters, {c['gmac']:.3f} GMAC, {c['ms_per_clip']:.1f} ms per clip "
                  f"({chosen}, batch 1); written to {out_dir}/metrics.json and metrics.md")
    phantom_data = any(is_phantom(record.path) for record in records[:50])
    if result.get("notice") or phantom_data:
        console.print(f"[yellow]{NOT_CLINICAL}[/yellow]")
    return result
