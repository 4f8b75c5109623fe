"""Which classifier the gate serves, and switching to a newly promoted one.

`model.path` resolves to a checkpoint or to none (rules only):
  auto     -> the promoted model (`model.promoted_path`) if present, else the
              bundled phantom-trained model if installed, else none;
  bundled  -> the bundled model; none -> rules only; a path -> that file.
`ModelWatcher` checks the resolved file every `model.reload_check_s`; when
it changes (a promotion is an atomic rename), or an export of it is
installed or withdrawn (`angiogate export`: OpenVINO may then serve it in
another precision), the new engine is loaded beside the old one and swapped
in between two clips: associations are untouched, and every clip is judged
exactly once, by the engine it names in its row.

Promotion carries the checkpoint's OpenVINO exports with it, so the gate
switches without converting. Under `model.engine: auto` a checkpoint without
an OpenVINO export is served by torch at once while the watcher makes its
fp32 export in the background, then swapped for it like a promotion.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from angiogate.config import Config
from angiogate.engines.base import InferenceEngine
from angiogate.engines.choose import open_engine, openvino_available
from angiogate.engines.model import BUNDLED_MODEL, load_checkpoint
from angiogate.engines.torch_engine import TorchEngine

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


def _open(config: Config, path: Path) -> InferenceEngine:
    model = config.model
    engine = open_engine(path, engine=model.engine, precision=model.precision, device=model.device,
                         threads=model.threads, performance_hint=model.performance_hint,
                         export_dir=model.export_folder, convert_missing=False)
    log.info("classifier %s on %s (%s)", engine.version, engine.name, path)
    if path == BUNDLED_MODEL or engine.info.extra.get("synthetic_only"):
        log.warning("%s: %s", engine.version, PHANTOM_NOTICE)
    return engine


def load_engine(config: Config) -> InferenceEngine | None:
    path = model_path(config)
    if path is None:
        log.warning("no classifier model (model.path=%s): judging by header rules alone", config.model.path)
        return None
    return _open(config, path)


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
    from angiogate.engines import exports

    try:
        copied = exports.copy_exports(checkpoint, promoted_path, export_dir)
        log.info("promotion of %s carries its OpenVINO exports: %s", checkpoint, ", ".join(copied) or "none")
    except Exception as exc:  # the gate still serves it: torch until it has made an fp32 export
        log.warning("could not carry the OpenVINO exports of %s (%s: %s)", checkpoint, type(exc).__name__, exc)


def _mtimes(paths):
    for path in paths:
        try:
            yield str(path), path.stat().st_mtime_ns
        except FileNotFoundError:  # replaced between listing and looking
            continue


def _signature(path: Path | None, config: Config | None = None):
    if path is None:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    exports = ()
    if config is not None and config.model.engine != "torch":
        from angiogate.engines.exports import search_folders

        # Sidecars appear or go when an export is installed or withdrawn: cheap to list, no hashing.
        exports = tuple(sorted(_mtimes(p for folder in search_folders(path, config.model.export_folder)
                                       for p in folder.glob("*.json"))))
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, exports)


class ModelWatcher(threading.Thread):
    """Swaps `judge.engine` when the resolved model file or its exports change."""

    def __init__(self, config: Config, judge, stop: threading.Event):
        super().__init__(name="model-watcher", daemon=True)
        self.config, self.judge, self.stop_event = config, judge, stop
        self.current = _signature(model_path(config), config)
        self.export_thread: threading.Thread | None = None
        self._export_tried: set[str] = set()

    def run(self) -> None:
        self.export_missing()
        while not self.stop_event.wait(self.config.model.reload_check_s):
            try:
                self.check()
            except Exception:
                log.exception("could not load the new model; still serving %s", self.judge.model_version)

    def check(self) -> bool:
        path = model_path(self.config)
        signature = _signature(path, self.config)
        if signature == self.current:
            return False
        engine = _open(self.config, path) if path is not None else None
        self.current = signature
        previous = self.judge.model_version
        if engine is not None and engine.version == previous:
            return False  # the same weights on the same engine: nothing to swap
        self.judge.engine = engine  # one reference swap: the next clip uses the new model
        log.warning("serving model switched from %s to %s", previous, self.judge.model_version)
        self.export_missing()
        return True

    def export_missing(self) -> threading.Thread | None:
        """Torch on the CPU serving under engine auto with OpenVINO at hand means the checkpoint
        has no export yet: make its fp32 export in the background (once per version); the sidecar
        it writes changes the signature, and the next check swaps OpenVINO in."""
        engine, model = self.judge.engine, self.config.model
        if (model.engine != "auto" or model.device == "cuda" or not isinstance(engine, TorchEngine)
                or engine.device.type != "cpu" or engine.version in self._export_tried
                or not openvino_available()):
            return None
        path = model_path(self.config)
        if path is None:
            return None
        self._export_tried.add(engine.version)
        self.export_thread = threading.Thread(target=self._export, args=(path,), name="openvino-export", daemon=True)
        self.export_thread.start()
        return self.export_thread

    def _export(self, path: Path) -> None:
        from angiogate.engines import exports

        try:
            log.info("making the OpenVINO fp32 export of %s in the background; torch serves meanwhile", path)
            exports.ensure_fp32(path, self.config.model.export_folder, threads=self.config.model.threads)
        except Exception as exc:
            log.warning("could not export %s to OpenVINO (%s: %s); torch keeps serving it",
                        path, type(exc).__name__, exc)
