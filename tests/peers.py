"""Real DICOM and database peers for tests: DCMTK, Orthanc, PostgreSQL.

Each peer is a child process this module starts on a free port, talks to on
127.0.0.1 only, and stops by its PID. Children get their output in a log
file (never a pipe that could fill up), die with the process that started
them (PR_SET_PDEATHSIG) and are killed at interpreter exit as a last resort,
so a failing or interrupted test leaves nothing running.

Recipes and measured behaviour: /work/shared/PEERS.md. Facts that shape
this code:
- DCMTK 3.6.7 storescp and Orthanc 1.10 have no bind-address option: they
  listen on 0.0.0.0. Ports are random and runs short; clients here only
  ever connect to 127.0.0.1.
- pynetdicom installs console scripts named storescu/storescp/echoscu that
  can shadow DCMTK on PATH (pyenv shims do); `dcmtk()` picks the real one.
- `storescu -v` logs to stderr (stdout only gets "XMIT: ..." progress) and
  exits 0 with `-nh` even when some stores failed: parse the log.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ORTHANC_BIN = "/usr/sbin/Orthanc"

# ---------------------------------------------------------------- children

_live: set[subprocess.Popen] = set()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, not
    # the process: start long-lived peers from the main (test) thread.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start a child with stdout+stderr appended to `log`, tracked for cleanup."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                **kwargs)
    _live.add(proc)
    return proc


def _end(proc: subprocess.Popen | None, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
    """Send `sig` to this one child by PID, wait; SIGKILL if it outlives `timeout`."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _live.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        _end(proc, signal.SIGKILL, 5)


def _wait_until(ready, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Poll `ready()` until true; fail early (with the log) if the child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _need(path: str | Path, hint: str) -> str:
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.skip(hint)
    return str(path)


@lru_cache(maxsize=None)
def dcmtk(name: str) -> str:
    """Absolute path of DCMTK's `name` (storescu, storescp, echoscu, ...).

    Skips the test if DCMTK is missing. Same-named console scripts from
    pynetdicom are passed over: only a binary whose `--version` says
    `$dcmtk` counts.
    """
    candidates = [f"/usr/bin/{name}"]
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidates.append(os.path.join(d or ".", name))
    for c in dict.fromkeys(candidates):
        if os.path.isfile(c) and os.access(c, os.X_OK):
            try:
                out = subprocess.run([c, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if "$dcmtk" in out:
                return c
    pytest.skip(f"DCMTK {name} not installed: apt-get install dcmtk")


# ---------------------------------------------------------------- DCMTK

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
    (1.2.840.10008.1.2.4.57); Orthanc does.
    """

    def __init__(self, out_dir: Path, *, aet: str = "STORESCP", port: int | None = None,
                 extra_args: tuple[str, ...] | list[str] = ()):
        self.out_dir = Path(out_dir)
        self.aet = aet
        self._want_port = port
        self.port = port
        self.extra_args = list(extra_args)
        self.log = self.out_dir.parent / f"{self.out_dir.name}.storescp.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> "StoreSCP":
        """Start and return once the port accepts TCP connections."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a random port may be taken between pick and bind
            self.port = self._want_port or free_port()
            self.proc = _spawn([dcmtk("storescp"), "-v", "+xa", "+uf", "-od", str(self.out_dir),
                                "-aet", self.aet, *self.extra_args, str(self.port)],
                               self.log, cwd=self.out_dir.parent)
            try:
                _wait_until(lambda: port_open(self.port), self.proc, timeout, "storescp",
                            self.log)
                return self
            except RuntimeError:
                _end(self.proc)
                if self._want_port or attempt == 2:
                    raise

    def stop(self) -> None:
        """Stop storescp by its PID (SIGTERM; SIGKILL if still there after 5 s)."""
        _end(self.proc, signal.SIGTERM, 5)
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
        return _tail(self.log, 100_000)


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


# ---------------------------------------------------------------- Orthanc

class Orthanc:
    """Orthanc 1.10 as a child with a throwaway config in `work_dir`.

    HTTP and DICOM ports are random unless given (Orthanc listens on all
    interfaces; the REST helpers use 127.0.0.1). `config` entries override
    the defaults from PEERS.md, e.g. {"DicomAlwaysAllowStore": False}.
    Stored objects keep their transfer syntax (no transcoding).
    """

    def __init__(self, work_dir: Path, *, aet: str = "ORTHANC", http_port: int | None = None,
                 dicom_port: int | None = None, config: dict | None = None):
        self.work_dir = Path(work_dir)
        self.aet = aet
        self._want_ports = (http_port, dicom_port)
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.overrides = dict(config or {})
        self.log = self.work_dir / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        # never route loopback REST calls through an http_proxy from the environment
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict:
        return {"Name": "test", "Plugins": [],
                "StorageDirectory": str(self.work_dir / "storage"),
                "IndexDirectory": str(self.work_dir / "db"),
                "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "DicomAet": self.aet, "DicomPort": self.dicom_port,
                "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowEcho": True,
                "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
                "UnknownSopClassAccepted": True, "OrthancExplorerEnabled": False,
                "WebDavEnabled": False, "SaveJobs": False, **self.overrides}

    def start(self, timeout: float = 30) -> "Orthanc":
        """Start; return once GET /system answers and the DICOM port accepts TCP."""
        binary = _need(ORTHANC_BIN, "Orthanc not installed: apt-get install orthanc")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.work_dir / "orthanc.json"
        for attempt in range(3):  # random ports may be taken between pick and bind
            self.http_port = self._want_ports[0] or free_port()
            self.dicom_port = self._want_ports[1] or free_port()
            cfg.write_text(json.dumps(self._config(), indent=1))
            self.proc = _spawn([binary, "--no-jobs", str(cfg)], self.log, cwd=self.work_dir)
            try:
                _wait_until(lambda: self._up() and port_open(self.dicom_port), self.proc,
                            timeout, "Orthanc", self.log)
                return self
            except RuntimeError:
                _end(self.proc)
                if all(self._want_ports) or attempt == 2:
                    raise

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL by PID (instant), or SIGTERM and wait (~3 s) if graceful."""
        _end(self.proc, signal.SIGTERM if graceful else signal.SIGKILL, 20)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # REST, urllib only
    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 10) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with self._http.open(req, timeout=timeout) as resp:
            return resp.read()

    def get(self, path: str):
        """GET `path` and decode JSON."""
        return json.loads(self.request("GET", path))

    def instances(self) -> list[str]:
        """Orthanc IDs of all stored instances."""
        return self.get("/instances")

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of all stored instances."""
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.get("/instances?expand")}

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file, byte for byte as Orthanc keeps it."""
        return self.request("GET", f"/instances/{orthanc_id}/file", timeout=60)

    def find_by_sop(self, sop_instance_uid: str) -> str | None:
        """Orthanc ID of the instance with this SOP Instance UID, or None."""
        hits = json.loads(self.request("POST", "/tools/lookup", sop_instance_uid.encode()))
        return next((h["ID"] for h in hits if h["Type"] == "Instance"), None)

    def transfer_syntax(self, orthanc_id: str) -> str:
        """Transfer syntax UID the instance was received (and stored) in."""
        return self.request("GET", f"/instances/{orthanc_id}/metadata/TransferSyntax").decode()

    def log_text(self) -> str:
        return _tail(self.log, 100_000)


# ---------------------------------------------------------------- PostgreSQL

class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster in `base_dir`, listening on
    127.0.0.1:`port` (and a socket in base_dir/sock), run as a child.

    `base_dir` must be enterable by the postgres user (when running as root
    the servers run as postgres; `create()` makes a suitable one under /tmp).
    fsync is off unless `fsync=True` (keep it on to test durability across
    `kill()`). Data survives `stop()`/`start()` and `kill()`/`start()`.
    """

    def __init__(self, base_dir: Path, *, port: int | None = None, fsync: bool = False):
        self.base = Path(base_dir)
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.port = port or free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None

    @classmethod
    def create(cls, **kwargs) -> "PostgresCluster":
        """A cluster in a fresh temporary folder the postgres user owns."""
        base = Path(tempfile.mkdtemp(prefix="angiogate-pg-"))
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        return cls(base, **kwargs)

    def _run_as(self) -> dict:
        # initdb and postgres refuse root: drop to the postgres user
        if os.geteuid() == 0:
            return {"user": "postgres", "group": "postgres", "extra_groups": []}
        return {}

    def _bin(self, name: str) -> str:
        return _need(PG_BIN / name, f"PostgreSQL {name} not installed: apt-get install postgresql")

    def initdb(self) -> None:
        """Create the data folder (0700, owned by the server user) with initdb."""
        for d in (self.data, self.sock):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(d, "postgres", "postgres")
        with open(self.log, "ab") as out:
            subprocess.run([self._bin("initdb"), "-D", str(self.data), "-U", "postgres",
                            "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                           stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120,
                           cwd=self.base, **self._run_as())

    def start(self, timeout: float = 30) -> "PostgresCluster":
        """initdb if needed, start the server, wait for pg_isready; on first
        start also create database `angiogate`."""
        first = not (self.data / "PG_VERSION").exists()
        if first:
            self.initdb()
        self.proc = _spawn([self._bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                            "-k", str(self.sock), "-c", "listen_addresses=127.0.0.1",
                            "-c", f"fsync={'on' if self.fsync else 'off'}"],
                           self.log, cwd=self.base, **self._run_as())
        isready = [self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        _wait_until(lambda: subprocess.run(isready, timeout=10).returncode == 0,
                    self.proc, timeout, "postgres", self.log)
        if first:
            self.createdb("angiogate")
        return self

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster by PID), wait for exit."""
        _end(self.proc, signal.SIGINT, timeout)
        self.proc = None

    def kill(self) -> None:
        """Crash the postmaster (SIGKILL); `start()` then runs crash recovery."""
        _end(self.proc, signal.SIGKILL, 10)
        self.proc = None
        # orphaned backends exit by themselves once they notice; wait for the port
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def destroy(self) -> None:
        """Stop and delete the whole cluster folder."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of database `angiogate`."""
        return self.url_for("angiogate")

    def _admin(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def createdb(self, name: str) -> str:
        """Create database `name` (a plain identifier); return its SQLAlchemy URL."""
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def dropdb(self, name: str) -> None:
        """Drop database `name`, closing any connections still open to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def fresh_db(self) -> tuple[str, str]:
        """Create a uniquely named database; return (name, SQLAlchemy URL)."""
        name = "t_" + uuid.uuid4().hex[:12]
        return name, self.createdb(name)

    def log_text(self) -> str:
        return _tail(self.log, 100_000)
