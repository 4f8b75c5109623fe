"""Promotion: a checkpoint made the serving model, validated, copied, fsync'd, renamed.

Promotion carries the checkpoint's OpenVINO exports with it (they are keyed
by content, so they cannot match the served model until the rename), so the
gate switches without converting. A running gate's watcher (`watch.py`)
picks the new file up between two clips.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from angiogate.engines import exports
from angiogate.engines.choose import openvino_available
from angiogate.engines.model import load_checkpoint

log = logging.getLogger(__name__)


def promote(checkpoint: Path, promoted_path: Path, export_dir: Path | None = None) -> Path:
    """Make `checkpoint` the serving model: validated, copied, fsync'd, renamed.

    Its OpenVINO exports go first (keyed by content, so they cannot match the
    model served until the rename).
    """
    load_checkpoint(checkpoint)  # refuse to promote a file the gate could not load
    promoted_path.parent.mkdir(parents=True, exist_ok=True)
    _carry_exports(checkpoint, promoted_path, export_dir)
    temp = promoted_path.with_name(promoted_path.name + ".incoming")
    shutil.copyfile(checkpoint, temp)
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, promoted_path)
    card = checkpoint.with_name("MODEL_CARD.md")
    if card.exists():
        shutil.copyfile(card, promoted_path.with_suffix(".card.md"))
    return promoted_path


def _carry_exports(checkpoint: Path, promoted_path: Path, export_dir: Path | None) -> None:
    if not openvino_available():
        return
    try:
        copied = exports.copy_exports(checkpoint, promoted_path, export_dir)
        log.info("promotion of %s carries its OpenVINO exports: %s", checkpoint, ", ".join(copied) or "none")
    except Exception as exc:  # the gate still serves it: torch until it has made an fp32 export
        log.warning("could not carry the OpenVINO exports of %s (%s: %s)", checkpoint, type(exc).__name__, exc)
