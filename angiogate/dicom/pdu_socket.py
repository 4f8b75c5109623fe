"""Reading a PDU off the network in a few large reads, not 4 KiB at a time.

pynetdicom's `AssociationSocket.recv(n)` loops on `socket.recv(4096)` until
it has n bytes: a 1 MiB P-DATA-TF PDU is 256 calls, each a system call, a
new bytes object, a copy into the growing result and (on the gate's guarded
sockets) a pass through the PDU framing guard in Python; each call also
drops and takes back the GIL the judge's threads share. A 512x512x80 JPEG
Lossless clip (7.5 MB) took about 1,830 of them.

`PduSocket.recv` reads into one buffer with `recv_into`, as much as the
kernel has per call (a loopback socket hands over a few hundred kB at a
time). It returns what pynetdicom's does: the n bytes, or fewer when the
connection ends first. The buffer starts at most `FIRST_BUFFER_BYTES` and
doubles only as bytes actually arrive, so a PDU header that claims 4 GiB
(which the guard of peer_limits.py refuses anyway, before its body is
asked for) never makes the gate allocate more than the peer has sent.

Receive CPU per clip (the SCP and intake alone in one process, 40 clips
from 2 DCMTK storescu, loaded 2-core EPYC), see the commit and README.

The gate's SCP (`security.GateRequestHandler`) makes the socket of every
connection it accepts a `PduSocket` (pynetdicom 3.0 makes the
`AssociationSocket` inside `RequestHandler._create_association`; only the
read changes).
"""

from __future__ import annotations

from pynetdicom.transport import AssociationSocket

FIRST_BUFFER_BYTES = 1024 * 1024 + 64 * 1024  # a 1 MiB P-DATA-TF PDU (max_pdu_bytes) in one buffer


class PduSocket(AssociationSocket):
    """An AssociationSocket whose `recv` reads with few, large `recv_into` calls."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        buffer = bytearray(min(nr_bytes, FIRST_BUFFER_BYTES))
        view = memoryview(buffer)
        nr_read = 0
        try:
            while nr_read < nr_bytes:
                if nr_read == len(buffer):  # full and more to come: grow with what arrived
                    view.release()
                    buffer += bytes(min(len(buffer), nr_bytes - len(buffer)))
                    view = memoryview(buffer)
                received = sock.recv_into(view[nr_read:])
                if not received:  # the connection ended: what arrived, as pynetdicom does
                    break
                nr_read += received
        finally:
            view.release()
        del buffer[nr_read:]
        return buffer
