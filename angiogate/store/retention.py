"""Spool retention: which kept objects' bytes may go, and taking them away.

The verdict log decides; the spool follows. A clip's bytes are pruned when:

- `forwarded`: every destination acknowledged it `spool.forwarded_days` ago;
- `held`: it is held, nobody labelled or released it, and its verdict is
  `spool.held_days` old;
- `labelled`: it is held and its newest label is `spool.labelled_days` old
  (`retrain --from-verdict-log` reads its bytes until then).

Never while it is unjudged, has a pending forward or one leased by any gate,
or has a failed forward (that needs a person). Its row keeps its verdict and
records `file_pruned_at` and `file_pruned_reason`; `events` gets a `pruned`
row. Each prune is a compare-and-set UPDATE repeating every condition, so a
release, a resend of new content or another gate's claim that lands between
the choice and the write wins, and gates sharing a database and spool never
remove each other's live work. The row is marked first, the file removed
after: a crash in between leaves a file no live row points to, which the
next pass removes.

Files under `objects/` that no live row points to are pruned once
`spool.orphan_grace_h` old: `superseded` (an object's earlier bytes, after
new content with the same SOP Instance UID replaced them) and `orphan`
(anything else: a receive kept but never recorded, a pruned row's leftover).
No file younger than the grace is ever removed, whatever the rule
(`Spool.remove_stale`), and `incoming/` is never touched.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from angiogate.config import SpoolSettings
from angiogate.store.free_space import free_bytes
from angiogate.store.ledger import _event, db_now
from angiogate.store.schema import FWD_FORWARDED, FWD_HELD, FWD_PENDING, JUDGED, Forward, Label, Verdict
from angiogate.store.spool import Spool, safe_uid_name

log = logging.getLogger(__name__)

PAGE = 500
RULES = ("forwarded", "held", "labelled")


@dataclass(frozen=True)
class Candidate:
    reason: str                   # forwarded | held | labelled | superseded | orphan
    relative_path: str
    size: int
    sop_instance_uid: str | None  # None: an orphan whose name is no UID
    verdict_id: int | None = None
    file_sha256: str | None = None


@dataclass
class PruneResult:
    dry_run: bool
    pruned: list[Candidate] = field(default_factory=list)
    skipped: int = 0              # chosen, then changed meanwhile (released, resent, claimed): left alone

    def totals(self) -> dict[str, tuple[int, int]]:
        """{reason: (objects, bytes)}."""
        out: dict[str, tuple[int, int]] = {}
        for c in self.pruned:
            n, b = out.get(c.reason, (0, 0))
            out[c.reason] = (n + 1, b + c.size)
        return out


def _rule(reason: str, settings: SpoolSettings, now: datetime):
    """The SQL condition under which a row's bytes go by `reason`; None when the rule is off."""
    labelled = exists(select(Label.id).where(Label.sop_instance_uid == Verdict.sop_instance_uid))
    if reason == "forwarded" and settings.forwarded_days > 0:
        cutoff = now - timedelta(days=settings.forwarded_days)
        return and_(Verdict.forward_status == FWD_FORWARDED,
                    func.coalesce(Verdict.forwarded_at, Verdict.decided_at) < cutoff)
    if reason == "held" and settings.held_days > 0:
        cutoff = now - timedelta(days=settings.held_days)
        return and_(Verdict.forward_status == FWD_HELD, Verdict.released_at.is_(None), not_(labelled),
                    Verdict.decided_at < cutoff)
    if reason == "labelled" and settings.labelled_days > 0:
        cutoff = now - timedelta(days=settings.labelled_days)
        recent_label = exists(select(Label.id).where(Label.sop_instance_uid == Verdict.sop_instance_uid,
                                                     Label.created_at >= cutoff))
        return and_(Verdict.forward_status == FWD_HELD, labelled, not_(recent_label))
    return None


def _safe(now: datetime):
    """What every prune repeats at the moment it writes: judged, not pruned yet, no
    lease of any gate on the row, no forward pending or leased by any gate."""
    busy_forward = exists(select(Forward.id).where(
        Forward.verdict_id == Verdict.id,
        or_(Forward.status == FWD_PENDING, and_(Forward.lease_until.is_not(None), Forward.lease_until >= now))))
    return and_(Verdict.status == JUDGED, Verdict.file_pruned_at.is_(None),
                or_(Verdict.lease_until.is_(None), Verdict.lease_until < now), not_(busy_forward))


def _row_candidates(engine: Engine, settings: SpoolSettings):
    for reason in RULES:
        last_id = 0
        while True:
            with Session(engine) as session:
                now = db_now(session)
                rule = _rule(reason, settings, now)
                if rule is None:
                    break
                rows = session.execute(
                    select(Verdict.id, Verdict.sop_instance_uid, Verdict.file_path, Verdict.file_size,
                           Verdict.file_sha256)
                    .where(rule, _safe(now), Verdict.id > last_id).order_by(Verdict.id).limit(PAGE)).all()
            for row in rows:
                yield Candidate(reason, row.file_path, int(row.file_size or 0), row.sop_instance_uid,
                                row.id, row.file_sha256)
            if len(rows) < PAGE:
                break
            last_id = rows[-1].id


def _uid_of(relative_path: str) -> str | None:
    """The SOP Instance UID a kept file's name was made from, when it is one (`<uid>.<hash16>.dcm`)."""
    name = os.path.basename(relative_path)
    parts = name.split(".")
    if len(parts) < 3 or parts[-1] != "dcm" or name.startswith("."):
        return None
    uid = ".".join(parts[:-2])
    return uid if safe_uid_name(uid) == uid else None


def _unreferenced(engine: Engine, spool: Spool, *, older_than_s: float | None):
    """Kept files no live row points to (only those older than `older_than_s` when given)."""
    wall = time.time()

    def classify(batch: list[tuple[str, int, float]]):
        paths = [p for p, _, _ in batch]
        uids = {u for u in map(_uid_of, paths) if u}
        with Session(engine) as session:
            live = set(session.scalars(select(Verdict.file_path).where(
                Verdict.file_path.in_(paths), Verdict.file_pruned_at.is_(None))).all())
            known = set(session.scalars(select(Verdict.sop_instance_uid).where(
                Verdict.sop_instance_uid.in_(uids))).all()) if uids else set()
        for path, size, mtime in batch:
            if path in live or (older_than_s is not None and wall - mtime < older_than_s):
                continue
            uid = _uid_of(path)
            yield Candidate("superseded" if uid in known else "orphan", path, size, uid)

    batch: list[tuple[str, int, float]] = []
    for item in spool.kept_files():
        batch.append(item)
        if len(batch) >= PAGE:
            yield from classify(batch)
            batch = []
    if batch:
        yield from classify(batch)


def prune(engine: Engine, spool: Spool, settings: SpoolSettings, *, dry_run: bool = False,
          by: str = "retention") -> PruneResult:
    """Apply the retention policy once (see the module docstring); `dry_run`: say what
    would go and change nothing."""
    grace_s = settings.orphan_grace_h * 3600
    result = PruneResult(dry_run)
    for candidate in list(_row_candidates(engine, settings)):
        if dry_run:
            result.pruned.append(candidate)
        elif _prune_row(engine, spool, candidate, settings, grace_s, by):
            result.pruned.append(candidate)
        else:
            result.skipped += 1
    for candidate in list(_unreferenced(engine, spool, older_than_s=grace_s)):
        if dry_run:
            result.pruned.append(candidate)
        elif _prune_file(engine, spool, candidate, grace_s, by):
            result.pruned.append(candidate)
        else:
            result.skipped += 1
    if result.pruned and not dry_run:
        log.info("spool retention pruned %s", ", ".join(f"{n} {reason} ({b} bytes)"
                                                       for reason, (n, b) in sorted(result.totals().items())))
    return result


def _prune_row(engine: Engine, spool: Spool, candidate: Candidate, settings: SpoolSettings,
               grace_s: float, by: str) -> bool:
    with Session(engine) as session, session.begin():
        now = db_now(session)
        marked = session.execute(
            update(Verdict).where(Verdict.id == candidate.verdict_id, Verdict.file_sha256 == candidate.file_sha256,
                                  Verdict.file_path == candidate.relative_path,
                                  _rule(candidate.reason, settings, now), _safe(now))
            .values(file_pruned_at=now, file_pruned_reason=candidate.reason)
            .execution_options(synchronize_session=False)).rowcount
        if marked != 1:
            return False
        session.add(_event(sop_instance_uid=candidate.sop_instance_uid, kind="pruned",
                           detail=f"{_why(candidate.reason, settings)}: its {candidate.size} bytes removed from "
                                  f"the spool by {by}; the verdict stays"))
    try:  # after the commit: a crash here leaves a file no live row points to, pruned next pass
        spool.remove_stale(candidate.relative_path, grace_s)
    except OSError as exc:
        log.warning("pruned %s in the verdict log but could not remove its file (%s); the next pass retries",
                    candidate.relative_path, exc)
    return True


def _prune_file(engine: Engine, spool: Spool, candidate: Candidate, grace_s: float, by: str) -> bool:
    with Session(engine) as session:  # a row may have come to point at it since the walk
        if session.scalar(select(Verdict.id).where(Verdict.file_path == candidate.relative_path,
                                                   Verdict.file_pruned_at.is_(None))) is not None:
            return False
    try:
        freed = spool.remove_stale(candidate.relative_path, grace_s)
    except OSError as exc:
        log.warning("could not remove %s from the spool: %s", candidate.relative_path, exc)
        return False
    if freed is None:
        return False
    what = ("an earlier content of this object, replaced by new bytes with the same SOP Instance UID"
            if candidate.reason == "superseded" else "a file no verdict row points to")
    with Session(engine) as session, session.begin():
        session.add(_event(sop_instance_uid=candidate.sop_instance_uid, kind="pruned",
                           detail=f"{candidate.reason}: {what}; {os.path.basename(candidate.relative_path)} "
                                  f"({freed} bytes) removed by {by}"))
    return True


def _why(reason: str, settings: SpoolSettings) -> str:
    return {"forwarded": f"forwarded to every destination over {settings.forwarded_days:g} days ago",
            "held": f"held, neither labelled nor released, judged over {settings.held_days:g} days ago",
            "labelled": f"held and labelled, the newest label over {settings.labelled_days:g} days old",
            }[reason]


# ---------------------------------------------------------------- report


@dataclass
class SpoolReport:
    states: dict[str, tuple[int, int]]      # {state: (objects, bytes)}
    prunable: dict[str, tuple[int, int]]    # what `prune` would remove now, by reason
    free_bytes: int
    min_free_bytes: int


def report(engine: Engine, spool: Spool, settings: SpoolSettings) -> SpoolReport:
    """Counts and bytes of what the spool holds, by state, and what a prune would take."""
    states: dict[str, tuple[int, int]] = {}

    def add(state: str, n: int, b: int) -> None:
        old = states.get(state, (0, 0))
        states[state] = (old[0] + n, old[1] + b)

    with Session(engine) as session:
        for status, forward_status, pruned, n, b in session.execute(
                select(Verdict.status, Verdict.forward_status, Verdict.file_pruned_at.is_not(None),
                       func.count(), func.coalesce(func.sum(Verdict.file_size), 0))
                .group_by(Verdict.status, Verdict.forward_status, Verdict.file_pruned_at.is_not(None))):
            state = "pruned" if pruned else (forward_status if status == JUDGED else "unjudged")
            add(state, int(n), int(b))
    for candidate in _unreferenced(engine, spool, older_than_s=None):
        add(candidate.reason, 1, candidate.size)
    for folder, _, files in os.walk(spool.root / "incoming"):
        for name in files:
            try:
                add("incoming", 1, os.stat(os.path.join(folder, name)).st_size)
            except OSError:
                continue
    prunable = prune(engine, spool, settings, dry_run=True).totals()
    return SpoolReport(states, prunable, free_bytes(spool.root), settings.min_free_bytes)
