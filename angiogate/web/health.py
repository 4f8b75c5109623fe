"""Health and metrics: what a load balancer and Prometheus ask the gate.

`readiness` answers whether the gate can take clips now: the verdict log
answers a query, every worker thread (and the SCP) is alive, and the spool
takes a file and has at least `spool.min_free_bytes` free: the watermark
below which C-STORE is refused (store/free_space.py), so the gate is not
ready exactly when it would refuse clips.

`GateCollector` builds the Prometheus metrics on each scrape, from the
verdict log (which every worker writes, so nothing needs to report twice)
and from the running gate (threads, serving model). The verdict latency
histogram (decided_at - received_at) is built incrementally: each scrape
adds the clips decided since the previous one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily)
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from angiogate.store.free_space import free_bytes
from angiogate.store.schema import JUDGED, RECEIVED, Forward, Verdict

LATENCY_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


@dataclass
class GateLink:
    """What the web app may ask the running gate (nothing, when run on its own)."""
    workers: Callable[[], dict[str, bool]] = lambda: {}
    model: Callable[[], dict[str, str]] = lambda: {}
    spool_dir: Path | None = None
    destinations: list[str] = field(default_factory=list)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_database(engine: Engine) -> Check:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return Check("database", True, "answers")
    except Exception as exc:  # any failure to answer is "not ready", with its kind
        return Check("database", False, f"does not answer ({type(exc).__name__})")


def check_workers(link: GateLink) -> Check:
    workers = link.workers()
    if not workers:
        return Check("workers", False, "no gate workers in this process")
    dead = sorted(name for name, alive in workers.items() if not alive)
    if dead:
        return Check("workers", False, "stopped: " + ", ".join(dead))
    return Check("workers", True, f"{len(workers)} alive")


def check_spool(spool_dir: Path | None, min_free_bytes: int) -> Check:
    if spool_dir is None:
        return Check("spool", False, "no spool")
    probe = Path(spool_dir) / "incoming" / f".ready-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        return Check("spool", False, f"not writable ({exc.strerror or type(exc).__name__})")
    free = free_bytes(Path(spool_dir))
    if free < min_free_bytes:
        return Check("spool", False, f"{free} bytes free, below spool.min_free_bytes {min_free_bytes}: "
                                     "C-STORE is refused with 0xA700")
    return Check("spool", True, f"writable, {free} bytes free")


def readiness(engine: Engine, link: GateLink, min_free_bytes: int) -> list[Check]:
    return [check_database(engine), check_workers(link), check_spool(link.spool_dir, min_free_bytes)]


class GateCollector:
    """Prometheus metrics of one gate, read at scrape time."""

    def __init__(self, engine: Engine, link: GateLink):
        self.engine, self.link = engine, link
        self._lock = threading.Lock()
        self._since = None            # decided_at of the newest clip counted in the histogram
        self._seen_at_since: set[int] = set()  # ids decided exactly at `_since` (counted already)
        self._buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._sum = 0.0

    def _latency(self, session: Session) -> HistogramMetricFamily:
        query = select(Verdict.id, Verdict.received_at, Verdict.decided_at).where(Verdict.decided_at.is_not(None))
        if self._since is not None:
            query = query.where(Verdict.decided_at >= self._since)
        for verdict_id, received_at, decided_at in session.execute(query.order_by(Verdict.decided_at)):
            if decided_at == self._since and verdict_id in self._seen_at_since:
                continue
            seconds = max(0.0, (decided_at - received_at).total_seconds())
            slot = next((k for k, bound in enumerate(LATENCY_BUCKETS_S) if seconds <= bound), len(LATENCY_BUCKETS_S))
            self._buckets[slot] += 1
            self._sum += seconds
            if decided_at != self._since:
                self._since, self._seen_at_since = decided_at, set()
            self._seen_at_since.add(verdict_id)
        cumulative, running = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), self._buckets):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily("angiogate_verdict_latency_seconds",
                                     "Time from receipt to verdict per clip", buckets=cumulative,
                                     sum_value=self._sum)

    def collect(self):
        with self._lock:
            yield from self._collect()

    def _collect(self):
        up = GaugeMetricFamily("angiogate_verdict_log_up", "1 when the verdict log answered this scrape")
        try:
            with Session(self.engine) as session:
                families = list(self._from_database(session))
            up.add_metric([], 1)
        except Exception:
            families = []
            up.add_metric([], 0)
        yield up
        yield from families
        workers = GaugeMetricFamily("angiogate_worker_alive", "1 per gate worker thread that is alive",
                                    labels=["worker"])
        for name, alive in sorted(self.link.workers().items()):
            workers.add_metric([name], 1 if alive else 0)
        yield workers
        if self.link.spool_dir is not None:
            try:
                free = free_bytes(Path(self.link.spool_dir))
                yield GaugeMetricFamily("angiogate_spool_free_bytes", "Free bytes on the spool's filesystem",
                                        value=free)
            except OSError:
                pass
        model = self.link.model()
        if model:
            info = InfoMetricFamily("angiogate_serving_model", "The classifier serving now")
            info.add_metric([], model)
            yield info

    def _from_database(self, session: Session):
        received = session.scalar(select(func.coalesce(func.sum(Verdict.received_count), 0)))
        yield CounterMetricFamily("angiogate_objects_received", "Objects received (resends included)",
                                  value=int(received or 0))
        verdicts = CounterMetricFamily("angiogate_verdicts", "Clips judged, by decision and reason",
                                       labels=["decision", "reason"])
        for decision, reason, count in session.execute(
                select(Verdict.decision, Verdict.reason_code, func.count()).where(Verdict.status == JUDGED)
                .group_by(Verdict.decision, Verdict.reason_code)):
            verdicts.add_metric([decision or "", reason or ""], int(count))
        yield verdicts
        forwards = GaugeMetricFamily("angiogate_forwards", "Forwards by destination and status "
                                     "(sent, pending, failed, superseded)", labels=["destination", "status"])
        attempts = CounterMetricFamily("angiogate_forward_attempts", "Forward attempts by destination",
                                       labels=["destination"])
        per_destination: dict[str, int] = {}
        for destination, status, count, tries in session.execute(
                select(Forward.destination, Forward.status, func.count(), func.coalesce(func.sum(Forward.attempts), 0))
                .group_by(Forward.destination, Forward.status)):
            forwards.add_metric([destination, status], int(count))
            per_destination[destination] = per_destination.get(destination, 0) + int(tries or 0)
        for destination, tries in sorted(per_destination.items()):
            attempts.add_metric([destination], tries)
        yield forwards
        yield attempts
        depth = GaugeMetricFamily("angiogate_queue_depth", "Work waiting: clips to judge, forwards per destination",
                                  labels=["queue"])
        depth.add_metric(["judge"], int(session.scalar(select(func.count()).select_from(Verdict)
                                                       .where(Verdict.status == RECEIVED))))
        pending = dict(session.execute(select(Forward.destination, func.count()).where(Forward.status == "pending")
                                       .group_by(Forward.destination)).all())
        for destination in sorted(set(self.link.destinations) | set(pending)):
            depth.add_metric([f"forward:{destination}"], int(pending.get(destination, 0)))
        yield depth
        held = GaugeMetricFamily("angiogate_clips", "Clips by forward status", labels=["forward_status"])
        for status, count in session.execute(select(Verdict.forward_status, func.count())
                                             .group_by(Verdict.forward_status)):
            held.add_metric([status], int(count))
        yield held
        yield self._latency(session)
