"""The judging room: takes received clips off the durable queue and judges them.

Runs in its own thread, never inside a C-STORE handler (which only wakes it
when it idles: `arrived`), with a few helper
threads (`workers.decode_threads`) that prepare clips (header, rules, decode,
preprocessing; see `angiogate.judge.pipeline`). The worker claims only what
the helpers can start on soon (the pipeline bounds it), classifies the
prepared clips in batches of up to `workers.judge_batch` (never waiting for a
batch to fill: only clips already prepared join one), and while the model
runs the helpers prepare the next clips.

A clip claimed before without a verdict (the gate died or stopped while
holding it) is a suspect: it is judged alone, the only clip this worker
leases, so if it is the one that kills the process, its neighbours are not
blamed with it. A death while several clips were leased blames none of them
(`clear_leases` at the next start gives their claims back and makes each a
suspect); a death while a suspect was judged alone counts against it, and
after MAX_JUDGE_ATTEMPTS such claims it is recorded as an `error`
(`judge_crashed`) without being decoded again. On stop, the clips in flight are finished (for at most
DRAIN_S) and whatever is left is released for the next claim.

Each clip is then recorded on its own: decide where it goes (satisfactory:
forward; unsatisfactory: hold; error and non-cine objects: by policy), and
commit verdict and forwards in one transaction. If the verdict log is
unreachable at that moment, the worker keeps the judgement and its lease and
retries the commit until the database is back (rather than leaving the clip
leased, and so unjudged, until the lease expires).

A clip that is not forwarded leaves the page cache once recorded
(`Spool.drop_cached`); a forwarded one when its forwarder has tried it.

Between clips it also tidies the spool's `incoming/` folder: temp files of
receives that were aborted midway (disk full, sender gone) are removed, so
their space comes back without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from angiogate.config import Config
from angiogate.decisions import ERROR, NOT_APPLICABLE, SATISFACTORY
from angiogate.dicom.untrusted import printable
from angiogate.judge.pipeline import ClipPipeline
from angiogate.judge.verdict import Judge, Judgement
from angiogate.store.db import is_outage
from angiogate.store.ledger import (claim_for_judging, clip_rank_in_study, record_judgement,
                                    release_judge_leases)
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)
MAX_JUDGE_ATTEMPTS = 3  # claims without a verdict before a clip is recorded as crashing the judge
SWEEP_EVERY_S = 5.0  # how often incoming/ is checked for leftovers of aborted receives
RETRY_CAP_S = 5.0    # longest wait between tries to commit a judgement while the database is away
DRAIN_S = 10.0       # on stop, how long clips already claimed may still be judged and recorded


def should_forward(decision: str, config: Config) -> bool:
    if config.policies.mode == "shadow":  # measure the model without letting it hold anything
        return True
    if decision == SATISFACTORY:
        return True
    if decision == ERROR:
        return config.policies.on_error == "forward"
    if decision == NOT_APPLICABLE:
        return config.policies.non_cine == "forward"
    return False


def verdict_values(judgement: Judgement) -> dict:
    """The verdict-row columns a judgement fills."""
    return {
        "score": judgement.score,
        "threshold": judgement.threshold,
        "model_version": judgement.model_version,
        "reason_code": judgement.reason_code,
        "reasons": "; ".join(judgement.reasons),
        "failed_rules": " ".join(judgement.failed_rules) or None,
        "rule_results": {r.rule: {"passed": r.passed, "detail": r.detail} for r in judgement.rule_results},
        "timings_ms": judgement.timings_ms,
    }


class JudgeWorker(threading.Thread):
    def __init__(self, config: Config, engine: Engine, spool: Spool, judge: Judge,
                 destinations: list[str], owner: str, stop: threading.Event,
                 arrived: threading.Event | None = None):
        super().__init__(name="judge", daemon=True)
        self.config, self.engine, self.spool, self.judge = config, engine, spool, judge
        self.destinations, self.owner, self.stop_event = destinations, owner, stop
        # Set when this gate's intake has recorded an object (and on stop): an idle worker
        # looks at once rather than at its next poll (other gates' objects wait for the poll).
        self.arrived = arrived
        self.judged = 0
        self._leases_unsure = False
        self._suspects: deque[tuple[object, Path, int | None]] = deque()  # (row, path, rank) to judge alone
        self._alone = False  # a suspect is in the pipeline: nothing else joins it
        self.pipeline = ClipPipeline(judge, decode_threads=config.workers.decode_threads,
                                     judge_batch=config.workers.judge_batch)

    def run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        try:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_sweep:
                    try:
                        self.spool.sweep_incoming(min_age_s=SWEEP_EVERY_S)
                    except Exception:
                        log.exception("sweeping the spool's incoming folder failed; continuing")
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
                if self.arrived is not None:
                    self.arrived.clear()  # before claiming: an object recorded from now on ends the wait below
                try:
                    if self._leases_unsure and not self._holding():
                        # A claim may have committed its lease before the outage hid it
                        # from us: free this worker's leases instead of waiting them out
                        # (only once every clip it holds is recorded).
                        release_judge_leases(self.engine, self.owner)
                        self._leases_unsure = False
                    worked = self.step()
                except SQLAlchemyError as exc:
                    log.error("verdict log unavailable (%s); judging paused", exc.__class__.__name__)
                    self._leases_unsure = True
                    worked = False
                except Exception:
                    log.exception("unexpected error in the judge worker; continuing")
                    worked = False
                if not worked:
                    (self.arrived or self.stop_event).wait(self.config.workers.poll_interval_s)
            self._drain(time.monotonic() + DRAIN_S)
        finally:
            self._shut_down()

    def step(self) -> bool:
        """Claim what the pipeline has room for, then judge and record one batch;
        False when there was nothing to do."""
        self._claim()
        if self._suspects and not len(self.pipeline):
            row, path, rank = self._suspects.popleft()
            if self._suspects:
                # Alone means the only clip leased: should it kill the process, the next
                # start charges it (clear_leases) only if no other lease shares the blame.
                release_judge_leases(self.engine, self.owner, [r.id for r, _, _ in self._suspects])
                self._suspects.clear()
            self.pipeline.submit(row, path, clip_rank_in_study=rank)
            self._alone = True
        if not len(self.pipeline):
            return False
        while (batch := self.pipeline.next_batch(timeout=self.config.workers.poll_interval_s)) is None:
            if self.stop_event.is_set():
                return True
            self._claim()  # a helper thread may be free while the oldest clip still decodes
        self._claim()  # the helpers prepare the next clips while the model runs
        self._judge_and_record(batch)
        return True

    def _judge_and_record(self, batch) -> None:
        for judged in self.pipeline.classify(batch):
            row, judgement = judged.tag, judged.judgement
            forward_to = self.destinations if should_forward(judgement.decision, self.config) else []
            if self._record(row, judgement, forward_to):
                self.judged += 1
                if not forward_to:  # the judge was its last reader; a forwarder drops it otherwise
                    self.spool.drop_cached(row.file_path)
                # Rule names and the reason code only: reasons quote dataset values (a
                # SeriesDescription), which stay in the verdict log, out of the log.
                log.info("judged %s: %s (%s)%s", printable(row.sop_instance_uid), judgement.decision,
                         " ".join(judgement.failed_rules) or judgement.reason_code or "-",
                         "" if forward_to else ", held")
        if not len(self.pipeline):
            self._alone = False

    def _holding(self) -> bool:
        """Clips claimed by this worker and not yet judged."""
        return bool(len(self.pipeline) or self._suspects)

    def _claim(self) -> None:
        """Lease as many clips as the pipeline has room for and start preparing them.

        A database outage here pauses claiming (not the clips already held):
        this worker's leases are freed once those are recorded (see run)."""
        if self._leases_unsure or self.stop_event.is_set() or self._suspects or self._alone:
            return
        room = self.pipeline.room()
        if room <= 0:
            return
        try:
            for row in claim_for_judging(self.engine, self.owner, self.config.workers.lease_s, limit=room):
                crashed = self._crashed_before(row)
                if crashed is not None:
                    self.pipeline.add_judged(row, crashed)
                    continue
                rank = clip_rank_in_study(self.engine, row) if self.config.rules.max_clips_per_study else None
                try:
                    path = self.spool.path(row.file_path)
                except Exception as exc:  # e.g. a spool path that no longer resolves: still a verdict
                    log.exception("judging %s failed unexpectedly", printable(row.sop_instance_uid))
                    self.pipeline.add_judged(row, Judgement(ERROR, "internal",
                                                            [f"internal error while judging: {exc!r}"],
                                                            model_version=self.judge.model_version))
                    continue
                if row.judge_attempts > 1:
                    self._suspects.append((row, path, rank))
                else:
                    self.pipeline.submit(row, path, clip_rank_in_study=rank)
        except SQLAlchemyError as exc:
            log.error("verdict log unavailable (%s); claiming paused", exc.__class__.__name__)
            self._leases_unsure = True

    def _crashed_before(self, row) -> Judgement | None:
        """An `error` for a clip claimed this often without a verdict: judging it kills
        the process (a native decoder abort, out of memory), so it is not decoded again."""
        if row.judge_attempts <= MAX_JUDGE_ATTEMPTS:
            return None
        return Judgement(ERROR, "judge_crashed",
                         [f"judging was started {row.judge_attempts - 1} times and never finished "
                          "(the gate stopped each time); not decoded again"],
                         model_version=self.judge.model_version)

    def _record(self, row, judgement: Judgement, forward_to: list[str]) -> bool:
        """Commit the judgement; while the database is unreachable, wait and retry.

        The row stays leased to this worker meanwhile, so no one else judges
        it; if the gate stops first, the lease is cleared at the next start
        and the clip is judged again then.
        """
        delay = self.config.workers.poll_interval_s
        while True:
            try:
                return record_judgement(self.engine, row.id, self.owner, decision=judgement.decision,
                                        values=verdict_values(judgement), forward_to=forward_to,
                                        file_sha256=row.file_sha256)
            except SQLAlchemyError as exc:
                if not is_outage(exc):
                    return self._record_unrecordable(row, judgement, exc)
                if self.stop_event.is_set():
                    log.error("verdict log unavailable (%s) while stopping; %s is judged again at the "
                              "next start", exc.__class__.__name__, printable(row.sop_instance_uid))
                    return False
                log.error("verdict log unavailable (%s); the judgement of %s is kept and its commit "
                          "retried in %.1f s", exc.__class__.__name__, printable(row.sop_instance_uid), delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, RETRY_CAP_S)

    def _record_unrecordable(self, row, judgement: Judgement, exc: SQLAlchemyError) -> bool:
        """The database refused the judgement itself (not an outage): retrying would
        stall the judge for good. Record an `error` verdict that holds the clip and
        names the refusal; if even that is refused, leave the row to its lease (it is
        claimed again, and after MAX_JUDGE_ATTEMPTS recorded as judge_crashed)."""
        log.error("the verdict log refused the judgement of %s (%s); recording it as an error",
                  printable(row.sop_instance_uid), exc.__class__.__name__)
        log.debug("refusal detail", exc_info=exc)
        fallback = Judgement(ERROR, "internal",
                             [f"internal error: the verdict log refused the {judgement.decision} verdict "
                              f"({exc.__class__.__name__})"], model_version=judgement.model_version)
        try:
            return record_judgement(self.engine, row.id, self.owner, decision=ERROR,
                                    values=verdict_values(fallback), forward_to=[],
                                    file_sha256=row.file_sha256)
        except SQLAlchemyError:
            log.exception("recording the error verdict of %s failed too; it is judged again after its lease",
                          printable(row.sop_instance_uid))
            return False

    def _drain(self, deadline: float) -> None:
        """On stop: judge and record the clips already in the pipeline, until `deadline`."""
        try:
            while len(self.pipeline) and (left := deadline - time.monotonic()) > 0:
                batch = self.pipeline.next_batch(timeout=left)
                if batch is None:
                    break
                self._judge_and_record(batch)
        except Exception:
            log.exception("finishing the clips in flight failed while stopping; they are judged again")

    def _shut_down(self) -> None:
        """Stop the helper threads; clips claimed but not recorded are freed for the next
        claim (this gate's next start, or another gate sharing the verdict log)."""
        held = len(self.pipeline) + len(self._suspects)
        self.pipeline.close()
        self._suspects.clear()
        if held:
            try:
                release_judge_leases(self.engine, self.owner)
            except SQLAlchemyError as exc:
                log.error("verdict log unavailable (%s) while stopping; %d claimed clip(s) are judged "
                          "after their lease ends or at the next start", exc.__class__.__name__, held)
