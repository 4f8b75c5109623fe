"""Training speed and the fine-tuning loop, measured (`angiogate bench --sections training`).

Three figures, all with the serving model's shape (the bundled model's when
none is installed):
  - step speed-up: one X3D-S training step (forward + backward, batch 8, the
    full recipe's) with PyTorch's own depthwise Conv3d backward in fp32 against
    the fast path (`angiogate.training.fast_path`) in fp32 and as training runs
    it here (bf16 autocast where the CPU computes bf16 natively), alternated in
    this process, so the ratio holds across machines and load; each timed step
    follows an untimed one of its own variant, as in an epoch, which is 13 such
    steps over 100 clips;
  - fine-tune wall time: `retrain --init-from <bundled model>` on 24 labelled
    clips of one phantom "site" with the fine-tuning defaults (8 epochs at
    most), timed whole: decoding, training, test-split metrics, model card;
  - its effect: AUC and good runs kept on the site's other clips (patients
    never labelled), and on a general phantom set of every kind as rendered
    (seed 777: what the fine-tune must not forget), before and after.
The site: the hard kinds (half satisfactory runs) with annotation boxes and a
label burned into every frame (`real_variants` look "boxes"), a habit real
sets show and the bundled model judges badly (AUC ~0.88, ~80% good kept).
Rendered as they are, the same clips score AUC ~0.99: the look is what a site
teaches. Opt-in (not in the default sections): the reference steps take minutes.
"""

from __future__ import annotations

import json
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
SPEED_ROUNDS = 3  # rounds of the alternated step timing (single steps move by +-20%)
# A site's runs: half satisfactory (the hard kinds' two satisfactory kinds twice over).
SITE_KINDS = HARD_KINDS[:2] * 2 + HARD_KINDS[2:]
SITE_LOOK = "boxes"  # annotation boxes and a label burned into every frame
GENERAL_SEED = 777  # the general phantom set: every kind, as rendered
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "patience", "frozen_blocks", "freeze_batch_norm")


def _step_seconds(network, clips, targets, repeats: int, autocast=None) -> list[float]:
    import contextlib

    import torch

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        network.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            logits = network(clips)
        torch.nn.functional.cross_entropy(logits[:, :2].float(), targets).backward()
        times.append(time.perf_counter() - started)
    return times


def step_speedup(checkpoint: Path, *, batch: int = 8, repeats: int = SPEED_ROUNDS, threads: int = 2,
                 progress=None) -> dict:
    """Seconds per training step: PyTorch's depthwise backward in fp32 (the reference), the fast
    backward in fp32, and the fast backward as training runs it here (bf16 autocast on a CPU with
    native bf16), alternated; the speed-up is the reference over the way training runs."""
    import torch

    from angiogate.engines.model import load_checkpoint
    from angiogate.training.fast_path import use_fast_path
    from angiogate.training.device import autocast_dtype, mixed_precision, precision_name
    from angiogate.training.loop import memory_format

    say = progress or (lambda _m: None)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, info = load_checkpoint(checkpoint)
        fast, _ = load_checkpoint(checkpoint)
    use_fast_path(fast)
    layout = memory_format(info.arch)
    for network in (reference, fast):
        network.to(memory_format=layout).train()
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(batch, 3, info.num_frames, info.crop_size, info.crop_size,
                        generator=generator).to(memory_format=layout)
    targets = torch.randint(0, 2, (batch,), generator=generator)
    variants = [("reference", reference, None), ("fast", fast, None)]
    if autocast_dtype("cpu") is not None:  # PyTorch's own backward in bf16 too: is the fast one still needed?
        variants[1:1] = [("reference_mixed", reference, lambda: mixed_precision("cpu"))]
        variants.append(("fast_mixed", fast, lambda: mixed_precision("cpu")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _name, network, autocast in variants[1:]:  # warm-up: oneDNN primitives, allocator
            _step_seconds(network, clips, targets, 1, autocast and autocast())
        times = {name: [] for name, _, _ in variants}
        for round_ in range(repeats):  # alternated, so load changes hit all alike
            for name, network, autocast in variants:
                say(f"training: step {round_ + 1}/{repeats}, {name} backward")
                # Two steps in a row, the second timed: an epoch's steps follow steps of their own
                # kind (memory already mapped, caches warm), not another variant's.
                times[name] += _step_seconds(network, clips, targets, 2, autocast and autocast())[1:]
    median = {name: statistics.median(values) for name, values in times.items()}
    ref, new = median["reference"], median[variants[-1][0]]
    steps_per_epoch = -(-100 // batch)
    return {"input_shape": [batch, 3, info.num_frames, info.crop_size, info.crop_size], "threads": threads,
            "precision": precision_name("cpu"), "reference_step_s": round(ref, 2),
            "fast_fp32_step_s": round(median["fast"], 2), "fast_step_s": round(new, 2),
            "reference_mixed_step_s": round(median["reference_mixed"], 2) if "reference_mixed" in median else None,
            "speedup": round(ref / new, 2), "speedup_fp32": round(ref / median["fast"], 2),
            "epoch_100_reference_s": round(ref * steps_per_epoch, 1),
            "epoch_100_fast_s": round(new * steps_per_epoch, 1), "steps": times}


def render_site(folder: Path, *, per_kind: int, seed: int, size: int, look: str | None = SITE_LOOK,
                kinds=HARD_KINDS) -> None:
    """Phantoms of `kinds` (two clips a patient) as one site presents them: every clip, good or
    bad, rewritten with the site's `look` (`angiogate.training.real_variants.LOOKS`; None: as rendered)."""
    import numpy as np
    import pydicom

    from angiogate.synth import generate
    from angiogate.synth.dicom_writer import write_xa
    from angiogate.training.real_variants import apply_look

    rows = generate(folder, per_kind=per_kind, seed=seed, size=size, kinds=list(kinds),
                    patients=per_kind * len(kinds) // 2, workers=2)
    if look is None:
        return
    for index, row in enumerate(rows):
        path = folder / row["file"]
        ds = pydicom.dcmread(path)
        frames = apply_look(ds.pixel_array.astype(np.uint8), look, np.random.default_rng([seed, index]))
        write_xa(path, np.ascontiguousarray(frames), frame_rate_hz=float(row["frame_rate_hz"]), syntax=row["syntax"],
                 patient_id=ds.PatientID, patient_name=str(ds.PatientName), study_instance_uid=ds.StudyInstanceUID,
                 series_instance_uid=ds.SeriesInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
                 series_number=int(ds.SeriesNumber), instance_number=1,
                 series_description=str(ds.SeriesDescription))


def fine_tune_effect(workdir: Path, checkpoint: Path, *, labelled: int = 24, per_kind: int = 9, size: int = 256,
                     seed: int = 1601, look: str | None = SITE_LOOK, kinds=SITE_KINDS, general_per_kind: int = 10,
                     progress=None, **overrides) -> dict:
    """Fine-tune `checkpoint` on `labelled` clips of one phantom site, timed whole; judge the
    site's other clips (patients not labelled), and a general phantom set of every kind as
    rendered, with the model before and after. `overrides`: TrainConfig fields (the recipe's
    defaults otherwise)."""
    from angiogate.config import load_config
    from angiogate.export.clips import LabelledClip
    from angiogate.export.promotion_check import _score
    from angiogate.synth import generate
    from angiogate.training.data import records_from_csv
    from angiogate.training.loop import TrainConfig, train

    say = progress or (lambda _m: None)
    site = workdir / "site"
    say(f"training: rendering {per_kind * len(kinds)} phantom clips of {len(set(kinds))} hard kinds, "
        f"site look {look}")
    render_site(site, per_kind=per_kind, seed=seed, size=size, look=look, kinds=kinds)
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
    general_dir = workdir / "general"
    if general_per_kind:
        say(f"training: rendering the general phantom set ({general_per_kind} clips of every kind)")
        generate(general_dir, per_kind=general_per_kind, seed=GENERAL_SEED, size=size, workers=2)
    config = TrainConfig(out_dir=workdir / "run", data=[str(site)], labels_csv=str(labels_csv),
                         init_from=str(checkpoint), progress=False, n_bootstrap=200, seed=0,
                         **overrides)
    say(f"training: fine-tuning on {len(chosen)} labelled clips (timed whole)")
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    chosen_config = json.loads((workdir / "run" / "train_config.json").read_text())
    cfg = load_config()
    sets = {"site": [LabelledClip(r.path, r.target) for r in others]}
    if general_per_kind:
        sets["general"] = [LabelledClip(r.path, r.target) for r in records_from_csv(general_dir)]
    judged = {}
    for name, clips in sets.items():
        say(f"training: judging {len(clips)} clips ({name}) before and after")
        before, _, _ = _score(checkpoint, clips, cfg)
        after, _, _ = _score(result.best_checkpoint, clips, cfg)
        judged[name] = {"clips": len(clips), "unsatisfactory": sum(c.target for c in clips),
                        "before": {"auc": before.auc, "kept_good": before.kept_good, "threshold": before.threshold},
                        "after": {"auc": after.auc, "kept_good": after.kept_good, "threshold": after.threshold}}
    site_judged = judged["site"]
    return {"labelled_clips": len(chosen), "kinds": list(kinds), "look": look, "clip_size": size, "seed": seed,
            "recipe": {k: chosen_config[k] for k in RECIPE_FIELDS},
            "split": result.split_sizes, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "fine_tune_s": round(seconds, 1), "epoch_s": [h["seconds"] for h in result.history],
            "history": [{k: h[k] for k in ("epoch", "train_loss", "val_loss", "val_auc")} for h in result.history],
            "other_clips": site_judged["clips"], "other_unsatisfactory": site_judged["unsatisfactory"],
            "before": site_judged["before"], "after": site_judged["after"], "general": judged.get("general")}


def run(workdir: Path, checkpoint: Path, *, speed_repeats: int = SPEED_ROUNDS, progress=None) -> dict:
    from angiogate.bench.goals import check

    workdir.mkdir(parents=True, exist_ok=True)
    speed = step_speedup(checkpoint, repeats=speed_repeats, progress=progress)
    tuned = fine_tune_effect(workdir, checkpoint, progress=progress)
    return {"checkpoint": str(checkpoint), "speed": speed, "fine_tune": tuned,
            "goal_fine_tune": check("fine_tune_s", tuned["fine_tune_s"]),
            "goal_speedup": check("train_speedup", speed["speedup"]),
            "note": "training: phantom figures (not clinical); the speed-up is measured in one process, "
                    "reference and fast steps alternated"}
