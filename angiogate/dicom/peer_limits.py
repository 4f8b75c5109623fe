"""Limits against hostile peers, before and around the allow-list.

pynetdicom, as used by the SCP, trusts the bytes it is sent: it reads a
whole PDU (its length field allows 4 GiB) into memory before anything looks
at it, its reader blocks on a PDU sent byte by byte (so the ARTIM timer never
fires), and `maximum_associations` counts every TCP connection's thread, so
a few idle sockets lock every sender out. The gate bounds each of these:

- PDU size: every accepted socket is a `GuardedSocket` (or, with TLS, a
  `GuardedSSLSocket`) whose `recv` follows the PDU framing of the stream
  (type, reserved byte, 32-bit length). A P-DATA-TF PDU longer than the
  advertised `max_pdu_bytes`, any other PDU longer than
  `MAX_CONTROL_PDU_BYTES` (an A-ASSOCIATE-RQ is a few kB to a few tens of
  kB), or a PDU of unknown type is refused on its 6-byte header: the gate
  sends A-ABORT (service-provider, invalid-PDU-parameter value), closes the
  connection and logs a WARNING; the body is never read.
- Negotiation deadline: a connection is *pending* from accept until its
  association is accepted (EVT_ACCEPTED). The SCP's ACSE timeout (the ARTIM
  timer) is `association_deadline_s`, which ends a silent connection;
  `expire()`, called from the server's loop, shuts down any pending
  connection older than the deadline whatever it is doing (a reader
  blocked on a trickled PDU returns at once).
- PDU deadline: any connection, associated or not, whose PDU now arriving
  began more than `network_timeout_s` ago is shut down the same way (an
  associated peer trickling a P-DATA-TF would otherwise hold its thread
  for ever: pynetdicom's idle timer cannot end a blocked reader).
- Pending cap: at most `max_pending_connections` pending connections; a new
  one beyond the cap closes the oldest (a slow-loris peer cannot keep a
  real sender, which negotiates in milliseconds, out).
- Association cap: `max_associations` counts associations this gate
  admitted (EVT_REQUESTED) and that are still alive, never bare
  connections; beyond it, A-ASSOCIATE-RJ rejected-transient,
  service-provider (presentation), local-limit-exceeded.

What this relies on in pynetdicom 3.0 (pinned in pyproject;
tests/test_hostile_peers.py fails if it changes): the DUL reads the socket
through its `AssociationSocket.recv` (6 bytes of header, then the body;
the gate's `PduSocket` reads with `recv_into`, pynetdicom's own with
`recv`: the guard sees both), the acceptor's
`Association.dul.socket.socket` is the socket the server's `get_request`
returned, and EVT_REQUESTED runs before pynetdicom's own negotiation.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import OrderedDict

from angiogate.dicom.untrusted import printable

log = logging.getLogger(__name__)

# Any PDU but P-DATA-TF: an A-ASSOCIATE-RQ with 128 presentation contexts of
# several transfer syntaxes and user identity negotiation stays far below.
MAX_CONTROL_PDU_BYTES = 256 * 1024

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
             0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
P_DATA_TF = 0x04

# A-ABORT PDU (PS3.8 9.3.8): source 2 = DICOM UL service-provider,
# reason 6 = invalid-PDU-parameter value.
A_ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])

# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-transient, service-provider
# (presentation related function), local-limit-exceeded.
REJECTED_TRANSIENT = 0x02
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_LOCAL_LIMIT_EXCEEDED = 0x02


class PduFraming:
    """Follows the PDU boundaries of a received byte stream and refuses a PDU
    by its header alone. Pure: no socket, no clock."""

    def __init__(self, max_pdata_bytes: int, max_control_bytes: int = MAX_CONTROL_PDU_BYTES):
        self.max_pdata_bytes = max_pdata_bytes
        self.max_control_bytes = max_control_bytes
        self._header = bytearray()
        self._remaining = 0  # body bytes of the current PDU still to come
        self.begun = 0  # PDUs whose first byte has arrived

    @property
    def in_pdu(self) -> bool:
        """Part of a PDU has arrived, not all of it."""
        return bool(self._header) or self._remaining > 0

    def feed(self, data: bytes) -> str | None:
        """Account for `data` just received; why the PDU it starts is refused, or None."""
        view = memoryview(data)
        while view:
            if self._remaining:
                taken = min(self._remaining, len(view))
                self._remaining -= taken
                view = view[taken:]
                continue
            if not self._header:
                self.begun += 1
            needed = 6 - len(self._header)
            self._header += view[:needed]
            view = view[needed:]
            if len(self._header) < 6:
                break
            pdu_type, _, length = struct.unpack(">BBL", self._header)
            self._header.clear()
            why = self.refusal(pdu_type, length)
            if why:
                return why
            self._remaining = length
        return None

    def refusal(self, pdu_type: int, length: int) -> str | None:
        name = PDU_NAMES.get(pdu_type)
        if name is None:
            return f"unknown PDU type 0x{pdu_type:02X} ({length} bytes)"
        limit = self.max_pdata_bytes if pdu_type == P_DATA_TF else self.max_control_bytes
        if length > limit:
            what = "max_pdu_bytes" if pdu_type == P_DATA_TF else "the limit for this PDU type"
            return f"{name} of {length} bytes, more than {what} ({limit})"
        return None


class _Guarded:
    """The PDU guard and the pending-connection facts, mixed into a socket class."""

    # Class defaults: ssl.SSLSocket._create may call recv before _start_guard.
    framing: PduFraming | None = None
    peer = "?"
    accepted_at = 0.0
    pdu_since: float | None = None  # when the PDU now arriving began
    refused = False

    def _start_guard(self, framing: PduFraming, peer: str) -> None:
        self.framing = framing
        self.peer = peer
        self.accepted_at = time.monotonic()
        self.refused = False

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:
        if self.refused:
            return b""
        data = super().recv(bufsize, flags)
        if data and self.framing is not None:
            self._received(data)
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        if self.refused:
            return 0
        received = super().recv_into(buffer, nbytes, flags)
        if received and self.framing is not None:
            with memoryview(buffer) as view:
                self._received(view[:received])
        return received

    def _received(self, data) -> None:
        begun = self.framing.begun
        why = self.framing.feed(data)
        if why:
            self._refuse(why)
        elif not self.framing.in_pdu:
            self.pdu_since = None
        elif self.framing.begun != begun:
            self.pdu_since = time.monotonic()

    def _refuse(self, why: str) -> None:
        self.refused = True
        log.warning("refused a PDU from %s: %s; sent A-ABORT and closed the connection "
                    "without reading it", printable(self.peer), why)
        try:
            self.settimeout(2)  # a peer that does not read cannot hold this thread
            self.sendall(A_ABORT_INVALID_PARAMETER)
        except (OSError, ValueError):
            pass
        self.cut()

    def cut(self) -> None:
        """Shut the connection down in both directions (wakes a blocked reader)."""
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            pass


class GuardedSocket(_Guarded, socket.socket):
    """An accepted plain TCP socket with the PDU guard."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):
    """An accepted TLS socket with the PDU guard (`SSLContext.sslsocket_class`)."""


class PeerLimits:
    """The pending-connection registry and the association count of one SCP."""

    def __init__(self, *, max_pdu_bytes: int, max_associations: int, max_pending: int,
                 deadline_s: float, pdu_timeout_s: float):
        self.max_pdu_bytes = max_pdu_bytes
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.deadline_s = deadline_s
        self.pdu_timeout_s = pdu_timeout_s
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, _Guarded] = OrderedDict()  # oldest first
        self._open: weakref.WeakSet[_Guarded] = weakref.WeakSet()  # every guarded socket
        self._admitted: list = []  # Association threads admitted by EVT_REQUESTED

    # -- connections

    def guard(self, client_socket: socket.socket, address) -> _Guarded:
        """Make an accepted socket a guarded one and count it pending; evicts the
        oldest pending connection beyond the cap."""
        peer = str(address[0]) if address else "?"
        framing = PduFraming(self.max_pdu_bytes)
        if isinstance(client_socket, _Guarded):  # TLS: made by sslsocket_class
            guarded = client_socket
        else:
            guarded = GuardedSocket(client_socket.family, client_socket.type, client_socket.proto,
                                    fileno=client_socket.detach())
            guarded.setblocking(True)
        guarded._start_guard(framing, peer)
        with self._lock:
            self._prune_closed()
            self._pending[id(guarded)] = guarded
            self._open.add(guarded)
            evicted = []
            while len(self._pending) > self.max_pending:
                evicted.append(self._pending.popitem(last=False)[1])
        for old in evicted:
            log.warning("closed a connection from %s not associated after %.1f s: more than "
                        "max_pending_connections (%d) connections were waiting to associate",
                        printable(old.peer), time.monotonic() - old.accepted_at, self.max_pending)
            old.cut()
        return guarded

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def expire(self) -> None:
        """Close every pending connection older than the deadline, and every connection
        whose PDU now arriving began more than `pdu_timeout_s` ago (the server's loop
        calls this)."""
        now = time.monotonic()
        with self._lock:
            self._prune_closed()
            late = [s for s in self._pending.values() if now - s.accepted_at > self.deadline_s]
            for s in late:
                del self._pending[id(s)]
            slow = [s for s in self._open if s.pdu_since is not None and s not in late
                    and now - s.pdu_since > self.pdu_timeout_s and s.fileno() != -1]
        for s in late:
            if not s.refused:
                log.warning("closed a connection from %s: no association within "
                            "association_deadline_s (%g s)", printable(s.peer), self.deadline_s)
            s.cut()
        for s in slow:
            s.pdu_since = None
            log.warning("closed a connection from %s: a PDU took more than network_timeout_s "
                        "(%g s) to arrive", printable(s.peer), self.pdu_timeout_s)
            s.cut()

    def _prune_closed(self) -> None:
        # pynetdicom closes a refused or abandoned connection itself; it is no longer waiting
        for key in [k for k, s in self._pending.items() if s.fileno() == -1]:
            del self._pending[key]

    def forget(self, sock) -> None:
        with self._lock:
            self._pending.pop(id(sock), None)

    # -- associations (pynetdicom event handlers)

    def handle_requested(self, event) -> None:
        """EVT_REQUESTED, after the allow-list: admit the association or refuse it, local limit exceeded."""
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return
        with self._lock:
            self._admitted = [a for a in self._admitted
                              if a.is_alive() and not (a.is_rejected or a.is_aborted or a.is_released)]
            full = len(self._admitted) >= self.max_associations
            if not full:
                self._admitted.append(assoc)
        if full:
            log.warning("refused association from AE %r at %s: max_associations (%d) reached; "
                        "answered A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded",
                        printable((assoc.requestor.primitive.calling_ae_title or "").strip()),
                        printable(assoc.requestor.address), self.max_associations)
            assoc.acse.send_reject(REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION,
                                   REASON_LOCAL_LIMIT_EXCEEDED)
            assoc.kill()

    def handle_accepted(self, event) -> None:
        """EVT_ACCEPTED: the connection is associated, no longer pending."""
        self.forget(event.assoc.dul.socket.socket)
