"""The forwarding room: one worker per destination drains its durable queue.

The worker knows targets only through `target.Target` (a DICOM peer, the
outbox, whatever `targets.py` registers): it never asks which kind it has.

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
import threading
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from angiogate.config import Config, Destination
from angiogate.dicom.untrusted import printable
from angiogate.forward.key_objects import KeyObjects
from angiogate.forward.target import ContextsRefused, Item, SendError, Target
from angiogate.forward.targets import ae_title_of, target_for
from angiogate.store.db import is_outage
from angiogate.store.ledger import (ForwardJob, abandon_forwards, claim_forwards, forward_done,
                                    forward_failed, move_forwards, release_forward_leases,
                                    unconfigured_destinations)
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)
BATCH = 16
KEY_OBJECTS_EVERY_S = 2.0  # how often an idle worker looks for series due a Key Object Selection document
RECORD_RETRY_CAP_S = 5.0  # longest wait between tries to record an outcome while the database is away


def reconcile_destinations(engine: Engine, targets: list[str]) -> None:
    """Settle forwards still pending for destinations the configuration no longer names.

    A destination re-addressed (same AE title, or the outbox moved) takes its
    pending forwards along; one removed leaves them `failed` with that reason,
    so the clips show in the log as such and `angiogate release` sends them to
    the destinations configured now. Either way the log and `events` say so.
    """
    for old, count in unconfigured_destinations(engine, targets).items():
        ae_title = ae_title_of(old)
        same = [t for t in targets if ae_title_of(t) == ae_title]
        if len(same) == 1:
            moved = move_forwards(engine, old, same[0])
            log.warning("destination %s is re-addressed in the configuration as %s: %d pending forward(s) "
                        "follow it", old, same[0], moved)
        else:
            abandoned = abandon_forwards(engine, old)
            log.warning("destination %s is no longer in the configuration: %d pending forward(s) to it are "
                        "marked failed; `angiogate release` sends those clips to the configured destinations",
                        old, abandoned)


def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Delay before the next try after `attempts` failures: base * 2^(n-1), capped."""
    return min(cap_s, base_s * (2 ** max(0, attempts - 1)))


class ForwardWorker(threading.Thread):
    """Drains the queue of one destination (a DICOM peer or the local outbox)."""

    def __init__(self, key: str, config: Config, engine: Engine, spool: Spool, owner: str,
                 stop: threading.Event, target: Target | Destination | None = None):
        """`target`: the target to drain into; a configured `Destination` or None (the outbox)
        is made into one by `targets.target_for`."""
        super().__init__(name=f"forward-{key}", daemon=True)
        self.key, self.config, self.engine, self.spool = key, config, engine, spool
        self.owner, self.stop_event = owner, stop
        if target is None or isinstance(target, Destination):
            target = target_for(config, target)
        self.target = target
        self.sent = 0
        destination = getattr(target, "destination", None)
        self.key_objects = (KeyObjects(config, engine, spool, key)
                            if destination is not None and destination.key_objects else None)
        self._next_key_objects = 0.0
        self.destination_failures = 0  # consecutive associations that could not be opened

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
                if self.key_objects is not None and time.monotonic() >= self._next_key_objects:
                    self._next_key_objects = time.monotonic() + KEY_OBJECTS_EVERY_S
                    if self.key_objects.make_due():
                        continue  # queued: send them now
            except SQLAlchemyError as exc:
                log.error("verdict log unavailable (%s); forwarding to %s paused", exc.__class__.__name__, self.key)
                leases_unsure = True
            except Exception:  # a bug must not end forwarding to this destination for good
                log.exception("unexpected error forwarding to %s; continuing", self.key)
                leases_unsure = True
            if time.monotonic() - idle_since > self.config.forwarding.idle_release_s:
                self.target.close()
            self.stop_event.wait(self.config.workers.poll_interval_s)
        self.target.close()

    def send_batch(self, jobs: list[ForwardJob]) -> None:
        """Try each job once; then their objects leave the page cache (`Spool.drop_cached`):
        a retry is seconds to hours away, and another destination's forwarder reads
        what it still needs from disk."""
        try:
            self._send_batch(jobs)
        finally:
            for job in jobs:
                self.spool.drop_cached(job.file_path)

    def _send_batch(self, jobs: list[ForwardJob]) -> None:
        items: dict[int, Item | str] = {job.forward_id: self._item(job) for job in jobs}
        sendable = [i for i in items.values() if isinstance(i, Item)]
        try:
            if sendable and not self._open(sendable, jobs):
                return
        except ContextsRefused:
            pass  # the peer takes none of the batch's contexts: each object is tried alone below
        for job in jobs:
            if self.stop_event.is_set():
                self._failed(job, "gate stopping before this object was sent", None, retry_in_s=0.0, charge=False)
                continue
            item = items[job.forward_id]
            if isinstance(item, str):
                self._failed(job, item, None, give_up=True)
                continue
            # The association dropped mid-batch and cannot be opened again: that is the
            # destination's failure, so this job and the rest wait uncharged.
            try:
                if not self._open([item], jobs[jobs.index(job):]):
                    return
            except ContextsRefused as exc:  # the peer is up and refuses this object: charged to it
                self._failed(job, str(exc), None)
                continue
            try:
                status, syntax = self._deliver(job, item)
            except SendError as exc:
                self._failed(job, str(exc), exc.status)
                continue
            except Exception as exc:  # a bug or an I/O failure must not stop the worker
                log.exception("sending %s to %s failed", printable(job.sop_instance_uid), self.key)
                self._failed(job, f"{type(exc).__name__}: {exc}", None)
                continue
            self._record_sent(job, syntax, status)
            self.sent += 1
            log.info("forwarded %s to %s", printable(job.sop_instance_uid), self.key)

    def _open(self, items: list[Item], jobs: list[ForwardJob]) -> bool:
        """Have the target ready for `items`; False if it cannot be (the peer is down,
        unreachable or rejects the association), after every job in `jobs` was given
        back with the destination's backoff.

        A failed association is the destination's failure, not each object's: no
        attempt is charged toward `forwarding.max_attempts` (an outage must not
        exhaust the queue), though `last_error` says what happened. The backoff
        grows with the destination's consecutive failures instead."""
        try:
            self.target.open_for(items)
        except ContextsRefused:
            self.destination_failures = 0  # it answered: not an outage
            raise
        except Exception as exc:
            if not isinstance(exc, SendError):  # the association could not even be built
                log.exception("opening an association to %s failed", self.key)
            self.destination_failures += 1
            forwarding = self.config.forwarding
            retry = backoff_s(self.destination_failures, forwarding.retry_base_s, forwarding.retry_cap_s)
            error = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
            log.warning("destination %s is unavailable (%s): %d object(s) wait %.1f s; no attempt charged",
                        self.key, error, len(jobs), retry)
            for job in jobs:
                self._failed(job, error, getattr(exc, "status", None), retry_in_s=retry, charge=False)
            return False
        self.destination_failures = 0
        return True

    def _record_sent(self, job: ForwardJob, syntax: str, status: int) -> None:
        """Record a delivery; while the database is unreachable, wait and retry.

        The peer has the object: forgetting that would send it again once
        the lease expired. Only if the gate stops before the database returns
        does the forward stay pending (and the object is sent once more).
        """
        delay = self.config.workers.poll_interval_s
        while True:
            try:
                if not forward_done(self.engine, job, transfer_syntax_uid=syntax, status=status):
                    log.warning("%s was sent to %s, but its forward was superseded or re-claimed meanwhile; "
                                "recorded as an event only", printable(job.sop_instance_uid), self.key)
                return
            except SQLAlchemyError as exc:
                if not is_outage(exc):
                    raise
                if self.stop_event.is_set():
                    log.error("%s was sent to %s but the verdict log is unavailable (%s) while stopping: "
                              "it will be sent again after the next start", printable(job.sop_instance_uid), self.key,
                              exc.__class__.__name__)
                    raise
                log.error("%s was sent to %s; recording that waits for the verdict log (%s), retry in %.1f s",
                          printable(job.sop_instance_uid), self.key, exc.__class__.__name__, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, RECORD_RETRY_CAP_S)

    def _item(self, job: ForwardJob) -> Item | str:
        """What to send for `job`, or why it can never be sent (a reason to give up on)."""
        path = self.spool.path(job.file_path)
        if not path.exists():
            return f"spool file {job.file_path} is missing"
        return self.target.item(job, path)

    def _deliver(self, job: ForwardJob, item: Item) -> tuple[int, str]:
        return self.target.send(job, item)

    def _failed(self, job: ForwardJob, error: str, status: int | None, *, give_up: bool = False,
                retry_in_s: float | None = None, charge: bool = True) -> None:
        """Record a failed try of `job`. `charge=False` (the destination failed, or the gate
        is stopping: not the object's fault) retries after `retry_in_s` without counting
        an attempt toward `forwarding.max_attempts`."""
        forwarding = self.config.forwarding
        attempts = job.attempts + 1
        if not charge:
            retry = retry_in_s
        elif give_up or (forwarding.max_attempts and attempts >= forwarding.max_attempts):
            retry = None
        else:
            retry = backoff_s(attempts, forwarding.retry_base_s, forwarding.retry_cap_s)
        if charge:
            log.warning("forwarding %s to %s failed (attempt %d): %s", printable(job.sop_instance_uid),
                        self.key, attempts, printable(error, 300))
        try:
            forward_failed(self.engine, job, error=error, status=status, retry_in_s=retry, charge=charge)
        except SQLAlchemyError:
            # run() frees this worker's leases once the database answers again.
            log.error("could not record the failure; the forward is retried when the verdict log is back")
            raise
