"""DCMTK's storescu and storescp, found and driven for the ingest benchmark.

pynetdicom installs console scripts also named `storescu`/`storescp` that can
come first on PATH (pyenv shims do). Only a binary whose `--version` names
DCMTK (or OFFIS) counts; /usr/bin is tried first.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from angiogate.bench.children import end, free_port, spawn, wait_for_port

# storescp accepts PDUs of 4096..131072 bytes.
_PDU_MIN, _PDU_MAX = 4096, 131072


class DcmtkMissing(RuntimeError):
    """DCMTK is not installed (apt-get install dcmtk)."""


@lru_cache(maxsize=None)
def find_dcmtk(name: str) -> str | None:
    """Absolute path of DCMTK's `name` (storescu, storescp, ...), or None."""
    candidates = [f"/usr/bin/{name}"]
    candidates += [os.path.join(d or ".", name) for d in os.environ.get("PATH", "").split(os.pathsep)]
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        text = (out.stdout + out.stderr).lower()
        if "dcmtk" in text or "offis" in text:
            return os.path.realpath(candidate)
    return None


def dcmtk(name: str) -> str:
    path = find_dcmtk(name)
    if path is None:
        raise DcmtkMissing(f"DCMTK {name} not found (apt-get install dcmtk)")
    return path


def dcmtk_version() -> str | None:
    path = find_dcmtk("storescu")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


class StoreSCP:
    """DCMTK storescp as a child writing every object to `out_dir` (unique names).

    DCMTK 3.6.7 storescp has no bind-address option and listens on all
    interfaces; the port is random, the run short, and the bench only
    connects to 127.0.0.1.
    """

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP", max_pdu_bytes: int = 16384):
        self.out_dir = Path(out_dir)
        self.aet = aet
        self.max_pdu_bytes = min(max(max_pdu_bytes or _PDU_MAX, _PDU_MIN), _PDU_MAX)
        self.log = self.out_dir.parent / f"{self.out_dir.name}.storescp.log"
        self.port: int | None = None
        self.proc = None

    def start(self, timeout_s: float = 20) -> "StoreSCP":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a random port may be taken between pick and bind
            self.port = free_port()
            self.proc = spawn([dcmtk("storescp"), "+xa", "+uf", "-pdu", str(self.max_pdu_bytes),
                               "-od", str(self.out_dir), "-aet", self.aet, str(self.port)],
                              self.log, cwd=self.out_dir.parent)
            try:
                wait_for_port(self.proc, self.port, timeout_s, "storescp", self.log)
                return self
            except RuntimeError:
                end(self.proc, timeout_s=5)
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        end(self.proc, timeout_s=5)
        self.proc = None


_SUCCESS = re.compile(r"^I: Received Store Response \(Success\)", re.MULTILINE)


def push(files: list[Path], port: int, *, aec: str, aet: str = "BENCHSCU", timeout_s: float = 600,
         log: Path | None = None) -> tuple[float, int]:
    """Send uncompressed `files` with one `storescu` association; (wall seconds, Success responses).

    The wall time covers storescu from start to exit: association, every
    C-STORE and its response, release.
    """
    args = [dcmtk("storescu"), "-v", "-nh", "-aet", aet, "-aec", aec, "127.0.0.1", str(port),
            *(str(f) for f in files)]
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    wall_s = time.perf_counter() - started
    text = out.stdout + out.stderr
    if log is not None:
        with open(log, "a") as handle:
            handle.write(text)
    return wall_s, len(_SUCCESS.findall(text))
