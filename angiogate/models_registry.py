"""Which classifier the gate serves: resolve `model.path` to an engine or none."""

from __future__ import annotations

import logging
from pathlib import Path

from angiogate.config import Config
from angiogate.judge.engine import InferenceEngine, open_engine
from angiogate.judge.model import BUNDLED_MODEL

log = logging.getLogger(__name__)

PHANTOM_NOTICE = ("the bundled model was trained on synthetic phantoms only; "
                  "its figures are not clinical performance")


def model_path(config: Config) -> Path | None:
    """The checkpoint to serve, or None for rules-only judging."""
    value = config.model.path
    if value == "none":
        return None
    if value == "bundled":
        return BUNDLED_MODEL if BUNDLED_MODEL.exists() else None
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model.path {value!r}: no such checkpoint")
    return path


def load_engine(config: Config) -> InferenceEngine | None:
    path = model_path(config)
    if path is None:
        if config.model.path == "bundled":
            log.warning("no bundled model in this installation: judging by header rules alone")
        else:
            log.warning("model.path is 'none': judging by header rules alone")
        return None
    engine = open_engine(path, engine=config.model.engine, device=config.model.device,
                         threads=config.model.threads)
    log.info("classifier %s on %s (%s)", engine.version, engine.name, path)
    if path == BUNDLED_MODEL:
        log.warning(PHANTOM_NOTICE)
    return engine
