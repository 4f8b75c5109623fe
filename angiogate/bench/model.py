"""Model time per clip: torch fp32 eager (the baseline) against the serving engine.

Both engines are loaded in this process from the same checkpoint and get
the same batch-1 clip of the serving shape; after warm-up runs they
alternate (A B, B A, ...) so a change in machine load hits both alike.
The time is one `predict()` call as the judge makes it (array in,
probabilities out). The serving model is the one the config serves
(`angiogate.modelstore`); when none is installed, an untrained X3D-S of the
serving shape stands in, which times the same network, and the report says so.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    input_channels: str = "grey"


def resolve_serving_model(config: Config, workdir: Path) -> ServingModel:
    """The checkpoint the config serves, or an untrained X3D-S of the serving shape in `workdir`."""
    from angiogate.engines.model import ModelInfo, build_network, load_checkpoint, save_checkpoint
    from angiogate.modelstore.resolve import PHANTOM_NOTICE, model_path

    path = model_path(config)
    if path is not None:
        _, info = load_checkpoint(path)
        phantom = bool(info.extra.get("synthetic_only")) or "phantom" in (info.description or "").lower()
        note = f"serving model {info.version} ({path})" + (f"; {PHANTOM_NOTICE}" if phantom else "")
        return ServingModel(Path(path), info.arch, info.num_frames, info.crop_size, info.mean, info.std,
                            info.version, True, note, info.input_channels)
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


def child_model_settings(config: Config, **changes) -> dict:
    """The `model` settings of a child the bench starts (a gate, `score`, `export`): the site's,
    with `changes`, and `export_dir` the site's export folder as an absolute path, so a child
    started in another folder (or with its own `promoted_path`) finds the same exports, compiled
    blobs and this CPU's agreement records instead of re-checking the exports in its own folder."""
    return dict(config.model.model_dump(mode="json"), **changes,
                export_dir=str(Path(config.model.export_folder).resolve()))


def site_file(config: Config, model_path: Path, path: Path) -> Path:
    """Write the effective config, with `model.path` naming `model_path`, as a site file at `path`."""
    import yaml

    settings = config.model_dump(mode="json")
    settings["model"] = child_model_settings(config, path=str(model_path))
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def settle_recheck(config: Config, model: ServingModel, workdir: Path, timeout_s: float = 3600,
                   progress: Callable[[str], None] = lambda line: None) -> str | None:
    """Re-check, now and in the foreground, the exports a gate would re-check in the background.

    A gate (or `score`) whose int8/bf16 exports were checked on another CPU
    serves fp32 and re-checks them in a child; timing it then would measure
    that child's load and, part-way, a switch of engines. So the bench does
    the re-check first, as a settled gate would have, and every section times
    what a settled gate serves. Returns what happened (None: nothing to re-check).
    """
    from angiogate.modelstore import recheck

    if not model.installed or not (precisions := recheck.wanted(model.path, config)):
        return None
    progress(f"model: re-checking the {' and '.join(precisions)} export(s) measured on another CPU, "
             "as a settled gate would have")
    log = Path(workdir) / "recheck.log"
    child = recheck.start(model.path, precisions, config, log_file=log)
    try:
        child.wait(timeout_s)
    except Exception:
        child.kill()
        return f"the re-check of the {' and '.join(precisions)} export(s) did not finish in {timeout_s:.0f} s"
    lines = [line for line in log.read_text(errors="replace").splitlines() if "re-checked on this CPU" in line]
    outcome = lines[-1].split(": ", 1)[-1] if lines else f"exited {child.returncode} (log: {log})"
    return f"{' and '.join(precisions)} re-checked on this CPU before timing: {outcome}"


def export_standin(config: Config, model: ServingModel, workdir: Path, timeout_s: float = 900) -> str:
    """Make the stand-in's OpenVINO fp32 export with `angiogate export`, as a running gate would in
    the background, so every section times the engine a settled gate serves. Returns what happened."""
    import subprocess
    import sys

    from angiogate.children.process import end, spawn, tail

    if config.model.engine == "torch" or importlib.util.find_spec("openvino") is None:
        return "no export: the torch engine serves"
    site = site_file(config, model.path, Path(workdir) / "export-site.yaml")
    log = Path(workdir) / "export.log"
    proc = spawn([sys.executable, "-m", "angiogate", "export", str(model.path), "--precision", "fp32",
                  "--config", str(site)], log, cwd=workdir)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return f"`angiogate export` of the stand-in did not finish in {timeout_s:.0f} s; it may be served by torch"
    finally:
        end(proc, timeout_s=10)
    if proc.returncode != 0:
        return f"`angiogate export` of the stand-in failed ({proc.returncode}): {tail(log, 400)}"
    return "OpenVINO fp32 export of the stand-in made first (`angiogate export`), as a running gate would"


def engine_note(config: Config, engine_name: str) -> str | None:
    """Why a torch engine serves when OpenVINO could, if that is the case."""
    if (engine_name.startswith("torch") and config.model.engine != "torch" and config.model.device != "cuda"
            and importlib.util.find_spec("openvino") is not None):
        return ("torch serves because this checkpoint has no OpenVINO export yet; a running gate makes one "
                "in the background and switches to it (`angiogate export` makes it now)")
    return None


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

    from angiogate.engines.torch_engine import TorchEngine
    from angiogate.modelstore.resolve import load_engine

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
                    "precision": getattr(serving, "precision", "fp32"),
                    "why": getattr(serving, "serving_reason", None),
                    "runs_ms": _rounded(times["serving"]), "engine_note": engine_note(config, serving.name)},
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
