"""A real gate for the bench: `angiogate serve` as a child on loopback, in a temp folder.

The child is `angiogate.children.gate.GateChild`, the tests' gate too: ready
once it accepts connections and has logged that it listens.

Its site config is the effective config the bench was given (rules, frames,
model engine and threads, workers, PDU size...) with only these changed:
listen on 127.0.0.1 and a free port; SQLite verdict log and spool in the
temp folder; plain DICOM (no TLS, no allow-list); the classifier the bench
names (or none), with the site's export folder; and one destination that
nobody listens on, tried once (`max_attempts: 1`), so forwarding costs one
refused connection per clip and never competes with receiving or judging.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from angiogate.bench.model import child_model_settings
from angiogate.children.gate import GateChild
from angiogate.children.process import free_port, tail
from angiogate.config import Config

GATE_AE = "ANGIOGATE"
START_TIMEOUT_S = 300  # torch import and model load on a busy 2-core machine


def bench_settings(base: Config, workdir: Path, *, port: int, model_path: Path | None) -> dict:
    """The site config (as a dict) of a bench gate in `workdir`."""
    settings = base.model_dump(mode="json")
    settings.update(
        ae_title=GATE_AE, port=port, bind_address="127.0.0.1", require_called_ae_title=True,
        allowed_peers=[], tls=dict(settings["tls"], enabled=False),
        database_url=f"sqlite:///{workdir / 'verdicts.sqlite3'}",
        spool_dir=str(workdir / "spool"), outbox_dir=str(workdir / "outbox"),
        destinations=[{"ae_title": "BENCH_NOBODY", "host": "127.0.0.1", "port": free_port()}],
        log_level="INFO",
    )
    settings["forwarding"] = dict(settings["forwarding"], max_attempts=1, retry_base_s=3600, retry_cap_s=3600,
                                  connect_timeout_s=2)
    # The site's export folder: a settled gate's exports and this CPU's agreement records (the
    # bench re-checks first); in the gate's own folder it would serve fp32 and re-check again.
    settings["model"] = child_model_settings(base, path=str(model_path) if model_path else "none",
                                             promoted_path=str(workdir / "models" / "current.pt"))
    # The review app runs as in production, but on any free loopback port and with its files in
    # `workdir`: the site's port may be taken by the site's own gate on the machine being measured.
    settings["web"] = dict(settings["web"], bind_address="127.0.0.1", port=0,
                           secret_key_file=str(workdir / "web-secret.key"), cache_dir=str(workdir / "web-cache"))
    return settings


class BenchGate:
    def __init__(self, workdir: Path, base: Config, *, model_path: Path | None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.settings = bench_settings(base, self.workdir, port=self.port, model_path=model_path)
        self.config_path = self.workdir / "site.yaml"
        self.config_path.write_text(yaml.safe_dump(self.settings, sort_keys=False))
        self.log = self.workdir / "gate.log"
        self.child = GateChild(self.workdir, self.config_path, self.port, log=self.log)
        self._db = None

    @property
    def ae_title(self) -> str:
        return GATE_AE

    def start(self) -> "BenchGate":
        self.child.start(START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        self.child.stop(60)
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __enter__(self) -> "BenchGate":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.child.alive()

    def log_tail(self) -> str:
        return tail(self.log)

    def model_banner(self, timeout_s: float = 30) -> str | None:
        """The `model: VERSION on ENGINE` line `angiogate serve` prints once it listens."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in tail(self.log, 20000).splitlines():
                if line.strip().startswith("model: "):
                    return line.strip()
            time.sleep(0.2)
        return None

    def _engine(self):
        from angiogate.store.db import make_engine

        if self._db is None:
            self._db = make_engine(self.settings["database_url"])
        return self._db

    def backlog(self) -> int:
        """Objects received and not judged yet (the judge queue)."""
        from angiogate.store.schema import RECEIVED, Verdict

        with Session(self._engine()) as session:
            return int(session.scalar(select(func.count()).select_from(Verdict)
                                      .where(Verdict.status == RECEIVED)))

    def judged_count(self) -> int:
        from angiogate.store.schema import JUDGED, Verdict

        with Session(self._engine()) as session:
            return int(session.scalar(select(func.count()).select_from(Verdict).where(Verdict.status == JUDGED)))

    def decided(self, uids: list[str]) -> dict[str, tuple[datetime, float | None]]:
        """{uid: (decided_at as naive UTC, model score or None)} of the judged ones among `uids`."""
        from angiogate.store.schema import JUDGED, Verdict

        found = {}
        with Session(self._engine()) as session:
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                rows = session.execute(select(Verdict.sop_instance_uid, Verdict.decided_at, Verdict.score)
                                       .where(Verdict.sop_instance_uid.in_(chunk), Verdict.status == JUDGED))
                found.update({uid: (at, score) for uid, at, score in rows})
        return found
