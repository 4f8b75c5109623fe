"""The gate under test: `angiogate serve` as a real child process.

`GateProcess` writes a site config into its folder, starts the gate on a
free loopback port (`angiogate.children.gate.GateChild`, the bench's gate
too: ready once the SCP accepts connections and has logged " listening on "),
and reads the verdict log directly with SQLAlchemy. It can be stopped
cleanly, killed with SIGKILL and started again on the same port, spool and
database.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

from angiogate.children.gate import GateChild
from angiogate.children.process import free_port


class GateProcess:
    def __init__(self, work_dir: Path, settings: dict | None = None, *, port: int | None = None):
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.settings = {
            "port": self.port,
            "ae_title": "ANGIOGATE",
            "workers": {"poll_interval_s": 0.1, "lease_s": 60},
            "forwarding": {"retry_base_s": 0.5, "retry_cap_s": 2, "idle_release_s": 1},
            "log_level": "INFO",
            "web": {"port": free_port()},
        } | (settings or {})
        self.config_path = self.work_dir / "site.yaml"
        self.config_path.write_text(yaml.safe_dump(self.settings))
        self.log = self.work_dir / "gate.log"
        self.child = GateChild(self.work_dir, self.config_path, self.port, log=self.log)
        self._engine = None

    @property
    def proc(self):
        return self.child.proc

    @property
    def database_url(self) -> str:
        url = self.settings.get("database_url", "sqlite:///var/angiogate.sqlite3")
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str(self.work_dir / url.removeprefix("sqlite:///"))
        return url

    @property
    def web_url(self) -> str:
        """The review app's address (GateProcess gives it a free port unless settings say otherwise)."""
        return f"http://127.0.0.1:{self.settings['web']['port']}"

    @property
    def spool_dir(self) -> Path:
        return self.work_dir / self.settings.get("spool_dir", "var/spool")

    def start(self, timeout: float = 90) -> "GateProcess":
        self.child.start(timeout)
        return self

    def stop(self) -> None:
        self.child.stop(40)

    def kill(self) -> None:
        self.child.kill()

    def log_text(self) -> str:
        return self.child.log_text()

    def engine(self):
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def query(self, sql: str, **params) -> list[dict]:
        with self.engine().connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params)]

    def verdicts(self) -> list[dict]:
        return self.query("SELECT * FROM verdicts ORDER BY id")

    def wait_settled(self, expected_rows: int, timeout: float = 120) -> list[dict]:
        """Wait until `expected_rows` objects are judged and no forward is pending."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            try:
                rows = self.verdicts()
            except Exception:  # tables not created yet
                rows = []
            judged = [r for r in rows if r["status"] == "judged"]
            pending = [r for r in rows if r["forward_status"] in ("pending", "waiting")]
            if len(judged) >= expected_rows and not pending:
                return rows
            time.sleep(0.25)
        raise AssertionError(f"gate did not settle: {len(rows)} rows, "
                             f"{[(r['sop_instance_uid'], r['status'], r['forward_status']) for r in rows]}\n"
                             f"{self.log_text()[-6000:]}")
