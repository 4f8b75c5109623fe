"""DCMTK's storescu, storescp and echoscu, found and driven as children.

pynetdicom installs console scripts also named `storescu`/`storescp`/
`echoscu` that can come first on PATH (pyenv shims do). Only a binary whose
`--version` names DCMTK (or OFFIS) counts; /usr/bin is tried first.
Facts that shape this code (recipes: /work/shared/PEERS.md):
- DCMTK 3.6.7 storescp has no bind-address option: it listens on 0.0.0.0.
  Ports are random and runs short; clients here only connect to 127.0.0.1.
- `storescu -v` logs to stderr (stdout only gets "XMIT: ..." progress) and
  exits 0 with `-nh` even when some stores failed: parse the log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path

from angiogate.children.process import end, free_port, port_open, spawn, tail, wait_until

# storescp accepts PDUs of 4096..131072 bytes.
_PDU_MIN, _PDU_MAX = 4096, 131072


class DcmtkMissing(RuntimeError):
    """DCMTK is not installed (apt-get install dcmtk)."""


@lru_cache(maxsize=None)
def find_dcmtk(name: str) -> str | None:
    """Absolute path of DCMTK's `name` (storescu, storescp, echoscu, ...), or None."""
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
    """Like `find_dcmtk`, but raises DcmtkMissing when it is not installed."""
    path = find_dcmtk(name)
    if path is None:
        raise DcmtkMissing(f"DCMTK {name} not installed: apt-get install dcmtk")
    return path


def dcmtk_version() -> str | None:
    path = find_dcmtk("storescu")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


class StoreSCP:
    """DCMTK `storescp` as a child: accepts every transfer syntax (`+xa`),
    writes each object it is sent to a uniquely named file (`+uf`) in
    `out_dir`.

    It listens on all interfaces (storescp 3.6.7 has no bind option).
    Misbehaving peers come from storescp's own options in `extra_args`:
    `--refuse` (every association rejected: "Rejected Permanent"),
    `--abort-after` / `--abort-during` (association aborted around the
    C-STORE, nothing stored), `--sleep-during N` / `--sleep-after N` (slow
    peer), `--ignore` (answers Success, stores nothing). A peer that is down
    is just `stop()`: connections are then refused. There is no option to
    answer a C-STORE with a failure status; `--reject` only rejects clients
    without an Implementation Class UID, which DCMTK and pynetdicom send.
    storescp +xa does not accept JPEG Lossless Process 14
    (1.2.840.10008.1.2.4.57); Orthanc does. `verbose` logs every object
    (`-v`; the bench leaves it off); `max_pdu_bytes` sets `-pdu`.
    """

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP", port: int | None = None,
                 extra_args: tuple[str, ...] | list[str] = (), max_pdu_bytes: int | None = None,
                 verbose: bool = True):
        self.out_dir = Path(out_dir)
        self.aet = aet
        self._want_port = port
        self.port = port
        self.extra_args = list(extra_args)
        self.max_pdu_bytes = None if max_pdu_bytes is None else min(max(max_pdu_bytes or _PDU_MAX, _PDU_MIN), _PDU_MAX)
        self.verbose = verbose
        self.log = self.out_dir.parent / f"{self.out_dir.name}.storescp.log"
        self.proc: subprocess.Popen | None = None

    def _args(self) -> list[str]:
        return [dcmtk("storescp"), *(["-v"] if self.verbose else []), "+xa", "+uf",
                *(["-pdu", str(self.max_pdu_bytes)] if self.max_pdu_bytes else []),
                "-od", str(self.out_dir), "-aet", self.aet, *self.extra_args, str(self.port)]

    def start(self, timeout: float = 10) -> "StoreSCP":
        """Start and return once the port accepts TCP connections."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a random port may be taken between pick and bind
            self.port = self._want_port or free_port()
            self.proc = spawn(self._args(), self.log, cwd=self.out_dir.parent)
            try:
                wait_until(lambda: port_open(self.port), self.proc, timeout, "storescp", self.log)
                return self
            except RuntimeError:
                end(self.proc, signal.SIGKILL, 15)
                if self._want_port or attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        """Stop storescp by its PID (SIGTERM; SIGKILL if still there after 5 s)."""
        end(self.proc, signal.SIGTERM, 5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def received_files(self) -> list[Path]:
        """Files written so far, oldest first. storescp writes a file before
        it sends the Success response, so after storescu returns they are
        complete."""
        files = [p for p in self.out_dir.iterdir() if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def log_text(self) -> str:
        return tail(self.log, 100_000)


# storescu proposal flag per transfer syntax; each flag proposes that syntax
# plus the uncompressed ones. Uncompressed files need no flag.
STORESCU_FLAGS = {
    "1.2.840.10008.1.2.4.50": "-xy",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "-xx",   # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.70": "-xs",   # JPEG Lossless SV1 (DCMTK's "default lossless")
    "1.2.840.10008.1.2.4.80": "-xt",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",   # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",   # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",      # RLE lossless
    "1.2.840.10008.1.2.1.99": "-xd",   # Deflated explicit VR LE
}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _syntax_and_class(path: Path) -> tuple[str | None, str | None]:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds.file_meta.TransferSyntaxUID), str(ds.file_meta.MediaStorageSOPClassUID)
    except Exception:  # not DICOM, no meta: let storescu say what it makes of it
        return None, None


def _profile(path: Path, syntax: str, sop_classes: set[str]) -> list[str]:
    """A storescu `-xf` profile proposing `syntax` (which has no flag, e.g.
    JPEG Lossless Process 14, 1.2.840.10008.1.2.4.57) plus uncompressed."""
    pcs = []
    for sop in sorted(sop_classes):
        pcs += [f"{sop}\\TS", f"{sop}\\UNC"]
    path.write_text("[[TransferSyntaxes]]\n[TS]\nTransferSyntax1 = " + syntax + "\n"
                    "[UNC]\nTransferSyntax1 = 1.2.840.10008.1.2.1\n"
                    "TransferSyntax2 = 1.2.840.10008.1.2\n"
                    "[[PresentationContexts]]\n[PC]\n"
                    + "".join(f"PresentationContext{i} = {pc}\n" for i, pc in enumerate(pcs, 1))
                    + "[[Profiles]]\n[P]\nPresentationContexts = PC\n")
    return ["-xf", str(path), "P"]


def storescu(files, port: int, *, host: str = "127.0.0.1", aec: str, aet: str = "STORESCU",
             timeout: float = 60, extra_args=()) -> subprocess.CompletedProcess:
    """Send `files` with DCMTK `storescu -v -nh`, each in its own transfer syntax.

    Files are grouped by transfer syntax (from their file meta) and each
    group goes in its own association with the matching proposal flag
    (STORESCU_FLAGS; a generated `-xf` profile for compressed syntaxes
    without a flag, such as 1.2.840.10008.1.2.4.57). Returns one
    CompletedProcess: `args` lists every command, `returncode` is the first
    non-zero one (0 does NOT mean every store succeeded, because of -nh;
    use count_successes / failed_files), stdout/stderr are concatenated.
    `timeout` bounds the whole call (subprocess.TimeoutExpired).
    """
    files = [Path(f) for f in files]
    groups: dict[str | None, list[tuple[Path, str | None]]] = {}
    for f in files:
        syntax, sop = _syntax_and_class(f)
        key = None if syntax is None or syntax in UNCOMPRESSED else syntax
        groups.setdefault(key, []).append((f, sop))

    deadline = time.monotonic() + timeout
    runs = []
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        for syntax, members in groups.items():
            if syntax is None:
                proposal = []
            elif syntax in STORESCU_FLAGS:
                proposal = [STORESCU_FLAGS[syntax]]
            else:
                proposal = _profile(Path(tmp) / f"{len(runs)}.cfg", syntax,
                                    {s for _, s in members if s})
            args = [dcmtk("storescu"), "-v", "-nh", "-aet", aet, "-aec", aec, *proposal,
                    *extra_args, host, str(port), *(str(f) for f, _ in members)]
            runs.append(subprocess.run(args, capture_output=True, text=True,
                                       timeout=max(deadline - time.monotonic(), 0.1)))
    return subprocess.CompletedProcess(
        args=[r.args for r in runs],
        returncode=next((r.returncode for r in runs if r.returncode), 0),
        stdout="".join(r.stdout for r in runs),
        stderr="".join(r.stderr for r in runs))


def echoscu(port: int, *, aec: str, aet: str = "ECHOSCU", host: str = "127.0.0.1",
            extra_args=(), timeout: float = 30) -> subprocess.CompletedProcess:
    """DCMTK `echoscu -v` (C-ECHO); returncode 0 means the peer answered Success."""
    return subprocess.run([dcmtk("echoscu"), "-v", "-aet", aet, "-aec", aec, *extra_args,
                           host, str(port)], capture_output=True, text=True, timeout=timeout)


def _log_of(output) -> str:
    if isinstance(output, subprocess.CompletedProcess):
        return (output.stdout or "") + (output.stderr or "")
    return output


_SENDING = re.compile(r"^I: Sending file: (.*)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.*)\)$")
_FAILED = re.compile(r"^E: Store Failed, file: (.*):$")


def store_results(output) -> list[tuple[str, str]]:
    """(file, status) per C-STORE attempted, in order, from `storescu -v`'s log.

    status is the text in `I: Received Store Response (<status>)`, e.g.
    "Success", "Warning: ...", "Refused: ...", "Error: ...", or "Failed: <the
    E: line after `Store Failed, file: X:`>" when no response came back.
    Files never attempted (association rejected) are absent.
    """
    results: list[tuple[str, str]] = []
    current, failed = None, None
    for line in _log_of(output).splitlines():
        if m := _SENDING.match(line):
            current = m.group(1)
        elif (m := _RESPONSE.match(line)) and current is not None:
            results.append((current, m.group(1)))
            current = None
        elif m := _FAILED.match(line):
            failed, current = m.group(1), None
        elif failed is not None and line.startswith("E: "):
            results.append((failed, "Failed: " + line[3:]))
            failed = None
    return results


def count_successes(output) -> int:
    """Number of `I: Received Store Response (Success)` lines (str or CompletedProcess)."""
    return sum(status == "Success" for _, status in store_results(output))


def failed_files(output, files=None) -> list[str]:
    """Files whose last attempt did not end in Success. With `files`, files
    that were never attempted (e.g. association refused) count as failed too."""
    last = dict(store_results(output))
    names = [str(f) for f in files] if files is not None else list(last)
    return [f for f in names if last.get(f) != "Success"]


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
