"""Starting the re-check of exports measured on another CPU, where the gate (or `score`) runs.

An int8 or bf16 export whose agreement with torch was measured on a CPU with
other instruction sets, or with another OpenVINO release, is not served here
until its check has been re-run here. `wanted` says which precisions need
it; `start` launches `python -m angiogate.export.recheck` as a child (nice
19, one thread): the check needs the phantom renderer, which serving never
imports, and a child keeps its CPU work and memory out of the gate. The
child writes this CPU's record beside the exports; the gate's model watcher
(`watch.py`) sees it and switches engines between two clips, as it does for
a promotion. A record, passed or failed, means the check is never run again
for that checkpoint, CPU and OpenVINO release.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from angiogate.config import Config
from angiogate.engines import exports
from angiogate.engines.choose import openvino_available
from angiogate.engines.digests import DigestCache

log = logging.getLogger(__name__)

CHILD_MODULE = "angiogate.export.recheck"
LOCK_SUFFIX = ".running"  # the child's lock beside the record it makes (a PID)


def wanted(checkpoint: Path, config: Config) -> list[str]:
    """Precisions of `checkpoint` to re-check on this CPU (none when OpenVINO cannot serve it)."""
    model = config.model
    if (model.recheck_phantoms_per_kind == 0 or model.engine == "torch" or model.device == "cuda"
            or not openvino_available()):
        return []
    from angiogate.engines.openvino_engine import cpu_precisions  # imports openvino

    digests = DigestCache(model.export_folder)
    digest = digests.digest(checkpoint)
    wanted_here = exports.recheck_wanted(exports.find_exports(checkpoint, model.export_folder, digest, digests),
                                         cpu_precisions())
    if model.precision not in ("auto", *wanted_here):
        return []  # a fixed precision that needs none of them
    folder = exports.record_folder(checkpoint, model.export_folder)
    return [p for p in wanted_here if folder is not None and not _running(folder / exports.here_record_name(digest, p))]


def _running(record: Path) -> bool:
    """A re-check of `record` is under way (its child's lock names a live process)."""
    lock = record.with_name(record.name + LOCK_SUFFIX)
    try:
        os.kill(int(lock.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def start(checkpoint: Path, precisions: list[str], config: Config, *, detach: bool = False,
          log_file: Path | None = None) -> subprocess.Popen:
    """The re-check child, started; it reads the configuration as JSON on its stdin.

    `detach`: it outlives this process (for `angiogate score`, which exits first);
    its output then goes to `log_file` (else nowhere). Otherwise it writes to this
    process's stderr, i.e. the gate's log.
    """
    output = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        output = open(log_file, "ab")
    elif detach:
        output = subprocess.DEVNULL
    try:
        child = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(checkpoint), *precisions],
                                 stdin=subprocess.PIPE, stdout=output, stderr=output,
                                 start_new_session=detach, close_fds=True,
                                 preexec_fn=None if detach else _die_with_parent)
    finally:
        if log_file is not None:
            output.close()
    try:
        child.stdin.write(config.model_dump_json().encode())
        child.stdin.close()
    except BrokenPipeError:  # it died at once; its log says why
        pass
    return child


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the gate dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def explain(checkpoint: Path, precisions: list[str], serving: str) -> str:
    """The log line: what serves meanwhile and why."""
    return (f"{' and '.join(precisions)} export(s) of {checkpoint.name} were checked on another CPU or "
            f"OpenVINO release: {serving} serves while their agreement with torch fp32 is re-checked on "
            f"this CPU in the background (nice 19); a passed check is served from the next clip on")
