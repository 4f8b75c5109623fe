"""Storage Commitment Push Model as SCP: the gate vouches for what it keeps.

A cath-lab modality frees its local disk only once the receiver has
committed to the objects it sent. It asks with N-ACTION (Request Storage
Commitment, action type 1) listing SOP class and instance UIDs under a
Transaction UID; the gate answers the N-ACTION at once and reports the
outcome afterwards with N-EVENT-REPORT (event type 1: all committed, 2: some
failed).

An object is committed only when it is both fsync'd in the spool and
recorded in the verdict log (a row whose file exists), which is exactly
when its C-STORE was answered Success; held clips count (the gate keeps
them until released or pruned). A listed object the gate does not hold
fails with 0x0112 (no such object instance), one held under another SOP
class with 0x0119 (class-instance conflict), and a lookup the database
cannot answer with 0x0110 (processing failure), so the modality keeps it.

The report goes on the requesting association when it is still open (PS3.4
J.3.3.1 allows either); otherwise the gate opens an association to the
modality's address in `storage_commitment.peers` (the gate as SCP of the
Storage Commitment class, negotiated by role selection) and sends it there.
Every transaction is written to `events` (kind `commitment`), one row per
object, so the log shows what was vouched for and when.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import build_role
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from angiogate.config import Config
from angiogate.dicom.identity import gate_ae
from angiogate.dicom.tls import client_tls
from angiogate.dicom.untrusted import printable
from angiogate.store.spool import Spool
from angiogate.store.schema import Event, Verdict

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type IDs
PROCESSING_FAILURE, NO_SUCH_INSTANCE, CLASS_INSTANCE_CONFLICT = 0x0110, 0x0112, 0x0119
NO_SUCH_ARGUMENT, INVALID_ARGUMENT, NO_SUCH_ACTION = 0x0114, 0x0115, 0x0123


@dataclass(frozen=True)
class Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None  # None: committed


def commitment_outcomes(engine: Engine, spool: Spool, requested: list[tuple[str, str]]) -> list[Outcome]:
    """Which of the (SOP class, SOP instance) pairs the gate holds durably."""
    uids = [uid for _, uid in requested]
    try:
        with Session(engine) as session:
            rows = {row.sop_instance_uid: row for row in session.scalars(
                select(Verdict).where(Verdict.sop_instance_uid.in_(uids))).all()}
    except SQLAlchemyError as exc:
        log.error("storage commitment: the verdict log is unavailable (%s); nothing committed",
                  exc.__class__.__name__)
        return [Outcome(c, u, PROCESSING_FAILURE) for c, u in requested]
    outcomes = []
    for sop_class, uid in requested:
        row = rows.get(uid)
        if row is None or not _kept(spool, row.file_path):
            outcomes.append(Outcome(sop_class, uid, NO_SUCH_INSTANCE))
        elif row.sop_class_uid and row.sop_class_uid != sop_class:
            outcomes.append(Outcome(sop_class, uid, CLASS_INSTANCE_CONFLICT))
        else:
            outcomes.append(Outcome(sop_class, uid, None))
    return outcomes


def _kept(spool: Spool, relative_path: str) -> bool:
    try:
        return spool.path(relative_path).is_file()
    except ValueError:
        return False


def event_report(transaction_uid: str, outcomes: list[Outcome]) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's event type and Event Information (PS3.4 J.3.3)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    committed = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    if committed:
        info.ReferencedSOPSequence = [_item(o) for o in committed]
    if failed:
        info.FailedSOPSequence = [_item(o, failure=True) for o in failed]
    return (SOME_FAILED if failed else ALL_COMMITTED), info


def _item(outcome: Outcome, *, failure: bool = False) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if failure:
        item.FailureReason = outcome.failure
    return item


class StorageCommitment:
    """The N-ACTION handler and the reporter behind it."""

    def __init__(self, config: Config, engine: Engine, spool: Spool):
        self.config, self.engine, self.spool = config, engine, spool
        self.settings = config.storage_commitment
        # Built now, so a peer's unloadable TLS files stop the start, not a report later.
        self.peer_tls = [client_tls(p.tls, p.host, f"storage_commitment.peers.{i}.tls")
                         for i, p in enumerate(self.settings.peers)]

    def handle_action(self, event) -> tuple[int, Dataset | None]:
        """EVT_N_ACTION: check the request, answer at once, report in the background."""
        request, requestor = event.request, event.assoc.requestor
        if request.RequestedSOPClassUID != StorageCommitmentPushModel:
            return NO_SUCH_ACTION, None
        if request.ActionTypeID != REQUEST_COMMITMENT:
            return NO_SUCH_ACTION, None
        try:
            info = event.action_information
            transaction_uid = str(info.TransactionUID)
            requested = [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                         for item in info.ReferencedSOPSequence]
        except Exception as exc:  # a malformed request: say which, commit nothing
            log.warning("storage commitment request from %s is malformed (%s: %s)",
                        printable(requestor.ae_title), type(exc).__name__, printable(exc, 200))
            return INVALID_ARGUMENT, None
        if not transaction_uid or not requested:
            return NO_SUCH_ARGUMENT, None
        log.info("storage commitment request %s from %s for %d object(s)", printable(transaction_uid),
                 printable(requestor.ae_title), len(requested))
        threading.Thread(target=self._report, name="storage-commitment", daemon=True,
                         args=(event.assoc, str(requestor.ae_title), requestor.address, transaction_uid,
                               requested)).start()
        return 0x0000, None

    def _report(self, assoc, calling_ae: str, address: str, transaction_uid: str,
                requested: list[tuple[str, str]]) -> None:
        outcomes = commitment_outcomes(self.engine, self.spool, requested)
        event_type, info = event_report(transaction_uid, outcomes)
        self._record(calling_ae, transaction_uid, outcomes)
        time.sleep(self.settings.report_delay_s)  # the N-ACTION response goes first
        how = self._send_on(assoc, event_type, info) or self._send_new(calling_ae, event_type, info)
        committed = sum(o.failure is None for o in outcomes)
        if how:
            log.info("storage commitment %s: %d of %d committed, reported to %s %s",
                     printable(transaction_uid), committed, len(outcomes), printable(calling_ae), how)
        else:
            log.error("storage commitment %s for %s: %d of %d committed but the report could not be "
                      "delivered (association closed and no reachable address in storage_commitment.peers); "
                      "the modality will ask again", printable(transaction_uid), printable(calling_ae),
                      committed, len(outcomes))

    @staticmethod
    def _deliver(assoc, event_type: int, info: Dataset, where: str) -> bool:
        """Send the N-EVENT-REPORT on `assoc`; True when the modality answered Success."""
        try:
            status = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                               STORAGE_COMMITMENT_INSTANCE)[0]
        except Exception as exc:
            log.warning("storage commitment report %s failed (%s: %s)", where, type(exc).__name__, exc)
            return False
        return bool(status) and status.get("Status", -1) == 0

    def _send_on(self, assoc, event_type: int, info: Dataset) -> str | None:
        where = "on the requesting association"
        if assoc.is_established and self._deliver(assoc, event_type, info, where):
            return where
        return None

    def _send_new(self, calling_ae: str, event_type: int, info: Dataset) -> str | None:
        index = next((i for i, p in enumerate(self.settings.peers) if p.ae_title == calling_ae), None)
        if index is None:
            return None
        peer, tls = self.settings.peers[index], self.peer_tls[index]
        ae = gate_ae(self.config.ae_title)
        ae.acse_timeout = ae.connection_timeout = ae.dimse_timeout = self.config.network_timeout_s
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        if tls is not None:
            tls.forget()
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role],
                             tls_args=tls.tls_args if tls is not None else None)
        if not assoc.is_established:
            if tls is not None and tls.failure():
                log.warning("storage commitment report to %s:%s: TLS failed: %s", peer.host, peer.port,
                            tls.failure())
            return None
        where = f"on a new association to {peer.host}:{peer.port}"
        try:
            delivered = self._deliver(assoc, event_type, info, where)
        finally:
            assoc.release()
        return where if delivered else None

    def _record(self, calling_ae: str, transaction_uid: str, outcomes: list[Outcome]) -> None:
        try:
            with Session(self.engine) as session, session.begin():
                for o in outcomes:
                    what = "committed" if o.failure is None else f"not committed (0x{o.failure:04X})"
                    session.add(Event(sop_instance_uid=o.sop_instance_uid[:64], kind="commitment",
                                      detail=f"{what} to {calling_ae}, transaction {transaction_uid}"))
        except SQLAlchemyError as exc:
            log.error("storage commitment %s: could not write events (%s)", printable(transaction_uid),
                      exc.__class__.__name__)
