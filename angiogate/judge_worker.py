"""The judging room: takes received clips off the durable queue and judges them.

Runs in its own thread, never inside a C-STORE handler. For each claimed
clip: judge it, decide where it goes (satisfactory: forward; unsatisfactory:
hold; error and non-cine objects: by policy), and commit verdict and
forwards in one transaction. If the verdict log is unreachable at that
moment, the worker keeps the judgement and its lease and retries the commit
until the database is back (rather than leaving the clip leased, and so
unjudged, until the lease expires).

Between clips it also tidies the spool's `incoming/` folder: temp files of
receives that were aborted midway (disk full, sender gone) are removed, so
their space comes back without a restart.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from angiogate.config import Config
from angiogate.judge.verdict import Judge, Judgement
from angiogate.spool import Spool
from angiogate.store.ledger import (claim_for_judging, clip_rank_in_study, record_judgement,
                                    release_judge_leases)
from angiogate.store.schema import ERROR, NOT_APPLICABLE, SATISFACTORY

log = logging.getLogger(__name__)
MAX_JUDGE_ATTEMPTS = 3  # claims without a verdict before a clip is recorded as crashing the judge
SWEEP_EVERY_S = 5.0  # how often incoming/ is checked for leftovers of aborted receives
RETRY_CAP_S = 5.0    # longest wait between tries to commit a judgement while the database is away


def should_forward(decision: str, config: Config) -> bool:
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
                 destinations: list[str], owner: str, stop: threading.Event):
        super().__init__(name="judge", daemon=True)
        self.config, self.engine, self.spool, self.judge = config, engine, spool, judge
        self.destinations, self.owner, self.stop_event = destinations, owner, stop
        self.judged = 0
        self._leases_unsure = False

    def run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        while not self.stop_event.is_set():
            if time.monotonic() >= next_sweep:
                try:
                    self.spool.sweep_incoming(min_age_s=SWEEP_EVERY_S)
                except Exception:
                    log.exception("sweeping the spool's incoming folder failed; continuing")
                next_sweep = time.monotonic() + SWEEP_EVERY_S
            try:
                if self._leases_unsure:
                    # A claim may have committed its lease before the outage hid it
                    # from us: free this worker's leases instead of waiting them out.
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
                self.stop_event.wait(self.config.workers.poll_interval_s)

    def step(self) -> bool:
        """Judge at most one clip; False when there was nothing to do."""
        claimed = claim_for_judging(self.engine, self.owner, self.config.workers.lease_s)
        if not claimed:
            return False
        row = claimed[0]
        judgement = self._crashed_before(row) or self._judge_row(row)
        forward_to = self.destinations if should_forward(judgement.decision, self.config) else []
        if self._record(row, judgement, forward_to):
            self.judged += 1
            log.info("judged %s: %s (%s)%s", row.sop_instance_uid, judgement.decision,
                     "; ".join(judgement.reasons), "" if forward_to else ", held")
        return True

    def _crashed_before(self, row) -> Judgement | None:
        """An `error` for a clip claimed this often without a verdict: judging it kills
        the process (a native decoder abort, out of memory), so it is not decoded again."""
        if row.judge_attempts <= MAX_JUDGE_ATTEMPTS:
            return None
        return Judgement(ERROR, "judge_crashed",
                         [f"judging was started {row.judge_attempts - 1} times and never finished "
                          "(the gate stopped each time); not decoded again"],
                         model_version=self.judge.model_version)

    def _judge_row(self, row) -> Judgement:
        rank = clip_rank_in_study(self.engine, row) if self.config.rules.max_clips_per_study else None
        try:
            return self.judge.judge(self.spool.path(row.file_path), clip_rank_in_study=rank)
        except Exception as exc:  # e.g. a spool path that no longer resolves: still a verdict
            log.exception("judging %s failed unexpectedly", row.sop_instance_uid)
            return Judgement(ERROR, "internal", [f"internal error while judging: {exc!r}"],
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
                                        values=verdict_values(judgement), forward_to=forward_to)
            except SQLAlchemyError as exc:
                if self.stop_event.is_set():
                    log.error("verdict log unavailable (%s) while stopping; %s is judged again at the "
                              "next start", exc.__class__.__name__, row.sop_instance_uid)
                    return False
                log.error("verdict log unavailable (%s); the judgement of %s is kept and its commit "
                          "retried in %.1f s", exc.__class__.__name__, row.sop_instance_uid, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, RETRY_CAP_S)
