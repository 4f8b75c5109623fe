"""The gate's DICOM service: a pynetdicom SCP answering C-ECHO, C-STORE and,
for Storage Commitment, N-ACTION (receive/commitment.py).

Handlers are thin: C-STORE hands the received temp file to `Intake` and
returns its status; nothing here waits for the classifier. Objects are
received in chunks straight to a file in the spool's `incoming/` folder
(pynetdicom's STORE_RECV_CHUNKED_DATASET), so a 500 MB clip never sits in
memory and keeping it is a rename on the same filesystem.

Who may connect (the AE allow-list, TLS) is enforced by `security.py`; the
limits against hostile peers (negotiation deadline, pending connections,
PDU size, associations) by `peer_limits.py`; the object size while it
arrives by `receive_file.py`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from angiogate.config import Config
from angiogate.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, NON_STORAGE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from angiogate.dicom.identity import gate_ae
from angiogate.dicom.peer_limits import PeerLimits
from angiogate.dicom.security import association_handlers, start_server
from angiogate.dicom.tls import server_ssl_context
from angiogate.dicom.untrusted import printable
from angiogate.receive.commitment import StorageCommitment
from angiogate.receive.intake import OUT_OF_RESOURCES, Intake
from angiogate.receive.receive_file import (ObjectTooLarge, install as install_receive_file, receive_error,
                                            received_bytes, received_content)
from angiogate.store.free_space import BelowWatermark, Watermark

log = logging.getLogger(__name__)

PYNETDICOM_COUNT_OUT_OF_REACH = 1_000_000


def _handle_echo(event) -> int:
    log.info("C-ECHO from %s at %s", printable(event.assoc.requestor.ae_title),
             printable(event.assoc.requestor.address))
    return 0x0000


def _handle_store(event, intake: Intake) -> int | Dataset:
    requestor = event.assoc.requestor
    error = receive_error(event.request)
    if isinstance(error, ObjectTooLarge):
        intake.refuse(affected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID or "") or None,
                      calling_ae_title=requestor.ae_title, source_address=requestor.address,
                      reason=f"{received_bytes(event.request)} bytes, {error}")
        status = Dataset()
        status.Status = OUT_OF_RESOURCES
        status.ErrorComment = f"Object exceeds max_object_bytes {error.limit}"[:64]
        return status  # pynetdicom deletes the (emptied) temp file after this
    if isinstance(error, BelowWatermark):  # the watermark logs once per episode, not per object
        log.debug("refused %s from %s: %s", printable(event.request.AffectedSOPInstanceUID),
                  printable(requestor.ae_title), error)
        return OUT_OF_RESOURCES
    if error is not None:
        log.error("cannot receive %s from %s into the spool (%s): answering Out of Resources",
                  printable(event.request.AffectedSOPInstanceUID), printable(requestor.ae_title), error)
        return OUT_OF_RESOURCES  # pynetdicom deletes the (truncated) temp file after this
    return intake.accept(
        Path(event.dataset_path),
        affected_sop_instance_uid=str(event.request.AffectedSOPInstanceUID or "") or None,
        calling_ae_title=requestor.ae_title,
        source_address=requestor.address,
        content=received_content(event.request),
    )


ARTIM_MARGIN_S = 2.0  # seconds pynetdicom's ARTIM timer waits beyond association_deadline_s


def build_ae(config: Config) -> AE:
    ae = gate_ae(config.ae_title)
    ae.maximum_pdu_size = config.max_pdu_bytes
    ae.network_timeout = config.network_timeout_s
    ae.dimse_timeout = config.network_timeout_s
    # The ARTIM timer, a backstop: peer_limits.py's expire() (run by the server's loop
    # every half second) closes every connection still negotiating at the deadline and
    # logs why; pynetdicom's own timer, a little later, would close a silent one unlogged.
    ae.acse_timeout = config.association_deadline_s + ARTIM_MARGIN_S
    # pynetdicom counts every connection's thread, associated or not, and also
    # those of connections already closed (evicted, past the deadline) until
    # their ACSE timeout ends them. The gate counts associations itself
    # (PeerLimits.handle_requested); pynetdicom's count is put out of reach.
    ae.maximum_associations = PYNETDICOM_COUNT_OUT_OF_REACH
    ae.require_called_aet = config.require_called_ae_title
    ae.add_supported_context(Verification, NON_STORAGE_TRANSFER_SYNTAXES)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
    if config.storage_commitment.enabled:
        ae.add_supported_context(StorageCommitmentPushModel, NON_STORAGE_TRANSFER_SYNTAXES)
    return ae


def peer_limits(config: Config) -> PeerLimits:
    return PeerLimits(max_pdu_bytes=config.max_pdu_bytes, max_associations=config.max_associations,
                      max_pending=config.max_pending_connections, deadline_s=config.association_deadline_s,
                      pdu_timeout_s=config.network_timeout_s)


def start_scp(config: Config, intake: Intake):
    """Start the SCP in background threads; returns the server (call .shutdown())."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    install_receive_file(refusal=Watermark(intake.spool.root, config.spool.min_free_bytes).refusal,
                         max_object_bytes=config.max_object_bytes)
    # pynetdicom writes received datasets with NamedTemporaryFile: put them on
    # the spool's filesystem so that keeping one is an atomic rename.
    tempfile.tempdir = str(intake.spool.incoming)
    ae = build_ae(config)
    ssl_context = server_ssl_context(config.tls) if config.tls.enabled else None
    limits = peer_limits(config)
    handlers = [(evt.EVT_C_ECHO, _handle_echo), (evt.EVT_C_STORE, _handle_store, [intake]),
                *association_handlers(config),  # the allow-list first: its refusals are permanent
                (evt.EVT_REQUESTED, limits.handle_requested), (evt.EVT_ACCEPTED, limits.handle_accepted)]
    if config.storage_commitment.enabled:
        commitment = StorageCommitment(config, intake.engine, intake.spool)
        handlers.append((evt.EVT_N_ACTION, commitment.handle_action))
    server = start_server(ae, (config.bind_address, config.port), ssl_context=ssl_context,
                          evt_handlers=handlers, limits=limits)
    log.info("DICOM SCP %s listening on %s:%s (%s; %s)", config.ae_title, config.bind_address,
             server.server_address[1],
             "TLS" + (", client certificate required" if config.tls.require_client_certificate else "")
             if ssl_context else "no TLS",
             f"{len(config.allowed_peers)} allowed peer entries" if config.allowed_peers
             else "no allow-list: any calling AE")
    return server
