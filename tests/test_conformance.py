"""docs/conformance.md says what the gate does on the wire; these tests hold it to that.

The tables are parsed from the document and compared with what the SCP
actually accepts (its pynetdicom AE as `serve` builds it), what the sender
proposes, and what a peer sees on a real association (implementation
identity), so the statement cannot drift from the code unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from angiogate.config import load_config
from angiogate.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from angiogate.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from angiogate.forward.sender import Sender
from angiogate.forward.target import Item
from angiogate.receive.scp import build_ae

STATEMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
UID_CELL = re.compile(r"`(\d+(?:\.\d+)+)`")


def _section(title: str) -> str:
    text = STATEMENT.read_text()
    start = text.index(title)
    following = re.search(r"^#{2,3} ", text[start + len(title):], re.M)
    return text[start: start + len(title) + following.start()] if following else text[start:]


def _uids(section: str) -> list[str]:
    return [m.group(1) for line in section.splitlines() if line.startswith("|") for m in UID_CELL.finditer(line)]


def test_storage_sop_classes_in_the_appendix_are_those_the_scp_accepts():
    appendix = _uids(_section("## Appendix A"))
    assert len(appendix) == len(set(appendix)) == len(STORAGE_SOP_CLASSES)
    accepted = {cx.abstract_syntax for cx in build_ae(load_config()).supported_contexts}
    assert accepted == set(appendix) | {Verification, StorageCommitmentPushModel}
    without_commitment = {cx.abstract_syntax for cx in build_ae(
        load_config(storage_commitment={"enabled": False})).supported_contexts}
    assert StorageCommitmentPushModel not in without_commitment


def test_transfer_syntaxes_table_is_what_each_storage_context_accepts():
    table = _uids(_section("### 3.1 Transfer syntaxes accepted for storage"))
    assert table == [str(ts) for ts in ACCEPTED_TRANSFER_SYNTAXES]
    for context in build_ae(load_config()).supported_contexts:
        if context.abstract_syntax in STORAGE_SOP_CLASSES:
            assert context.transfer_syntax == table, context.abstract_syntax


def test_scu_proposes_the_objects_own_syntax_and_the_uncompressed_ones():
    table = _uids(_section("### 4.1 Forwarding (C-STORE SCU)"))
    assert table == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    jpeg_lossless = "1.2.840.10008.1.2.4.70"
    xa = "1.2.840.10008.5.1.4.1.1.12.1"
    sender = Sender("PEER", "127.0.0.1", 1, calling_ae_title="ANGIOGATE")
    contexts = sender._contexts_for([Item(Path("x.dcm"), xa, jpeg_lossless)])
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in contexts] == [(xa, [jpeg_lossless]), (xa, table)]


def test_implementation_identity_in_the_statement_is_sent_both_ways(gate_factory, tmp_path):
    row = next(line for line in _section("## 2. Implementation model").splitlines() if "`2.25." in line)
    assert IMPLEMENTATION_CLASS_UID in row and IMPLEMENTATION_VERSION_NAME in row
    # as SCP: what a requestor sees of the gate
    gate = gate_factory({"model": {"path": "none"}}).start()
    ae = AE(ae_title="CHECKER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    assert assoc.is_established
    seen = (assoc.acceptor.implementation_class_uid, assoc.acceptor.implementation_version_name)
    assoc.release()
    assert seen == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    # as SCU: what a peer sees of the gate's sender
    requestors = []
    peer = AE(ae_title="PEER")
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_ACCEPTED, lambda event: requestors.append(
            (event.assoc.requestor.implementation_class_uid, event.assoc.requestor.implementation_version_name)))])
    try:
        from angiogate.forward.sender import echo

        assert echo("PEER", "127.0.0.1", server.server_address[1], calling_ae_title="ANGIOGATE") == 0
    finally:
        server.shutdown()
    assert requestors == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)]


def test_association_defaults_in_the_statement_are_the_configured_ones():
    policy = _section("### 3.2 Association acceptance policy")
    config = load_config()
    assert f"`max_associations` (default {config.max_associations})" in policy
    assert f"`max_pdu_bytes` (default {config.max_pdu_bytes})" in policy
    assert f"`network_timeout_s` (default {config.network_timeout_s:g} s)" in policy
