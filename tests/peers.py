"""Real DICOM and database peers for tests: DCMTK, Orthanc, PostgreSQL.

Each peer is a child process started on a free port, talked to on
127.0.0.1 only, and stopped by its PID. The children's toolkit (spawn, end,
wait, log tails, free ports) and the DCMTK peers are the package's own
`angiogate.children`, which the bench uses too; this module adds what only
tests need: `missing()`, the one place that decides what a missing peer,
tool or sample file does to a test (it fails; ANGIOGATE_TESTS_ALLOW_MISSING_PEERS=1
makes it a skip), and Orthanc and PostgreSQL peers. Children get their output in a log file, die
with the process that started them (PR_SET_PDEATHSIG) and are killed at
interpreter exit as a last resort, so a failing or interrupted test leaves
nothing running.

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

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

from angiogate.children import dcmtk as _dcmtk
from angiogate.children.dcmtk import (STORESCU_FLAGS, UNCOMPRESSED, count_successes, failed_files,  # noqa: F401
                                      store_results)
from angiogate.children.process import end, free_port, port_open, spawn, tail, wait_until  # noqa: F401

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ORTHANC_BIN = "/usr/sbin/Orthanc"

# ---------------------------------------------------------------- children


def _spawn(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start a child with stdout+stderr appended to `log`, tracked for cleanup."""
    return spawn(args, log, **kwargs)


def _end(proc: subprocess.Popen | None, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
    """Send `sig` to this one child by PID, wait; SIGKILL if it outlives `timeout`."""
    end(proc, sig, timeout)


def _wait_until(ready, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Poll `ready()` until true; fail early (with the log) if the child exits."""
    wait_until(ready, proc, timeout, what, log)


def wait_for(predicate, timeout: float, what: str, *gates):
    """Poll `predicate()` (every 0.1 s, at most `timeout` s) until it returns something truthy,
    and return that; fail naming `what`, with the tail of each gate's log, if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + "".join(f"\n{gate.log_text()[-6000:]}" for gate in gates if gate is not None))


def _tail(path: Path, n: int = 4000) -> str:
    return tail(path, n)


ALLOW_MISSING = "ANGIOGATE_TESTS_ALLOW_MISSING_PEERS"


def missing(what: str) -> NoReturn:
    """A peer, tool or sample file that `.ci/run` installs (DCMTK, Orthanc, PostgreSQL,
    dicom3tools, Chromium, ../shared/samples, ...) is absent: the test fails, since a
    skip would let CI pass without having shown anything. A developer without them
    sets ANGIOGATE_TESTS_ALLOW_MISSING_PEERS=1 to skip such tests instead (README, Set-up)."""
    if os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(what)
    pytest.fail(f"{what}; set {ALLOW_MISSING}=1 to skip the tests that need it", pytrace=False)


def need(present: object, what: str) -> None:
    """`missing(what)` unless `present` is truthy."""
    if not present:
        missing(what)


def _need(path: str | Path, hint: str) -> str:
    need(Path(path).is_file() and os.access(path, os.X_OK), hint)
    return str(path)


def dcmtk(name: str) -> str:
    """Absolute path of DCMTK's `name` (storescu, storescp, echoscu, ...); `missing` if absent."""
    path = _dcmtk.find_dcmtk(name)
    need(path, f"DCMTK {name} not installed: apt-get install dcmtk")
    return path


# ---------------------------------------------------------------- DCMTK

class StoreSCP(_dcmtk.StoreSCP):
    __doc__ = _dcmtk.StoreSCP.__doc__

    def start(self, timeout: float = 10) -> "StoreSCP":
        dcmtk("storescp")  # fails (or skips, by choice) without DCMTK
        return super().start(timeout)


def pixel_sha256(path: Path) -> str | None:
    """sha256 of an object's Pixel Data value as stored (encapsulated or not): what a
    destination must hold byte for byte, whatever file meta it wrote. None without one."""
    import hashlib

    from pydicom import dcmread

    ds = dcmread(path, force=True)
    return hashlib.sha256(ds.PixelData).hexdigest() if "PixelData" in ds else None


def received_pixels(scp: "StoreSCP") -> dict[str, str]:
    """{SOP Instance UID: pixel_sha256} of every object `scp` has written."""
    from pydicom import dcmread

    return {str(dcmread(f, stop_before_pixels=True, force=True).SOPInstanceUID): pixel_sha256(f)
            for f in scp.received_files()}


def storescu(files, port: int, **kwargs) -> subprocess.CompletedProcess:
    """`angiogate.children.dcmtk.storescu` (each file in its own transfer syntax); needs DCMTK."""
    dcmtk("storescu")
    return _dcmtk.storescu(files, port, **kwargs)


def echoscu(port: int, **kwargs) -> subprocess.CompletedProcess:
    """DCMTK `echoscu -v` (C-ECHO); returncode 0 means the peer answered Success."""
    dcmtk("echoscu")
    return _dcmtk.echoscu(port, **kwargs)


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
