"""Switching to a newly promoted model while the gate runs.

`ModelWatcher` checks the resolved file every `model.reload_check_s`; when
it changes (a promotion is an atomic rename), or an export of it is
installed or withdrawn (`angiogate export`: OpenVINO may then serve it in
another precision), the new engine is loaded beside the old one and swapped
in between two clips: associations are untouched, and every clip is judged
exactly once, by the engine it names in its row.

Under `model.engine: auto` a checkpoint without an OpenVINO export is served
by torch at once while the watcher makes its fp32 export in the background,
then swapped for it like a promotion. Likewise an int8 or bf16 export checked
on another CPU: the fastest precision checked here serves while a child
re-checks it on this CPU (`recheck.py`); the record it writes is a sidecar
change, so the next check swaps it in.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from angiogate.config import Config
from angiogate.engines import exports
from angiogate.engines.choose import openvino_available
from angiogate.modelstore import recheck
from angiogate.modelstore.resolve import model_path, open_model

log = logging.getLogger(__name__)


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
    sidecars = ()
    if config is not None and config.model.engine != "torch":
        # Sidecars appear or go when an export is installed or withdrawn: cheap to list, no hashing.
        folders = exports.search_folders(path, config.model.export_folder)
        sidecars = tuple(sorted(_mtimes(p for folder in folders for p in folder.glob("*.json"))))
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, sidecars)


class ModelWatcher(threading.Thread):
    """Swaps `judge.engine` when the resolved model file or its exports change."""

    def __init__(self, config: Config, judge, stop: threading.Event):
        super().__init__(name="model-watcher", daemon=True)
        self.config, self.judge, self.stop_event = config, judge, stop
        self.current = _signature(model_path(config), config)
        self.export_thread: threading.Thread | None = None
        self._export_tried: set[str] = set()
        self.recheck_child = None
        self._recheck_tried: set[str] = set()

    def run(self) -> None:
        self.export_missing()
        self.recheck_missing()
        while not self.stop_event.wait(self.config.model.reload_check_s):
            try:
                self.check()
            except Exception:
                log.exception("could not load the new model; still serving %s", self.judge.model_version)
        child = self.recheck_child
        if child is not None and child.poll() is None:  # its record would be half made: it starts again next time
            child.terminate()
            try:
                child.wait(10)
            except Exception:
                child.kill()

    def check(self) -> bool:
        path = model_path(self.config)
        signature = _signature(path, self.config)
        if signature == self.current:
            return False
        engine = open_model(self.config, path) if path is not None else None
        self.current = signature
        previous = self.judge.model_version
        if engine is not None and engine.version == previous:
            return False  # the same weights on the same engine: nothing to swap
        self.judge.engine = engine  # one reference swap: the next clip uses the new model
        log.warning("serving model switched from %s to %s", previous, self.judge.model_version)
        self.export_missing()
        self.recheck_missing()
        return True

    def recheck_missing(self):
        """Start the re-check child for exports of the served checkpoint that were checked on
        another CPU (once per checkpoint per run; its record keeps it from running again)."""
        path = model_path(self.config)
        engine = self.judge.engine
        if path is None or engine is None:
            return None
        try:
            key = exports.file_digest(path)
            if key in self._recheck_tried:
                return None
            self._recheck_tried.add(key)
            precisions = recheck.wanted(path, self.config)
            if not precisions:
                return None
            log.warning("%s", recheck.explain(path, precisions, f"{engine.name} ({engine.version})"))
            self.recheck_child = recheck.start(path, precisions, self.config)
            return self.recheck_child
        except Exception as exc:
            log.warning("could not start the re-check of the exports of %s (%s: %s); %s keeps serving",
                        path, type(exc).__name__, exc, self.judge.model_version)
            return None

    def export_missing(self) -> threading.Thread | None:
        """Torch on the CPU serving under engine auto with OpenVINO at hand means the checkpoint
        has no export yet: make its fp32 export in the background (once per version); the sidecar
        it writes changes the signature, and the next check swaps OpenVINO in."""
        engine, model = self.judge.engine, self.config.model
        if (model.engine != "auto" or model.device == "cuda" or engine is None
                or engine.name != "torch-cpu" or engine.version in self._export_tried
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
        try:
            log.info("making the OpenVINO fp32 export of %s in the background; torch serves meanwhile", path)
            exports.ensure_fp32(path, self.config.model.export_folder, threads=self.config.model.threads)
        except Exception as exc:
            log.warning("could not export %s to OpenVINO (%s: %s); torch keeps serving it",
                        path, type(exc).__name__, exc)
