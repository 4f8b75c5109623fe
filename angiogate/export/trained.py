"""The OpenVINO exports a freshly trained checkpoint gets before it is promoted.

fp32 (no data needed), then int8 calibrated on the training split and
checked on its test split (validation when there is no test split). Each is
a speed-up: one that fails is skipped with a message, and the checkpoint is
promoted all the same (`angiogate retrain --promote`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

from angiogate.config import Config
from angiogate.engines.exports import ensure_fp32
from angiogate.export.clips import clips_from_split
from angiogate.export.run import report, run_export


def export_trained(checkpoint: Path, split_json: Path, cfg: Config, *,
                   echo: Callable[..., None] | None = None) -> None:
    """Make and install the exports of `checkpoint`; `echo(text, err=...)` tells the operator."""
    echo = echo or _stderr
    if not importlib.util.find_spec("openvino"):
        return
    try:
        ensure_fp32(checkpoint, cfg.model.export_folder, threads=cfg.model.threads)
    except Exception as exc:
        echo(f"OpenVINO fp32 export skipped: {type(exc).__name__}: {exc}", err=True)
        return
    if not (importlib.util.find_spec("nncf") and split_json.exists()):
        return
    calibration = clips_from_split(split_json, ["train"])
    evaluation = clips_from_split(split_json, ["test"]) or clips_from_split(split_json, ["validation"])
    if not (calibration and evaluation):
        return
    try:
        result = run_export(checkpoint, "int8", cfg, calibration=calibration, evaluation=evaluation,
                            threads=cfg.model.threads, notes={"calibration": f"{split_json} train",
                                                              "evaluation": f"{split_json} test"})
    except Exception as exc:
        echo(f"OpenVINO int8 export skipped: {type(exc).__name__}: {exc}", err=True)
        return
    echo(report(result))


def _stderr(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)
