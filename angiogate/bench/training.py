"""Training speed and the fine-tuning loop, measured (`angiogate bench --sections training`).

Three figures, all with the serving model's shape (the bundled model's when
none is installed):
  - step speed-up: one X3D-S training step (forward + backward, batch 8, the
    full recipe's) with PyTorch's own depthwise Conv3d backward against the
    fast one (`angiogate.training.depthwise`), alternated in this process, so
    the ratio holds across machines and load; an epoch over 100 clips is
    13 such steps;
  - fine-tune wall time: `retrain --init-from <bundled model>` on 24 labelled
    phantom clips with the fine-tuning defaults (8 epochs), timed whole:
    decoding, training, test-split metrics and the model card;
  - its effect: AUC and good runs kept on the same site's other clips (the
    same generator seed, patients not labelled), before and after.
Opt-in (not in the default sections): the reference steps alone take minutes.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

# Kinds the bundled model finds hard (bypass grafts, faint or no contrast, partial fills) beside the
# satisfactory runs they are mistaken for.
HARD_KINDS = ("left_coronary", "right_coronary", "bypass_graft", "faint_contrast", "catheter_only",
              "stopped_early")
FINE_TUNE_GOAL_S = 180.0
SPEEDUP_GOAL = 2.0


def _step_seconds(network, clips, targets, repeats: int) -> list[float]:
    import torch

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        network.zero_grad(set_to_none=True)
        logits = network(clips)
        torch.nn.functional.cross_entropy(logits[:, :2].float(), targets).backward()
        times.append(time.perf_counter() - started)
    return times


def step_speedup(checkpoint: Path, *, batch: int = 8, repeats: int = 2, threads: int = 2, progress=None) -> dict:
    """Seconds per training step, reference and fast depthwise backward, alternated; their ratio."""
    import torch

    from angiogate.engines.model import load_checkpoint
    from angiogate.training.depthwise import use_fast_depthwise
    from angiogate.training.loop import memory_format

    say = progress or (lambda _m: None)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, info = load_checkpoint(checkpoint)
        fast, _ = load_checkpoint(checkpoint)
    use_fast_depthwise(fast)
    layout = memory_format(info.arch)
    for network in (reference, fast):
        network.to(memory_format=layout).train()
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(batch, 3, info.num_frames, info.crop_size, info.crop_size,
                        generator=generator).to(memory_format=layout)
    targets = torch.randint(0, 2, (batch,), generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _step_seconds(fast, clips, targets, 1)  # warm-up: oneDNN primitives, allocator
        times = {"reference": [], "fast": []}
        for round_ in range(repeats):  # alternated, so load changes hit both alike
            for name, network in (("reference", reference), ("fast", fast)):
                say(f"training: step {round_ + 1}/{repeats}, {name} backward")
                times[name] += _step_seconds(network, clips, targets, 1)
    ref, new = statistics.median(times["reference"]), statistics.median(times["fast"])
    steps_per_epoch = -(-100 // batch)
    return {"input_shape": [batch, 3, info.num_frames, info.crop_size, info.crop_size], "threads": threads,
            "reference_step_s": round(ref, 2), "fast_step_s": round(new, 2), "speedup": round(ref / new, 2),
            "epoch_100_reference_s": round(ref * steps_per_epoch, 1),
            "epoch_100_fast_s": round(new * steps_per_epoch, 1), "steps": times}


def fine_tune_effect(workdir: Path, checkpoint: Path, *, labelled: int = 24, per_kind: int = 8, size: int = 256,
                     seed: int = 1601, epochs: int | None = None, progress=None) -> dict:
    """Fine-tune `checkpoint` on `labelled` clips of one phantom site, timed whole; judge the
    site's other clips (patients not labelled) with the model before and after."""
    from angiogate.config import load_config
    from angiogate.export.clips import LabelledClip
    from angiogate.export.promotion_check import _score
    from angiogate.synth import generate
    from angiogate.training.data import records_from_csv
    from angiogate.training.loop import TrainConfig, train

    say = progress or (lambda _m: None)
    site = workdir / "site"
    say(f"training: rendering {per_kind * len(HARD_KINDS)} phantom clips of {len(HARD_KINDS)} hard kinds")
    generate(site, per_kind=per_kind, seed=seed, size=size, kinds=list(HARD_KINDS),
             patients=per_kind * len(HARD_KINDS) // 2)
    records = records_from_csv(site)
    by_patient: dict[str, list] = {}
    for record in records:
        by_patient.setdefault(record.patient_id, []).append(record)
    chosen, others = [], []
    for patient in sorted(by_patient):  # whole patients: the others are patients never labelled
        (chosen if len(chosen) < labelled else others).extend(by_patient[patient])
    labels_csv = workdir / "labelled.csv"
    labels_csv.write_text("file,label,reason,patient_id,sop_instance_uid\n" + "".join(
        f"{r.path},{r.label},{r.reason or ''},{r.patient_id},{r.sop_instance_uid}\n" for r in chosen))
    config = TrainConfig(out_dir=workdir / "run", data=[str(site)], labels_csv=str(labels_csv),
                         init_from=str(checkpoint), epochs=epochs, progress=False, n_bootstrap=200, seed=0)
    say(f"training: fine-tuning on {len(chosen)} labelled clips (timed whole)")
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    held_out = [LabelledClip(r.path, r.target) for r in others]
    say(f"training: judging the site's other {len(held_out)} clips before and after")
    cfg = load_config()
    before, _, _ = _score(checkpoint, held_out, cfg)
    after, _, _ = _score(result.best_checkpoint, held_out, cfg)
    return {"labelled_clips": len(chosen), "kinds": list(HARD_KINDS), "clip_size": size, "seed": seed,
            "split": result.split_sizes, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "fine_tune_s": round(seconds, 1), "epoch_s": [h["seconds"] for h in result.history],
            "other_clips": len(held_out), "other_unsatisfactory": sum(c.target for c in held_out),
            "before": {"auc": before.auc, "kept_good": before.kept_good, "threshold": before.threshold},
            "after": {"auc": after.auc, "kept_good": after.kept_good, "threshold": after.threshold}}


def run(workdir: Path, checkpoint: Path, *, speed_repeats: int = 2, progress=None) -> dict:
    from angiogate.bench.goals import check

    workdir.mkdir(parents=True, exist_ok=True)
    speed = step_speedup(checkpoint, repeats=speed_repeats, progress=progress)
    tuned = fine_tune_effect(workdir, checkpoint, progress=progress)
    return {"checkpoint": str(checkpoint), "speed": speed, "fine_tune": tuned,
            "goal_fine_tune": check("fine_tune_s", tuned["fine_tune_s"]),
            "goal_speedup": check("train_speedup", speed["speedup"]),
            "note": "training: phantom figures (not clinical); the speed-up is measured in one process, "
                    "reference and fast steps alternated"}
