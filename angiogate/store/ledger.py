"""Reads and writes of the verdict log: receipts, the judge and forward queues.

The queues are rows in the database itself, so they share its durability and
survive a crash: a clip waits in `verdicts` (status `received`) until judged,
a forward waits in `forwards` (status `pending`) until a destination
acknowledged it. Workers claim rows with a lease (owner + expiry) by a
compare-and-set UPDATE, which is atomic on SQLite and PostgreSQL alike; a
worker that dies leaves a lease that expires, and the row is claimed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlalchemy import Engine, and_, case, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from angiogate.dicom.header import ClipHeader
from angiogate.store.schema import (
    FWD_FAILED,
    FWD_FORWARDED,
    FWD_HELD,
    FWD_PENDING,
    FWD_WAITING,
    JUDGED,
    NOT_APPLICABLE,
    RECEIVED,
    SATISFACTORY,
    SENT,
    SUPERSEDED,
    Event,
    Forward,
    Verdict,
    utcnow,
)


@dataclass(frozen=True)
class Receipt:
    verdict_id: int
    duplicate: bool


def _fit(model, name: str, value):
    """`value` made storable in `model`'s column `name` on SQLite and PostgreSQL alike:
    NUL dropped (PostgreSQL refuses it in text) and cut to the column's length, read
    from the schema (PostgreSQL refuses a longer value). Dataset values and peer-chosen
    strings pass through here, so an odd header is recorded rather than refused."""
    if not isinstance(value, str):
        return value
    value = value.replace("\x00", "")
    length = getattr(model.__table__.c[name].type, "length", None)
    return value[:length] if length else value


def _fitted(model, values: dict) -> dict:
    return {name: _fit(model, name, value) for name, value in values.items()}


def _event(**values) -> Event:
    return Event(**_fitted(Event, values))


def _header_columns(header: ClipHeader | None) -> dict:
    if header is None:
        return {}
    return _fitted(Verdict, {
        "sop_class_uid": header.sop_class_uid,
        "study_instance_uid": header.study_instance_uid,
        "series_instance_uid": header.series_instance_uid,
        "patient_id": header.patient_id,
        "accession_number": header.accession_number,
        "series_number": header.series_number,
        "instance_number": header.instance_number,
        "series_description": header.series_description,
        "modality": header.modality,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "rows": header.rows,
        "columns": header.columns,
        "frames": header.frames,
        "frame_rate_hz": header.frame_rate_hz,
        "frame_rate_source": header.frame_rate_source,
    })


def record_receipt(engine: Engine, *, sop_instance_uid: str, header: ClipHeader | None,
                   file_path: str, file_size: int, file_sha256: str,
                   calling_ae_title: str | None, source_address: str | None,
                   note: str | None = None) -> Receipt:
    """Commit the row for a received object (new, resent, or replaced).

    Same UID and same bytes: a duplicate, counted, nothing re-judged.
    Same UID, other bytes: the new object replaces the old and is judged anew.
    """
    sop_instance_uid = _fit(Verdict, "sop_instance_uid", sop_instance_uid)
    calling_ae_title = _fit(Verdict, "calling_ae_title", calling_ae_title)
    source_address = _fit(Verdict, "source_address", source_address)
    for _ in range(3):  # a concurrent insert of the same UID turns into an update
        try:
            with Session(engine) as session, session.begin():
                row = session.scalar(select(Verdict).where(Verdict.sop_instance_uid == sop_instance_uid))
                if row is not None and row.file_sha256 == file_sha256:
                    row.received_count += 1
                    detail = f"identical object received again from {calling_ae_title}"
                    if row.file_pruned_at is not None:
                        # Its bytes are back in the spool: the verdict stands for them again.
                        detail += (f"; its bytes, pruned on {row.file_pruned_at:%Y-%m-%d %H:%M} "
                                   f"({row.file_pruned_reason}), are kept again")
                        row.file_path, row.file_size = file_path, file_size
                        row.file_pruned_at = row.file_pruned_reason = None
                    session.add(_event(sop_instance_uid=sop_instance_uid, kind="duplicate", detail=detail))
                    return Receipt(row.id, True)
                columns = _header_columns(header) | {
                    "file_path": file_path, "file_size": file_size, "file_sha256": file_sha256,
                    "calling_ae_title": calling_ae_title, "source_address": source_address,
                    "status": RECEIVED, "forward_status": FWD_WAITING, "received_at": utcnow(),
                    "decision": None, "score": None, "threshold": None, "model_version": None,
                    "reason_code": None, "reasons": None, "failed_rules": None, "rule_results": None,
                    "decided_at": None, "lease_owner": None, "lease_until": None,
                    "file_pruned_at": None, "file_pruned_reason": None,
                    # new content, new count: the judge_crashed guard counts claims of this content
                    "judge_attempts": 0,
                }
                if row is None:
                    row = Verdict(sop_instance_uid=sop_instance_uid, **columns)
                    session.add(row)
                    kind = "received"
                else:
                    superseded = _supersede_forwards(session, row)
                    for key, value in columns.items():
                        setattr(row, key, value)
                    row.received_count += 1
                    kind = "replaced"
                    note = (f"{note}; " if note else "") + (
                        f"new content (sha256 {file_sha256[:12]}) from {calling_ae_title} at {source_address} "
                        f"replaces {superseded['old_sha256'][:12]}; judged anew; forwards of the old content "
                        f"superseded: {superseded['summary'] or 'none'}")
                session.add(_event(sop_instance_uid=sop_instance_uid, kind=kind,
                                  detail=note or f"from {calling_ae_title} at {source_address}"))
                session.flush()
                return Receipt(row.id, False)
        except IntegrityError:
            continue
    raise RuntimeError(f"could not record receipt of {sop_instance_uid} after concurrent updates")


def _supersede_forwards(session: Session, row: Verdict) -> dict:
    """Mark every forward of `row`'s current content superseded and drop its lease:
    a worker still sending the old content then cannot record it as the new
    content's delivery (forward_done checks the lease)."""
    forwards = session.scalars(select(Forward).where(Forward.verdict_id == row.id)).all()
    summary = ", ".join(f"{f.destination} ({f.status})" for f in forwards)
    for forward in forwards:
        forward.status = SUPERSEDED
        forward.lease_owner = forward.lease_until = None
        forward.last_error = "superseded: an object with the same SOP Instance UID and other bytes arrived"
    return {"old_sha256": row.file_sha256 or "", "summary": summary}


def _queue_forward(session: Session, row: Verdict, destination: str, now) -> None:
    """Queue `row`'s current content for `destination`, reusing the (verdict,
    destination) row when one exists (superseded, failed or released again):
    the queue holds one row per object and destination."""
    forward = session.scalar(select(Forward).where(Forward.verdict_id == row.id,
                                                   Forward.destination == destination))
    if forward is None:
        session.add(Forward(verdict_id=row.id, sop_instance_uid=row.sop_instance_uid,
                            destination=destination, status=FWD_PENDING, next_attempt_at=now))
        return
    forward.status = FWD_PENDING
    forward.attempts = forward.failures = 0
    forward.next_attempt_at = now
    forward.last_error = forward.last_status = forward.transfer_syntax_sent = forward.sent_at = None
    forward.lease_owner = forward.lease_until = None


def clear_leases(engine: Engine, gate_name: str | None = None) -> None:
    """At start-up: work leased by a previous run of this gate is free again.

    `gate_name`: only leases whose owner starts with `<gate_name>/` (this gate's
    earlier runs) are touched, so gates sharing the verdict log never free each
    other's live work (another gate's dead run's leases expire after lease_s).
    None: every lease (one gate per database).

    An unjudged clip that was the only one a run held when it died keeps the
    claim it counted: it may be what killed the process, and after
    MAX_JUDGE_ATTEMPTS such claims it is recorded as judge_crashed. Clips a
    run held together with others share the blame, so none is charged: each
    gets its claim back but no less than one, which makes its next claim a
    suspect's (judged alone), where its own blame is counted. Without that,
    innocent clips in flight during three unclean restarts were held as
    judge_crashed.
    """
    def ours(model):
        if gate_name is None:
            return model.lease_owner.is_not(None)
        return model.lease_owner.startswith(f"{gate_name}/", autoescape=True)

    with engine.begin() as conn:
        held = conn.execute(select(Verdict.lease_owner, func.count()).where(
            ours(Verdict), Verdict.status == RECEIVED)
            .group_by(Verdict.lease_owner)).all()
        shared = [owner for owner, count in held if count > 1]
        if shared:
            conn.execute(update(Verdict).where(Verdict.lease_owner.in_(shared), Verdict.status == RECEIVED)
                         .values(judge_attempts=case((Verdict.judge_attempts > 1, Verdict.judge_attempts - 1),
                                                     else_=1)))
        conn.execute(update(Verdict).where(ours(Verdict)).values(lease_owner=None, lease_until=None))
        conn.execute(update(Forward).where(ours(Forward)).values(lease_owner=None, lease_until=None))


def release_judge_leases(engine: Engine, owner: str, verdict_ids: list[int] | None = None) -> int:
    """Free the unjudged rows `owner` leased (on a clean stop, or after it lost track of them
    in a database outage; only `verdict_ids` when given). Each gives back the attempt its
    claim counted: `judge_attempts` counts judgings that may have crashed the gate, and a
    release is not one (without this, three clean stops while a clip was in flight marked it
    judge_crashed)."""
    where = [Verdict.lease_owner == owner, Verdict.status == RECEIVED]
    if verdict_ids is not None:
        where.append(Verdict.id.in_(verdict_ids))
    with engine.begin() as conn:
        return conn.execute(update(Verdict).where(*where)
                            .values(lease_owner=None, lease_until=None,
                                    judge_attempts=case((Verdict.judge_attempts > 0, Verdict.judge_attempts - 1),
                                                        else_=0))).rowcount


def release_forward_leases(engine: Engine, destination: str, owner: str) -> int:
    """Free the pending forwards to `destination` that `owner` leased (same reason)."""
    with engine.begin() as conn:
        return conn.execute(update(Forward).where(Forward.lease_owner == owner, Forward.destination == destination,
                                                  Forward.status == FWD_PENDING)
                            .values(lease_owner=None, lease_until=None)).rowcount


def _lease_free(model, now):
    return or_(model.lease_until.is_(None), model.lease_until < now)


def db_now(session: Session) -> datetime:
    """Now (naive UTC) by the database's clock, which every gate sharing it reads alike:
    leases and retry times are set and compared on it, never on a gate's own clock.
    SQLite is a file on this host: its clock is this one's."""
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    now = session.scalar(text("SELECT CURRENT_TIMESTAMP"))
    return now.astimezone(timezone.utc).replace(tzinfo=None) if now.tzinfo else now


def _claimable(statement):
    """Candidates locked by one claim are skipped by the others (PostgreSQL's FOR UPDATE
    SKIP LOCKED; SQLite, one writer at a time, ignores it)."""
    return statement.with_for_update(skip_locked=True)


def claim_for_judging(engine: Engine, owner: str, lease_s: float, limit: int = 1) -> list[Verdict]:
    """Lease up to `limit` received-but-unjudged rows, oldest first."""
    claimed_ids = []
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            now = db_now(session)
            candidates = session.scalars(_claimable(
                select(Verdict.id).where(Verdict.status == RECEIVED, _lease_free(Verdict, now))
                .order_by(Verdict.id).limit(limit * 4))).all()
            for verdict_id in candidates:
                # compare-and-set: the row is still free (whatever locking the backend has)
                result = session.execute(
                    update(Verdict).where(Verdict.id == verdict_id, Verdict.status == RECEIVED,
                                          _lease_free(Verdict, now))
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s),
                            judge_attempts=Verdict.judge_attempts + 1))
                if result.rowcount == 1:
                    claimed_ids.append(verdict_id)
                    if len(claimed_ids) >= limit:
                        break
        return [session.get(Verdict, verdict_id) for verdict_id in claimed_ids]


def clip_rank_in_study(engine: Engine, verdict: Verdict) -> int | None:
    """1-based rank of a clip among its study's cine objects by (series, instance) number."""
    if not verdict.study_instance_uid:
        return None
    series, instance = verdict.series_number or 0, verdict.instance_number or 0
    with Session(engine) as session:
        earlier = session.scalar(
            select(func.count()).select_from(Verdict).where(
                Verdict.study_instance_uid == verdict.study_instance_uid,
                Verdict.id != verdict.id,
                Verdict.frames > 1,
                or_(func.coalesce(Verdict.series_number, 0) < series,
                    and_(func.coalesce(Verdict.series_number, 0) == series,
                         func.coalesce(Verdict.instance_number, 0) < instance))))
    return int(earlier) + 1


def record_judgement(engine: Engine, verdict_id: int, owner: str, *, decision: str,
                     values: dict, forward_to: list[str], file_sha256: str | None = None) -> bool:
    """Store a judgement and queue its forwards in one transaction.

    Returns False if the lease was lost (another worker owns the row now) or
    the judged content is no longer the row's (`file_sha256`: a newer object
    with the same UID replaced it meanwhile), in which case nothing is written:
    a clip is never judged twice into the log, nor judged on stale bytes.
    """
    with Session(engine) as session, session.begin():
        now = db_now(session)
        row = session.get(Verdict, verdict_id, with_for_update=True)
        if row is None or row.status != RECEIVED or row.lease_owner != owner:
            return False
        if file_sha256 is not None and row.file_sha256 != file_sha256:
            return False
        for key, value in _fitted(Verdict, values).items():
            setattr(row, key, value)
        row.decision = decision
        row.status = JUDGED
        row.decided_at = now
        row.lease_owner = row.lease_until = None
        if forward_to:
            for destination in forward_to:
                _queue_forward(session, row, destination, now)
            row.forward_status = FWD_PENDING
        else:
            row.forward_status = FWD_HELD
        session.add(_event(sop_instance_uid=row.sop_instance_uid, kind="judged",
                          detail=f"{decision}; {'forward to ' + ', '.join(forward_to) if forward_to else 'held'}"))
    return True


@dataclass(frozen=True)
class ForwardJob:
    forward_id: int
    verdict_id: int
    sop_instance_uid: str
    destination: str
    file_path: str
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    attempts: int
    owner: str


def claim_forwards(engine: Engine, destination: str, owner: str, lease_s: float, limit: int) -> list[ForwardJob]:
    """Lease up to `limit` due forwards for one destination, oldest first."""
    jobs = []
    with Session(engine) as session, session.begin():
        now = db_now(session)
        candidates = session.execute(_claimable(
            select(Forward.id).where(Forward.destination == destination, Forward.status == FWD_PENDING,
                                     Forward.next_attempt_at <= now, _lease_free(Forward, now))
            .order_by(Forward.next_attempt_at, Forward.id).limit(limit * 2))).scalars().all()
        for forward_id in candidates:
            result = session.execute(
                update(Forward).where(Forward.id == forward_id, Forward.status == FWD_PENDING,
                                      _lease_free(Forward, now))
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s)))
            if result.rowcount != 1:
                continue
            forward, verdict = session.execute(
                select(Forward, Verdict).join(Verdict, Verdict.id == Forward.verdict_id)
                .where(Forward.id == forward_id)).one()
            jobs.append(ForwardJob(forward.id, verdict.id, verdict.sop_instance_uid, destination,
                                   verdict.file_path, verdict.sop_class_uid, verdict.transfer_syntax_uid,
                                   forward.attempts, owner))
            if len(jobs) >= limit:
                break
    return jobs


def _refresh_forward_status(session: Session, verdict_id: int) -> None:
    # The verdict row is locked before its forwards are read: two workers recording the
    # last two deliveries of one clip at once (two destinations, or two gates) would
    # otherwise each see the other's forward still pending and leave the clip `pending`
    # for good (PostgreSQL, read committed; SQLite has one writer at a time).
    session.execute(select(Verdict.id).where(Verdict.id == verdict_id).with_for_update())
    statuses = set(session.scalars(select(Forward.status).where(Forward.verdict_id == verdict_id)).all())
    statuses.discard(SUPERSEDED)  # rows of content that no longer is the object's
    row = session.get(Verdict, verdict_id)
    if not statuses:
        return
    if statuses == {SENT}:
        row.forward_status = FWD_FORWARDED
        row.forwarded_at = utcnow()
    elif FWD_PENDING in statuses:
        row.forward_status = FWD_PENDING
    else:
        row.forward_status = FWD_FAILED


def _still_ours(session: Session, job: ForwardJob, outcome: str) -> Forward | None:
    """The job's forward row if this worker's lease on it still holds; otherwise
    None, with an event saying what became of the outcome (the row was
    superseded by new content, or another gate re-claimed it after the lease
    ran out, and that claim's outcome is the one recorded)."""
    forward = session.get(Forward, job.forward_id, with_for_update=True)
    if forward is not None and forward.lease_owner == job.owner and forward.status == FWD_PENDING:
        return forward
    state = "gone" if forward is None else f"{forward.status}, lease {forward.lease_owner or 'none'}"
    session.add(_event(sop_instance_uid=job.sop_instance_uid, kind="forward_outcome_dropped",
                      detail=f"{outcome} to {job.destination} not recorded: the forward is no longer this "
                             f"worker's ({state})"))
    return None


def forward_done(engine: Engine, job: ForwardJob, *, transfer_syntax_uid: str | None, status: int) -> bool:
    """Record a delivery; False (and an event) when the lease was lost meanwhile."""
    with Session(engine) as session, session.begin():
        forward = _still_ours(session, job, f"delivery as {transfer_syntax_uid}")
        if forward is None:
            return False
        forward.status = SENT
        forward.sent_at = utcnow()
        forward.attempts += 1
        forward.last_status = status
        forward.transfer_syntax_sent = transfer_syntax_uid
        forward.lease_owner = forward.lease_until = None
        _refresh_forward_status(session, job.verdict_id)
        session.add(_event(sop_instance_uid=job.sop_instance_uid, kind="forwarded",
                          detail=f"to {job.destination} as {transfer_syntax_uid}"
                                 + (f" after {forward.failures} failed tries" if forward.failures else "")))
    return True


def forward_failed(engine: Engine, job: ForwardJob, *, error: str, status: int | None,
                   retry_in_s: float | None, charge: bool = True) -> None:
    """Record a failed attempt; retry after `retry_in_s`, or give up when None.
    `charge=False`: the destination failed (no association), not this object, so
    `attempts` (what `forwarding.max_attempts` counts) stays as it was.
    Nothing but an event is written when the lease was lost meanwhile.

    The forwards row counts every failure (`failures`) and keeps the newest error;
    `events` gets a row only for the first failure, when the error differs from the
    previous one, and when the forward gives up: a destination down for a week
    adds one event per object, not one per retry."""
    with Session(engine) as session, session.begin():
        forward = _still_ours(session, job, f"failure ({error[:200]})")
        if forward is None:
            return
        if charge:
            forward.attempts += 1
        forward.failures = (forward.failures or 0) + 1
        previous_error = forward.last_error
        forward.last_error = _fit(Forward, "last_error", error[:2000])
        forward.last_status = status
        forward.lease_owner = forward.lease_until = None
        if retry_in_s is None:
            forward.status = FWD_FAILED
        else:
            forward.next_attempt_at = db_now(session) + timedelta(seconds=retry_in_s)
        _refresh_forward_status(session, job.verdict_id)
        if retry_in_s is None or forward.last_error != previous_error:
            session.add(_event(sop_instance_uid=job.sop_instance_uid,
                              kind="forward_failed" if retry_in_s is not None else "forward_gave_up",
                              detail=f"to {job.destination}: {error[:500]}"
                                     + ("" if charge else "; destination unavailable, no attempt charged")
                                     + f"; failure {forward.failures}"
                                     + ("" if retry_in_s is None else
                                        f"; retry in {retry_in_s:.0f} s (repeats of this error are counted "
                                        "in forwards.failures, not logged here)")))


def release(engine: Engine, sop_instance_uids: list[str], destinations: list[str], released_by: str) -> dict[str, str]:
    """Queue held (or failed) clips for forwarding; returns an outcome per UID."""
    outcomes = {}
    with Session(engine) as session, session.begin():
        now = db_now(session)
        for uid in sop_instance_uids:
            # Locked: spool retention (store/retention.py) cannot prune it while it is released.
            row = session.scalar(select(Verdict).where(Verdict.sop_instance_uid == uid).with_for_update())
            if row is None:
                outcomes[uid] = "unknown SOP Instance UID"
                continue
            if row.file_pruned_at is not None:
                outcomes[uid] = (f"cannot be released: its bytes were pruned from the spool on "
                                 f"{row.file_pruned_at:%Y-%m-%d %H:%M} UTC ({row.file_pruned_reason}); "
                                 "send the object to the gate again to release it")
                continue
            if row.status != JUDGED:
                outcomes[uid] = "not judged yet; it will be forwarded or held when judged"
                continue
            if row.forward_status not in (FWD_HELD, FWD_FAILED):
                outcomes[uid] = f"not held (forward status {row.forward_status})"
                continue
            for destination in destinations:
                forward = session.scalar(select(Forward).where(Forward.verdict_id == row.id,
                                                               Forward.destination == destination))
                if forward is None or forward.status != SENT:
                    _queue_forward(session, row, destination, now)
            # Failures toward destinations no longer configured are settled by this release.
            session.execute(update(Forward).where(Forward.verdict_id == row.id, Forward.status == FWD_FAILED,
                                                  Forward.destination.not_in(destinations))
                            .values(status=SUPERSEDED))
            session.flush()
            _refresh_forward_status(session, row.id)
            row.released_at = now
            row.released_by = released_by
            session.add(_event(sop_instance_uid=uid, kind="released", detail=f"by {released_by}"))
            outcomes[uid] = "released"
    return outcomes


def unconfigured_destinations(engine: Engine, configured: list[str]) -> dict[str, int]:
    """Destinations that pending forwards wait for but the configuration no longer
    names (removed, or re-addressed under a new key): {destination: count}."""
    with Session(engine) as session:
        rows = session.execute(select(Forward.destination, func.count()).where(
            Forward.status == FWD_PENDING, Forward.destination.not_in(configured))
            .group_by(Forward.destination)).all()
    return {destination: int(count) for destination, count in rows}


def move_forwards(engine: Engine, old: str, new: str) -> int:
    """Pending forwards to `old` (re-addressed in the configuration) wait for `new`
    instead; where the object already has a row for `new`, that row is queued."""
    moved = 0
    with Session(engine) as session, session.begin():
        now = db_now(session)
        for forward in session.scalars(select(Forward).where(Forward.destination == old,
                                                             Forward.status == FWD_PENDING)).all():
            row = session.get(Verdict, forward.verdict_id)
            existing = session.scalar(select(Forward).where(Forward.verdict_id == row.id,
                                                            Forward.destination == new))
            if existing is None:
                forward.destination = new
                forward.lease_owner = forward.lease_until = None
            else:
                if existing.status != SENT:
                    _queue_forward(session, row, new, now)
                forward.status = SUPERSEDED
                forward.last_error = f"destination re-addressed as {new}"
            session.add(_event(sop_instance_uid=row.sop_instance_uid, kind="forward_moved",
                              detail=f"{old} is re-addressed in the configuration as {new}"))
            moved += 1
    return moved


def abandon_forwards(engine: Engine, destination: str) -> int:
    """Pending forwards to a destination the configuration no longer names fail with
    that reason, so their clips show as `failed` and `angiogate release` sends them
    to the destinations configured now."""
    abandoned = 0
    with Session(engine) as session, session.begin():
        for forward in session.scalars(select(Forward).where(Forward.destination == destination,
                                                             Forward.status == FWD_PENDING)).all():
            forward.status = FWD_FAILED
            forward.lease_owner = forward.lease_until = None
            forward.last_error = (f"destination {destination} is no longer in the configuration; "
                                  "`angiogate release` sends the clip to the configured destinations")
            session.flush()
            _refresh_forward_status(session, forward.verdict_id)
            session.add(_event(sop_instance_uid=forward.sop_instance_uid, kind="forward_abandoned",
                              detail=forward.last_error))
            abandoned += 1
    return abandoned


# ---------------------------------------------------------------- Key Object Selection documents


@dataclass(frozen=True)
class SeriesForKeyObject:
    """A settled series whose satisfactory clips have all reached one destination."""
    study_instance_uid: str
    series_instance_uid: str
    # (SOP class, SOP instance UID, spool file path, model version, threshold), by instance number
    clips: list[tuple[str, str, str, str | None, float | None]]


def series_due_for_key_objects(engine: Engine, destination: str, *, quiet_s: float,
                               lookback_s: float = 7 * 86400, limit: int = 20) -> list[SeriesForKeyObject]:
    """Series that are settled (every object judged, none received for `quiet_s`, a
    verdict within `lookback_s`) and whose satisfactory clips were all sent to
    `destination`; documents the gate made itself are not series of their own."""
    now = utcnow()
    with Session(engine) as session:
        settled = session.execute(
            select(Verdict.study_instance_uid, Verdict.series_instance_uid)
            .where(Verdict.series_instance_uid.is_not(None), Verdict.study_instance_uid.is_not(None),
                   func.coalesce(Verdict.sop_class_uid, "") != KeyObjectSelectionDocumentStorage)
            .group_by(Verdict.study_instance_uid, Verdict.series_instance_uid)
            .having(func.sum(case((Verdict.status == RECEIVED, 1), else_=0)) == 0,
                    func.max(Verdict.received_at) < now - timedelta(seconds=quiet_s),
                    func.max(Verdict.decided_at) > now - timedelta(seconds=lookback_s),
                    func.sum(case((Verdict.decision == SATISFACTORY, 1), else_=0)) > 0,
                    # a clip whose bytes retention pruned cannot be read for the document's header
                    func.sum(case((Verdict.file_pruned_at.is_not(None), 1), else_=0)) == 0)
            .order_by(func.max(Verdict.decided_at)).limit(limit * 5)).all()
        due = []
        for study, series in settled:
            rows = session.execute(
                select(Verdict.sop_class_uid, Verdict.sop_instance_uid, Verdict.file_path, Verdict.model_version,
                       Verdict.threshold, Forward.status)
                .join(Forward, and_(Forward.verdict_id == Verdict.id, Forward.destination == destination),
                      isouter=True)
                .where(Verdict.series_instance_uid == series, Verdict.decision == SATISFACTORY)
                .order_by(func.coalesce(Verdict.instance_number, 0), Verdict.id)).all()
            if rows and all(status == SENT for *_, status in rows) and all(c for c, *_ in rows):
                due.append(SeriesForKeyObject(study, series, [tuple(row[:5]) for row in rows]))
                if len(due) >= limit:
                    break
    return due


def key_object_exists(engine: Engine, sop_instance_uid: str) -> bool:
    with Session(engine) as session:
        return session.scalar(select(Verdict.id).where(Verdict.sop_instance_uid == sop_instance_uid)) is not None


def record_key_object(engine: Engine, *, header: ClipHeader, file_path: str, file_size: int, file_sha256: str,
                      destination: str, ae_title: str, detail: str) -> bool:
    """Record a document the gate made and queue it for `destination` alone. Its row in
    `verdicts` is `not_applicable` with reason `key_object`, so SQL on the log sees what the
    gate sent and to whom. False when a document with that UID exists already."""
    now = utcnow()
    try:
        with Session(engine) as session, session.begin():
            row = Verdict(sop_instance_uid=header.sop_instance_uid, **_header_columns(header),
                          file_path=file_path, file_size=file_size, file_sha256=file_sha256,
                          calling_ae_title=ae_title, source_address="angiogate", status=JUDGED,
                          decision=NOT_APPLICABLE, reason_code="key_object", reasons=detail,
                          forward_status=FWD_PENDING, received_at=now, decided_at=now)
            session.add(row)
            session.flush()
            _queue_forward(session, row, destination, now)
            session.add(Event(sop_instance_uid=row.sop_instance_uid, kind="key_object_made",
                              detail=f"for {destination}: {detail}"))
    except IntegrityError:
        return False
    return True
