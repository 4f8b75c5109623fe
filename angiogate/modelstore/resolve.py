"""Which classifier the gate serves: `model.path` resolved, and its engine opened.

`model.path` resolves to a checkpoint or to none (rules only):
  auto     -> the promoted model (`model.promoted_path`) if present, else the
              bundled phantom-trained model if installed, else none;
  bundled  -> the bundled model; none -> rules only; a path -> that file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from angiogate.config import Config
from angiogate.engines.base import InferenceEngine
from angiogate.engines.choose import open_engine
from angiogate.engines.info import BUNDLED_MODEL

log = logging.getLogger(__name__)

PHANTOM_NOTICE = ("this model was trained on synthetic phantoms only; "
                  "its figures are not clinical performance")


def model_path(config: Config) -> Path | None:
    """The checkpoint to serve now, or None for rules-only judging."""
    value = config.model.path
    if value == "none":
        return None
    if value == "auto":
        for candidate in (config.model.promoted_path, BUNDLED_MODEL):
            if candidate.exists():
                return candidate
        return None
    if value == "bundled":
        return BUNDLED_MODEL if BUNDLED_MODEL.exists() else None
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"model.path {value!r}: no such checkpoint")
    return path


def open_model(config: Config, path: Path) -> InferenceEngine:
    model = config.model
    engine = open_engine(path, engine=model.engine, precision=model.precision, device=model.device,
                         threads=config.serving_threads(), performance_hint=model.performance_hint,
                         export_dir=model.export_folder, convert_missing=False)
    log.info("classifier %s on %s (%s): %s", engine.version, engine.name, path, getattr(engine, "serving_reason", ""))
    if path == BUNDLED_MODEL or engine.info.extra.get("synthetic_only"):
        log.warning("%s: %s", engine.version, PHANTOM_NOTICE)
    return engine


def load_engine(config: Config) -> InferenceEngine | None:
    path = model_path(config)
    if path is None:
        log.warning("no classifier model (model.path=%s): judging by rules alone (header rules and "
                    "contrast_arrival)", config.model.path)
        return None
    return open_model(config, path)
