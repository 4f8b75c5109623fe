"""`angiogate serve` as a child process, for the bench and the tests.

`GateChild` starts the gate on a site config in its folder, waits until the
SCP accepts connections *and* has logged its " listening on " line (the
socket accepts a moment before the line is written; a caller may read the
start-up log at once), and stops it by its PID: SIGTERM for a clean stop,
SIGKILL for a crash. It can be started again on the same port, spool and
database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from angiogate.children.process import end, port_open, spawn, tail, wait_until

LISTENING = " listening on "  # the SCP's start-up line (angiogate.receive.scp)


class GateChild:
    def __init__(self, work_dir: Path, config_path: Path, port: int, *, log: Path | None = None):
        self.work_dir = Path(work_dir)
        self.config_path = Path(config_path)
        self.port = port
        self.log = Path(log) if log is not None else self.work_dir / "gate.log"
        self.proc: subprocess.Popen | None = None

    def launch(self) -> "GateChild":
        """Start the process and return at once (`start` waits until it is ready)."""
        self.proc = spawn([sys.executable, "-m", "angiogate", "serve", "--config", str(self.config_path)],
                          self.log, cwd=self.work_dir)
        return self

    def start(self, timeout: float = 90) -> "GateChild":
        self.launch()
        wait_until(lambda: port_open(self.port) and LISTENING in self.log_text(), self.proc, timeout,
                   "angiogate serve", self.log)
        return self

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within `timeout` s."""
        end(self.proc, signal.SIGTERM, timeout)
        self.proc = None

    def kill(self) -> None:
        end(self.proc, signal.SIGKILL, 10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, n: int = 20000) -> str:
        return tail(self.log, n)
