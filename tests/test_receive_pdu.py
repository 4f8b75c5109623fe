"""The gate advertises its `max_pdu_bytes` (1 MiB by default) to a sending modality.

A 512x512x80 JPEG Lossless clip (7.5 MB) arrives in 8 P-DATA PDUs instead
of 58 at 128 KiB, and pynetdicom parses each PDU in Python (README,
Performance: about a tenth less receive CPU per clip).
"""
from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from angiogate.config import load_config


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
