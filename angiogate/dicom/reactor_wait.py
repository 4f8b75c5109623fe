"""The reactors of the gate's connections wait for work instead of polling.

pynetdicom 3.0 runs two loops per association, each in its own thread, and
both poll: look for work, sleep 1 ms, look again, busy or idle, a thousand
times a second, each round a system call, a GIL hand-off and a context
switch on a machine whose two cores the judge wants.

* The association reactor (`Association._run_reactor`) looks for a DIMSE
  message, an A-RELEASE or A-ABORT from the peer, its DUL thread gone, the
  network timeout. One idle association cost 67 ms of CPU per second on a
  loaded 2-core EPYC. On the gate's connections its sleep becomes a wait on
  an event the association's two inboxes set when the DUL thread puts
  something in them (the DIMSE message queue and the DUL's queue to the
  user: A-RELEASE, A-ABORT).
* The DUL reactor (`DULServiceProvider.run_reactor`) looks for a primitive
  the association wants sent (a C-STORE response), a PDU on the socket
  (`select` with no timeout), an event to act on; about 30 ms of CPU a
  second on an idle association, and at 12 clips/s whenever a connection
  waits for its sender or for intake. On the gate's connections its idle
  sleep becomes a `poll` of the socket and of an eventfd (`_Doorbell`)
  that its two queues (primitives to send, events) ring when something is
  put in them (Linux; elsewhere the DUL polls as before). A TLS socket that
  holds decrypted bytes `poll` cannot see is not waited on.

Either wait lasts at most `LONGEST_WAIT_S`, so what nothing announces (the
DUL thread ending, the ARTIM timer, the network timeout, a kill from
another thread) is still seen within that. Nothing else changes: the
reactors do the same checks in the same order, and every other sleep in
pynetdicom (the requestor's waits in the gate's forwarding) stays as it is.

`watch` is called by the server's request handler before the association's
threads start. `install` replaces the `time` module pynetdicom's association
and dul modules see by one whose `sleep` waits like this for exactly those
calls (the sleep of a watched association's `_run_reactor`, the idle sleep
of a watched DUL's `run_reactor`) and calls `time.sleep` otherwise.
Checked against pynetdicom 3.0 (pinned in pyproject).
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import sys
import threading
import time
import types

from pynetdicom import association as _association
from pynetdicom import dul as _dul

LONGEST_WAIT_S = 0.05
REACTOR_SLEEP_S = 0.001  # what `_run_reactor` sleeps per round in pynetdicom 3.0
_REACTOR_CODE = _association.Association._run_reactor.__code__
_DUL_REACTOR_CODE = _dul.DULServiceProvider.run_reactor.__code__


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


class _Doorbell:
    """An eventfd the DUL's queues ring on `put`, and the DUL's wait on it and its socket.

    Closed when garbage: the queues that ring it hold it, so it outlives every ring."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        os.eventfd_write(self.fd, 1)

    def wait(self, dul, seconds: float) -> None:
        """Until the socket has bytes, a queue was rung, or LONGEST_WAIT_S passed."""
        waiting = select.poll()  # not select(): descriptors past 1023 are fine
        waiting.register(self.fd, select.POLLIN)
        transport = dul.socket
        sock = getattr(transport, "socket", None)
        try:
            if sock is not None and getattr(transport, "_is_connected", False):
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    return  # decrypted bytes poll cannot see: read them now
                waiting.register(sock, select.POLLIN)
            waiting.poll(LONGEST_WAIT_S * 1000)
        except (OSError, ValueError):  # the socket was closed meanwhile: pynetdicom's own sleep
            time.sleep(seconds)
            return
        try:
            os.eventfd_read(self.fd)  # rings from now on end the next wait
        except BlockingIOError:
            pass

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)


class _RingingQueue(queue.Queue):
    """A queue whose `put` also rings a doorbell."""

    def __init__(self, doorbell: _Doorbell, replaced: queue.Queue):
        super().__init__()
        self._doorbell = doorbell
        self.queue.extend(replaced.queue)  # what was put before the queue was replaced
        if self.queue:
            doorbell.ring()

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._doorbell.ring()


def watch(assoc) -> None:
    """Make this association's reactors wait, for its inboxes and for its socket or
    outbox (before its threads start)."""
    assoc._gate_inboxes = _Inboxes(assoc)
    if not hasattr(os, "eventfd"):  # not Linux: the DUL polls as pynetdicom has it
        return
    doorbell = _Doorbell()
    dul = assoc.dul
    dul.to_provider_queue = _RingingQueue(doorbell, dul.to_provider_queue)
    dul.event_queue = _RingingQueue(doorbell, dul.event_queue)  # holds Evt5 (connection open) already
    dul._gate_doorbell = doorbell


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    inboxes = getattr(thread, "_gate_inboxes", None)
    doorbell = getattr(thread, "_gate_doorbell", None)
    caller = sys._getframe(1).f_code
    if inboxes is not None and seconds == REACTOR_SLEEP_S and caller is _REACTOR_CODE:
        inboxes.wait()
    elif doorbell is not None and caller is _DUL_REACTOR_CODE:
        doorbell.wait(thread, seconds)
    else:
        time.sleep(seconds)


def _waiting_time() -> types.SimpleNamespace:
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = _sleep
    return shim


def install() -> None:
    """Let watched associations' reactors wait instead of polling (idempotent)."""
    for module in (_association, _dul):
        if not isinstance(module.time, types.SimpleNamespace):
            module.time = _waiting_time()
