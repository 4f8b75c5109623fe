"""The forwarding room: one worker per destination drains its durable queue.

Each worker leases due forwards for its destination, sends them over one
reused association, and records every outcome. A failure schedules a retry
with exponential backoff (capped) for that object only; a destination that
is down never blocks another destination, and one bad object never blocks
the queue behind it.

If the verdict log becomes unreachable, forwarding pauses; an object already
sent has its outcome recorded as soon as the database is back (it is not
sent again unless the gate stops before that), and leases the worker lost
track of are freed then rather than waited out.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from angiogate.config import Config, Destination
from angiogate.dicom.sender import Item, Sender, SendError
from angiogate.spool import Spool, fsync_dir, safe_uid_name
from angiogate.store.ledger import (ForwardJob, claim_forwards, forward_done, forward_failed,
                                    release_forward_leases)

log = logging.getLogger(__name__)
BATCH = 16
RECORD_RETRY_CAP_S = 5.0  # longest wait between tries to record an outcome while the database is away


def destination_key(destination: Destination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def outbox_key(outbox_dir: Path) -> str:
    return f"outbox:{outbox_dir}"


def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Delay before the next try after `attempts` failures: base * 2^(n-1), capped."""
    return min(cap_s, base_s * (2 ** max(0, attempts - 1)))


class ForwardWorker(threading.Thread):
    """Drains the queue of one destination (a DICOM peer or the local outbox)."""

    def __init__(self, key: str, config: Config, engine: Engine, spool: Spool, owner: str,
                 stop: threading.Event, destination: Destination | None = None):
        super().__init__(name=f"forward-{key}", daemon=True)
        self.key, self.config, self.engine, self.spool = key, config, engine, spool
        self.owner, self.stop_event, self.destination = owner, stop, destination
        self.sender = None
        if destination is not None:
            self.sender = Sender(destination.ae_title, destination.host, destination.port,
                                 calling_ae_title=config.calling_ae_title,
                                 connect_timeout_s=config.forwarding.connect_timeout_s)
        self.sent = 0

    def run(self) -> None:
        idle_since = time.monotonic()
        leases_unsure = False
        while not self.stop_event.is_set():
            try:
                if leases_unsure:
                    release_forward_leases(self.engine, self.key, self.owner)
                    leases_unsure = False
                jobs = claim_forwards(self.engine, self.key, self.owner, self.config.workers.lease_s, BATCH)
                if jobs:
                    self.send_batch(jobs)
                    idle_since = time.monotonic()
                    continue
            except SQLAlchemyError as exc:
                log.error("verdict log unavailable (%s); forwarding to %s paused", exc.__class__.__name__, self.key)
                leases_unsure = True
            except Exception:  # a bug must not end forwarding to this destination for good
                log.exception("unexpected error forwarding to %s; continuing", self.key)
                leases_unsure = True
            if self.sender and time.monotonic() - idle_since > self.config.forwarding.idle_release_s:
                self.sender.close()
            self.stop_event.wait(self.config.workers.poll_interval_s)
        if self.sender:
            self.sender.close()

    def send_batch(self, jobs: list[ForwardJob]) -> None:
        items = {job.forward_id: self._item(job) for job in jobs}
        if self.sender:
            try:
                self.sender.open_for([i for i in items.values() if i is not None])
            except SendError as exc:
                # The peer is unreachable or refuses us: every job waits, none is lost.
                for job in jobs:
                    self._failed(job, str(exc), exc.status)
                return
        for job in jobs:
            if self.stop_event.is_set():
                self._failed(job, "gate stopping before this object was sent", None, retry_now=True)
                continue
            item = items[job.forward_id]
            if item is None:
                self._failed(job, f"spool file {job.file_path} is missing", None, give_up=True)
                continue
            try:
                status, syntax = self._deliver(job, item)
            except SendError as exc:
                self._failed(job, str(exc), exc.status)
                continue
            except Exception as exc:  # a bug or an I/O failure must not stop the worker
                log.exception("sending %s to %s failed", job.sop_instance_uid, self.key)
                self._failed(job, f"{type(exc).__name__}: {exc}", None)
                continue
            self._record_sent(job, syntax, status)
            self.sent += 1
            log.info("forwarded %s to %s", job.sop_instance_uid, self.key)

    def _record_sent(self, job: ForwardJob, syntax: str, status: int) -> None:
        """Record a delivery; while the database is unreachable, wait and retry.

        The peer has the object: forgetting that would send it again once
        the lease expired. Only if the gate stops before the database returns
        does the forward stay pending (and the object is sent once more).
        """
        delay = self.config.workers.poll_interval_s
        while True:
            try:
                forward_done(self.engine, job, transfer_syntax_uid=syntax, status=status)
                return
            except SQLAlchemyError as exc:
                if self.stop_event.is_set():
                    log.error("%s was sent to %s but the verdict log is unavailable (%s) while stopping: "
                              "it will be sent again after the next start", job.sop_instance_uid, self.key,
                              exc.__class__.__name__)
                    raise
                log.error("%s was sent to %s; recording that waits for the verdict log (%s), retry in %.1f s",
                          job.sop_instance_uid, self.key, exc.__class__.__name__, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, RECORD_RETRY_CAP_S)

    def _item(self, job: ForwardJob) -> Item | None:
        path = self.spool.path(job.file_path)
        if not path.exists():
            return None
        return Item(path, job.sop_class_uid or "", job.transfer_syntax_uid or "")

    def _deliver(self, job: ForwardJob, item: Item) -> tuple[int, str]:
        if self.sender is not None:
            return self.sender.send(item)
        outbox = Path(self.key.removeprefix("outbox:"))
        outbox.mkdir(parents=True, exist_ok=True)
        final = outbox / f"{safe_uid_name(job.sop_instance_uid)}.dcm"
        temp = final.with_suffix(".part")
        shutil.copyfile(item.path, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
        fsync_dir(outbox)
        return 0x0000, item.transfer_syntax_uid

    def _failed(self, job: ForwardJob, error: str, status: int | None, *,
                give_up: bool = False, retry_now: bool = False) -> None:
        forwarding = self.config.forwarding
        attempts = job.attempts + 1
        if give_up or (forwarding.max_attempts and attempts >= forwarding.max_attempts):
            retry = None
        elif retry_now:
            retry = 0.0
        else:
            retry = backoff_s(attempts, forwarding.retry_base_s, forwarding.retry_cap_s)
        log.warning("forwarding %s to %s failed (attempt %d): %s", job.sop_instance_uid, self.key, attempts, error)
        try:
            forward_failed(self.engine, job, error=error, status=status, retry_in_s=retry)
        except SQLAlchemyError:
            # run() frees this worker's leases once the database answers again.
            log.error("could not record the failure; the forward is retried when the verdict log is back")
            raise
