"""How the gate reads PDUs: few and large.

It advertises its `max_pdu_bytes` (1 MiB by default) to a sending modality:
a 512x512x80 JPEG Lossless clip (7.5 MB) arrives in 8 P-DATA PDUs instead
of 58 at 128 KiB, and pynetdicom parses each PDU in Python (README,
Performance: about a tenth less receive CPU per clip). And it reads each PDU
in a few large reads (`PduSocket`), not pynetdicom's 4 KiB ones.
"""
from __future__ import annotations

import socket
import struct
import threading
from contextlib import contextmanager

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from angiogate.config import load_config
from angiogate.dicom.pdu_socket import FIRST_BUFFER_BYTES, PduSocket
from angiogate.dicom.peer_limits import GuardedSocket, PduFraming


def test_the_gate_advertises_a_one_mebibyte_maximum_pdu(gate_factory):
    assert load_config(None).max_pdu_bytes == 1 << 20
    gate = gate_factory({"model": {"path": "none"}}).start()
    ae = AE(ae_title="PDU_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 1 << 20
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


class CountingSocket(GuardedSocket):
    """The gate's guarded socket, counting the reads made on it."""
    reads = 0

    def recv(self, *args):
        self.reads += 1
        return super().recv(*args)

    def recv_into(self, *args):
        self.reads += 1
        return super().recv_into(*args)


def _pdu_socket_pair(max_pdu_bytes: int = 1 << 20):
    """(the peer's end, the gate's PduSocket over a guarded, counting socket)."""
    peer, ours = socket.socketpair()
    guarded = CountingSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    guarded._start_guard(PduFraming(max_pdu_bytes), "test-peer")
    return peer, PduSocket(Association(AE(), "acceptor"), client_socket=guarded)


def _send_later(sock: socket.socket, data: bytes, *, close: bool = False) -> threading.Thread:
    def send():
        sock.sendall(data)
        if close:
            sock.close()
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _p_data_header(length: int) -> bytes:
    return struct.pack(">BBL", 0x04, 0, length)


def test_a_pdu_is_read_whole_in_a_few_reads():
    body = bytes(range(256)) * (3 * 4096 + 7)  # 3 MB: more than the first buffer, so it grows
    assert len(body) > FIRST_BUFFER_BYTES
    peer, pdu_socket = _pdu_socket_pair(max_pdu_bytes=4 << 20)
    sender = _send_later(peer, _p_data_header(len(body)) + body)
    assert pdu_socket.recv(6) == _p_data_header(len(body))
    reads_before = pdu_socket.socket.reads
    assert pdu_socket.recv(len(body)) == body
    sender.join(10)
    # pynetdicom's own read takes 4 KiB per call: 768 calls for this body.
    assert pdu_socket.socket.reads - reads_before < 100
    assert not pdu_socket.socket.framing.in_pdu  # the guard saw every byte


def test_a_connection_ending_mid_pdu_gives_what_arrived():
    peer, pdu_socket = _pdu_socket_pair()
    part = b"\x5a" * 300_000
    _send_later(peer, _p_data_header(1 << 20) + part, close=True).join(10)
    assert pdu_socket.recv(6) == _p_data_header(1 << 20)
    assert pdu_socket.recv(1 << 20) == part  # short: pynetdicom then reports the connection closed


def test_a_pdu_the_guard_refuses_is_not_read():
    peer, pdu_socket = _pdu_socket_pair()
    _send_later(peer, _p_data_header(0xFFFFFFF0) + b"\x00" * 1000)
    assert pdu_socket.recv(6) == _p_data_header(0xFFFFFFF0)
    assert pdu_socket.socket.refused
    assert pdu_socket.recv(0xFFFFFFF0) == b""  # nothing read, no 4 GiB buffer made
    peer.close()


@contextmanager
def _echo_association(tmp_path):
    """A real gate SCP on loopback and one Verification association to it: (server, association).
    Both are released and shut down on the way out."""
    from angiogate.receive.intake import Intake
    from angiogate.receive.scp import start_scp
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    config = load_config(None, port=0, bind_address="127.0.0.1", database_url=f"sqlite:///{tmp_path}/v.sqlite3",
                         spool_dir=str(tmp_path / "spool"))
    engine = open_database(config.database_url)
    server = start_scp(config, Intake(engine, Spool(config.spool_dir, gate_id="pdu-test")))
    ae = AE(ae_title="PDU_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title=config.ae_title)
    try:
        assert assoc.is_established
        yield server, assoc
    finally:
        assoc.release()
        server.shutdown()
        engine.dispose()


def test_the_gates_associations_read_with_a_pdu_socket(tmp_path):
    with _echo_association(tmp_path) as (server, assoc):
        assert [type(a.dul.socket) for a in server.active_associations] == [PduSocket]
        assert assoc.send_c_echo().Status == 0


def test_an_idle_association_reactor_waits_instead_of_polling(tmp_path):
    """pynetdicom's association reactor looks for work every millisecond, busy or idle
    (reactor_wait.py); on the gate's connections it waits for its inboxes, so an idle
    association goes round a few dozen times a second at most, and still answers."""
    import time

    with _echo_association(tmp_path) as (server, assoc):
        (served,) = server.active_associations
        rounds = []
        get_msg = served.dimse.get_msg
        served.dimse.get_msg = lambda *args, **kwargs: rounds.append(1) or get_msg(*args, **kwargs)
        time.sleep(1.0)  # idle; not a timed assertion: polling goes round ~1000 times in it
        idle_rounds = len(rounds)
        assert assoc.send_c_echo().Status == 0
    assert idle_rounds < 100
    assert assoc.is_released


def test_an_idle_dul_reactor_waits_for_its_socket_or_outbox_instead_of_polling(tmp_path):
    """pynetdicom's DUL reactor sleeps 1 ms and looks again whenever a round found nothing
    (reactor_wait.py); on the gate's connections it waits for its socket or a primitive to
    send, so an idle association's DUL goes round a few dozen times a second at most, and
    a request that arrives is still read and answered."""
    import time

    with _echo_association(tmp_path) as (server, assoc):
        (served,) = server.active_associations
        rounds = []
        look = served.dul._process_recv_primitive  # called once per round of its reactor
        served.dul._process_recv_primitive = lambda: rounds.append(1) or look()
        time.sleep(1.0)  # idle; not a timed assertion: polling goes round ~1000 times in it
        idle_rounds = len(rounds)
        for _ in range(3):
            assert assoc.send_c_echo().Status == 0
    assert idle_rounds < 100
    assert assoc.is_released
