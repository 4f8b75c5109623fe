"""Model time per clip: torch fp32 eager (the baseline) against the serving engine.

Both engines are loaded in this process from the same checkpoint and get
the same batch-1 clip of the serving shape; after warm-up runs they
alternate (A B, B A, ...) so a change in machine load hits both alike.
The time is one `predict()` call as the judge makes it (array in,
probabilities out). The serving model is the one the config serves
(`models_registry`); when none is installed, an untrained X3D-S of the
serving shape stands in, which times the same network, and the report says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from angiogate.bench.goals import PAPER_MODEL_MS, check
from angiogate.bench.stats import summary
from angiogate.config import Config

UNTRAINED_VERSION = "x3d_s-untrained-bench"


@dataclass(frozen=True)
class ServingModel:
    path: Path
    arch: str
    num_frames: int
    crop_size: int
    mean: float
    std: float
    version: str
    installed: bool  # False: an untrained stand-in of the serving shape
    note: str


def resolve_serving_model(config: Config, workdir: Path) -> ServingModel:
    """The checkpoint the config serves, or an untrained X3D-S of the serving shape in `workdir`."""
    from angiogate.judge.model import ModelInfo, build_network, load_checkpoint, save_checkpoint
    from angiogate.models_registry import PHANTOM_NOTICE, model_path

    path = model_path(config)
    if path is not None:
        _, info = load_checkpoint(path)
        phantom = bool(info.extra.get("synthetic_only")) or "phantom" in (info.description or "").lower()
        note = f"serving model {info.version} ({path})" + (f"; {PHANTOM_NOTICE}" if phantom else "")
        return ServingModel(Path(path), info.arch, info.num_frames, info.crop_size, info.mean, info.std,
                            info.version, True, note)
    import torch

    torch.manual_seed(0)
    frames, size = config.frames.samples, config.frames.size
    info = ModelInfo(arch="x3d_s", num_frames=frames, crop_size=size, mean=0.45, std=0.225, threshold=0.5,
                     version=UNTRAINED_VERSION, description="untrained X3D-S for timing only (angiogate bench)")
    network = build_network("x3d_s", num_frames=frames, crop_size=size, num_outputs=info.num_outputs)
    saved = save_checkpoint(Path(workdir) / "untrained_x3d_s.pt", network, info)
    note = (f"NO serving model installed (model.path={config.model.path}): timed an UNTRAINED X3D-S "
            f"of the serving shape ({frames} frames, {size}x{size}); its verdicts mean nothing")
    return ServingModel(saved, "x3d_s", frames, size, 0.45, 0.225, UNTRAINED_VERSION, False, note)


def serving_config(config_path: Path | None, model: ServingModel) -> Config:
    """The site config with `model.path` pointing at `model` (every other model key as configured)."""
    from angiogate.config import load_config

    return load_config(config_path, model={"path": str(model.path)})


def _time_once(engine, clip: np.ndarray) -> float:
    started = time.perf_counter()
    engine.predict(clip)
    return (time.perf_counter() - started) * 1000


def run(config_path: Path | None, model: ServingModel, *, warmup: int, runs: int, progress=None) -> dict:
    import torch

    from angiogate.judge.engine import TorchEngine
    from angiogate.models_registry import load_engine

    config = serving_config(config_path, model)
    baseline = TorchEngine(model.path, device=config.model.device, threads=config.model.threads)
    serving = load_engine(config)
    clip = np.random.default_rng(0).standard_normal(
        (1, 3, model.num_frames, model.crop_size, model.crop_size)).astype(np.float32)
    for _ in range(warmup):
        _time_once(baseline, clip)
        _time_once(serving, clip)
    times: dict[str, list[float]] = {"baseline": [], "serving": []}
    for i in range(runs):
        order = (("baseline", baseline), ("serving", serving))
        for key, engine in (order if i % 2 == 0 else order[::-1]):
            times[key].append(_time_once(engine, clip))
        if progress:
            progress(f"model: run {i + 1}/{runs}")
    base, serve = summary(times["baseline"]), summary(times["serving"])
    result = {
        "checkpoint": str(model.path), "model_version": serving.version, "arch": model.arch,
        "installed": model.installed, "note": model.note,
        "input_shape": [1, 3, model.num_frames, model.crop_size, model.crop_size],
        "input": "random N(0,1) clip of the serving shape (time does not depend on the values)",
        "torch_threads": torch.get_num_threads(), "warmup_runs": warmup,
        "baseline": {"engine": f"{baseline.name} fp32 eager", "ms": base, "runs_ms": _rounded(times["baseline"])},
        "serving": {"engine": serving.name, "configured": config.model.engine, "ms": serve,
                    "runs_ms": _rounded(times["serving"])},
        "baseline_over_serving": _ratio(base["median"], serve["median"]),
        "paper_ms": PAPER_MODEL_MS,
        "paper_over_serving": _ratio(PAPER_MODEL_MS, serve["median"]),
        "paper_over_baseline": _ratio(PAPER_MODEL_MS, base["median"]),
        "goal": check("model_ms", serve["median"]),
    }
    del baseline, serving
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]
