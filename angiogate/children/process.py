"""Starting, waiting for and ending child processes.

Every child runs on loopback, writes its output to a log file (never a pipe
that could fill up), dies with the process that started it
(PR_SET_PDEATHSIG) and is stopped by its PID, on error or Ctrl-C, and at
interpreter exit as a last resort. Nothing is ever stopped by name.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

_live: set[subprocess.Popen] = set()
_lock = threading.Lock()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, not
    # the process: start long-lived children from the main thread.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(args: list[str], log: Path, *, stdout=None, **kwargs) -> subprocess.Popen:
    """Start a child with stderr (and stdout, unless given) appended to `log`; tracked until `end`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out if stdout is None else stdout,
                                stderr=out, preexec_fn=_die_with_parent, **kwargs)
    with _lock:
        _live.add(proc)
    return proc


def end(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
    """Send `sig` to this one child by PID and wait; SIGKILL if it outlives `timeout_s`."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with _lock:
        _live.discard(proc)


def live() -> list[subprocess.Popen]:
    """Children started here and not ended yet (running or not)."""
    with _lock:
        return list(_live)


def live_children() -> list[int]:
    """PIDs of children still running (for tests: none after a bench run)."""
    return [p.pid for p in live() if p.poll() is None]


@atexit.register
def _kill_leftovers() -> None:
    for proc in live():
        end(proc, signal.SIGKILL, 5)


_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server this process is about to start.

    Taken below the kernel's ephemeral range where there is room: a port the OS
    hands out with bind(0) comes from the range it also gives outgoing
    connections, so between this call and the server's bind, any client socket
    (a storescu, a forward) may take it ("Address already in use"). A port is
    never handed out twice by one process.
    """
    low, _ = _ephemeral_range()
    first, last = 20000, min(low, 32768) - 1
    with _ports_lock:
        if last - first >= 1000:
            span = last - first + 1
            start = os.getpid() * 7919 % span  # two processes seldom scan from the same place
            for step in range(span):
                port = first + (start + step) % span
                if port not in _handed_out and _bindable(port):
                    _handed_out.add(port)
                    return port
        while True:  # no room below the ephemeral range: let the OS pick
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, n: int = 4000) -> str:
    """The last `n` characters of a log file ('' if it cannot be read)."""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout_s: float, what: str, log: Path,
               *, poll_s: float = 0.05, not_ready: str | None = None) -> None:
    """Poll `ready()` until true; raise (with the log's tail) if the child exits first or
    `timeout_s` passes (`not_ready` then says what did not happen)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}:\n{tail(log)}")
        if ready():
            return
        time.sleep(poll_s)
    raise RuntimeError(f"{what} {not_ready or f'not ready after {timeout_s} s'}:\n{tail(log)}")


def wait_for_port(proc: subprocess.Popen, port: int, timeout_s: float, what: str, log: Path) -> None:
    """Return once `port` accepts connections on 127.0.0.1 (see `wait_until`)."""
    wait_until(lambda: port_open(port), proc, timeout_s, what, log, poll_s=0.1,
               not_ready=f"did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")
