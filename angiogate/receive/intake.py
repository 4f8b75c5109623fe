"""Intake: what happens to a received object before Success is answered.

The C-STORE handler hands over the temporary file pynetdicom wrote; intake
reads the header (never the pixel data), keeps the file durably in the spool
and commits its row in the verdict log. Only when both are done does it
return Success; if either fails it returns 0xA700 (Out of Resources) so the
sender keeps the object and retries. An object whose header cannot be parsed
is still kept and recorded: the judge gives it an `error` verdict. An object
refused while it arrived (larger than `max_object_bytes`) is not kept: only
a log line and an `events` row `refused` say it came.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from angiogate.dicom.header import HeaderError, read_header
from angiogate.dicom.untrusted import printable
from angiogate.store.ledger import record_receipt, record_refusal
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


class Intake:
    def __init__(self, engine: Engine, spool: Spool, on_recorded: Callable[[], None] | None = None):
        self.engine = engine
        self.spool = spool
        self.on_recorded = on_recorded  # called once an object is kept and recorded (wakes the judge)
        # Made once per start, before the SCP listens: any temp file still in
        # incoming/ is a receive of an earlier run that was never acknowledged.
        spool.sweep_incoming()

    def accept(self, temp_path: Path, *, affected_sop_instance_uid: str | None,
               calling_ae_title: str | None, source_address: str | None,
               content: tuple[str, int] | None = None) -> int:
        """Keep and record one received object; the DIMSE status to answer.

        `content`: (SHA-256 hex, length) of the file, hashed while it was received."""
        note = None
        sender = printable(calling_ae_title)  # untrusted strings never forge log lines
        try:
            header = read_header(temp_path)
        except HeaderError as exc:
            header, note = None, str(exc)
            log.warning("object %s from %s has an unreadable header, kept for an error verdict: %s",
                        printable(affected_sop_instance_uid), sender, printable(exc, 300))
        uid = (header.sop_instance_uid if header else None) or affected_sop_instance_uid
        if not uid:
            log.error("object from %s has no SOP Instance UID in request or dataset; refused", sender)
            return CANNOT_UNDERSTAND
        if header and affected_sop_instance_uid and header.sop_instance_uid != affected_sop_instance_uid:
            note = (f"dataset SOP Instance UID differs from the request's "
                    f"{affected_sop_instance_uid}; kept under the dataset's")
        try:
            kept = self.spool.keep(temp_path, uid, content)
        except OSError as exc:
            log.error("cannot keep %s from %s in the spool (%s): answering Out of Resources",
                      printable(uid), sender, exc)
            return OUT_OF_RESOURCES
        try:
            receipt = record_receipt(self.engine, sop_instance_uid=uid[:64], header=header,
                                     file_path=kept.relative_path, file_size=kept.size,
                                     file_sha256=kept.sha256, calling_ae_title=calling_ae_title,
                                     source_address=source_address, note=note)
        except (SQLAlchemyError, RuntimeError) as exc:
            log.error("cannot record %s from %s in the verdict log (%s): answering Out of Resources",
                      printable(uid), sender, exc.__class__.__name__)
            log.debug("database error detail", exc_info=True)
            if not kept.already_present:
                self.spool.discard(kept.relative_path)
            return OUT_OF_RESOURCES
        log.info("received %s from %s%s", printable(uid), sender, " (duplicate)" if receipt.duplicate else "")
        if self.on_recorded is not None and not receipt.duplicate:
            self.on_recorded()
        return SUCCESS

    def refuse(self, *, affected_sop_instance_uid: str | None, calling_ae_title: str | None,
               source_address: str | None, reason: str) -> int:
        """An object refused before it was kept: logged, recorded as an event (when the
        verdict log answers), answered Out of Resources."""
        uid = affected_sop_instance_uid or None
        log.warning("refused object %s from %s at %s: %s; answering Out of Resources, nothing kept",
                    printable(uid), printable(calling_ae_title), printable(source_address), reason)
        try:
            record_refusal(self.engine, sop_instance_uid=uid and uid[:64],
                           detail=f"{reason}; from AE {printable(calling_ae_title)} at {printable(source_address)}")
        except (SQLAlchemyError, RuntimeError) as exc:
            log.error("cannot record the refusal of %s in the verdict log (%s)", printable(uid),
                      exc.__class__.__name__)
        return OUT_OF_RESOURCES
