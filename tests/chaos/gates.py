"""A chaos gate driven without blocking: killed, stopped and started again
while the fault loop keeps counting acknowledged stores.

A gate takes tens of seconds to start on a loaded machine; waiting for each
restart in the fault loop once made the rest of the plan land after the
pushes had ended. Here a kill or a restart only sends the signal or spawns
the process; `service()`, called by the loop, moves each gate along:
stopping -> down -> starting -> ready. Processes are spawned from the
calling (main) thread only, as PR_SET_PDEATHSIG requires.
"""

from __future__ import annotations

import signal
import time

from angiogate.children.process import end, port_open
from gate import GateProcess

STOP_GRACE_S = 40.0  # SIGTERM, then SIGKILL, as GateProcess.stop does


class DrivenGate:
    def __init__(self, gate: GateProcess, log=print):
        self.gate = gate
        self.log = log
        self.id = gate.settings["gate_id"]
        self.respawn_at: float | None = None   # down: spawn again at this time
        self.stop_sent: float | None = None    # stopping: SIGTERM sent at this time
        self.launched: float | None = None     # starting: spawned at this time
        self.last_start_s: float | None = None

    def ready(self) -> bool:
        """Running and accepting connections, not stopping or restarting."""
        return (self.respawn_at is None and self.stop_sent is None and self.launched is None
                and self.gate.child.alive())

    @property
    def pid(self) -> int | None:
        return self.gate.proc.pid if self.gate.child.alive() else None

    def kill(self, restart_in_s: float) -> None:
        """SIGKILL now; spawned again by `service()` after `restart_in_s`."""
        self.gate.kill()
        self.launched = None
        self.respawn_at = time.monotonic() + restart_in_s

    def restart(self) -> None:
        """SIGTERM now (a clean stop, e.g. for a new configuration); spawned again once it exits."""
        if self.gate.proc is not None:
            self.gate.proc.send_signal(signal.SIGTERM)
        self.stop_sent = time.monotonic()

    def service(self) -> None:
        now = time.monotonic()
        if self.stop_sent is not None:
            proc = self.gate.proc
            if proc is None or proc.poll() is not None or now - self.stop_sent > STOP_GRACE_S:
                end(proc, signal.SIGKILL, 10)  # reaps it (or kills it after the grace)
                self.gate.child.proc = None
                self.stop_sent, self.respawn_at = None, now
        if self.respawn_at is not None and now >= self.respawn_at:
            self.gate.child.launch()
            self.respawn_at, self.launched = None, now
        if self.launched is not None:
            if not self.gate.child.alive():
                raise RuntimeError(f"{self.id} exited while starting:\n{self.gate.log_text()[-3000:]}")
            if port_open(self.gate.port):
                self.last_start_s = round(now - self.launched, 1)
                self.launched = None
                self.log(f"[chaos] {self.id} up again in {self.last_start_s} s (pid {self.gate.proc.pid})")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.id} not up after {timeout:.0f} s:\n{self.gate.log_text()[-3000:]}")
            self.service()
            time.sleep(0.1)
