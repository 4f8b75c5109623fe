"""The association reactor of the gate's connections waits for work instead of polling.

pynetdicom 3.0's `Association._run_reactor` (one thread per association)
sleeps 1 ms and looks for work (a DIMSE message, an A-RELEASE or A-ABORT
from the peer, its DUL thread gone, the network timeout), round and round,
whether the association is busy or idle: a thousand wake-ups a second, each
a system call, a GIL hand-off and a context switch on a machine whose two
cores the judge wants. One idle association cost 67 ms of CPU per second on
a loaded 2-core EPYC.

On the gate's SCP connections (`watch`, called by the server's request
handler before the association's threads start) that sleep becomes a wait
on an event the association's two inboxes set when the DUL thread puts
something in them (the DIMSE message queue and the DUL's queue to the user:
A-RELEASE, A-ABORT), of at most `LONGEST_WAIT_S`, so what nothing announces
(the DUL thread ending, the network timeout, a kill from another thread) is
still seen within that. Nothing else changes: the reactor does the same
checks in the same order, and every other sleep in pynetdicom (the DUL's own
idle poll, the requestor's waits in the gate's forwarding) stays as it is.

`install` replaces the `time` module pynetdicom's association module sees by
one whose `sleep` does this for exactly that call (the 1 ms sleep made by
`_run_reactor` of a watched association) and calls `time.sleep` otherwise.
Checked against pynetdicom 3.0 (pinned in pyproject).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import types

from pynetdicom import association as _association

LONGEST_WAIT_S = 0.05
REACTOR_SLEEP_S = 0.001  # what `_run_reactor` sleeps per round in pynetdicom 3.0
_REACTOR_CODE = _association.Association._run_reactor.__code__


class _WakingQueue(queue.Queue):
    """A queue whose `put` also sets an event."""

    def __init__(self, event: threading.Event):
        super().__init__()
        self._event = event

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._event.set()


class _Inboxes:
    """What the association reactor waits on."""

    def __init__(self, assoc):
        self.arrived = threading.Event()
        self.dimse = assoc.dimse.msg_queue = _WakingQueue(self.arrived)
        self.dul = assoc.dul.to_user_queue = _WakingQueue(self.arrived)

    def wait(self) -> None:
        self.arrived.clear()  # what is put from now on ends the wait
        if self.dimse.empty() and self.dul.empty():
            self.arrived.wait(LONGEST_WAIT_S)


def watch(assoc) -> None:
    """Make this association's reactor wait for its inboxes (before its threads start)."""
    assoc._gate_inboxes = _Inboxes(assoc)


def _sleep(seconds: float) -> None:
    inboxes = getattr(threading.current_thread(), "_gate_inboxes", None)
    if inboxes is not None and seconds == REACTOR_SLEEP_S and sys._getframe(1).f_code is _REACTOR_CODE:
        inboxes.wait()
    else:
        time.sleep(seconds)


def install() -> None:
    """Let watched associations' reactors wait instead of polling (idempotent)."""
    if isinstance(_association.time, types.SimpleNamespace):
        return
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = _sleep
    _association.time = shim
