"""Reviewers' writes to the verdict log: labels, choosing clips to release, accounts.

The review web app and the CLI (`angiogate label`, `angiogate release
--study/--series/--all-held`, `angiogate user`) both come through here, so a
label or a release is recorded the same way whoever makes it: a `labels` row
(or the ledger's release) plus an `events` row naming the reviewer.
Releasing itself stays in `ledger.release`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from angiogate.decisions import SATISFACTORY, UNSATISFACTORY
from angiogate.store.schema import FWD_FAILED, FWD_HELD, JUDGED, Event, Label, User, Verdict, utcnow

LABELS = (SATISFACTORY, UNSATISFACTORY)
MAX_REASON = 32
MAX_NAME = 64


class ReviewError(ValueError):
    """A label or account request that cannot be recorded; the message says why."""


def check_label(label: str, reason: str | None) -> tuple[str, str | None]:
    if label not in LABELS:
        raise ReviewError(f"label must be {' or '.join(LABELS)}, not {label!r}")
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise ReviewError(f"reason is at most {MAX_REASON} characters (a code such as no_contrast)")
    if label == SATISFACTORY:
        reason = None  # a reason says why a clip is unsatisfactory
    return label, reason


def add_labels(engine: Engine, sop_instance_uids: list[str], *, label: str, reason: str | None,
               note: str | None, reviewer: str) -> dict[str, str]:
    """Record one label per known clip; returns an outcome per UID. The newest label
    of a clip is the one retraining uses; older ones stay as history."""
    label, reason = check_label(label, reason)
    note = (note or "").strip()[:2000] or None
    outcomes = {}
    with Session(engine) as session, session.begin():
        known = set(session.scalars(select(Verdict.sop_instance_uid)
                                    .where(Verdict.sop_instance_uid.in_(sop_instance_uids))).all())
        for uid in sop_instance_uids:
            if uid not in known:
                outcomes[uid] = "unknown SOP Instance UID"
                continue
            session.add(Label(sop_instance_uid=uid, label=label, reason=reason, reviewer=reviewer,
                              note=note, created_at=utcnow()))
            session.add(Event(sop_instance_uid=uid, kind="labelled",
                              detail=f"{label}{' (' + reason + ')' if reason else ''} by {reviewer}"))
            outcomes[uid] = "labelled"
    return outcomes


def latest_labels(engine: Engine, sop_instance_uids: list[str] | None = None) -> dict[str, Label]:
    """The newest label of each clip (of the given ones, or all)."""
    query = select(Label).order_by(Label.sop_instance_uid, Label.created_at, Label.id)
    if sop_instance_uids is not None:
        query = query.where(Label.sop_instance_uid.in_(sop_instance_uids))
    newest: dict[str, Label] = {}
    with Session(engine) as session:
        for row in session.scalars(query):
            newest[row.sop_instance_uid] = row
        session.expunge_all()
    return newest


def releasable_uids(engine: Engine, *, study_instance_uid: str | None = None,
                    series_instance_uid: str | None = None, all_held: bool = False) -> list[str]:
    """SOP Instance UIDs of judged clips held (or failed) in a study, a series, or anywhere."""
    if not (study_instance_uid or series_instance_uid or all_held):
        raise ReviewError("name a study, a series, or all held clips")
    query = select(Verdict.sop_instance_uid).where(Verdict.status == JUDGED,
                                                   Verdict.forward_status.in_((FWD_HELD, FWD_FAILED)))
    if study_instance_uid:
        query = query.where(Verdict.study_instance_uid == study_instance_uid)
    if series_instance_uid:
        query = query.where(Verdict.series_instance_uid == series_instance_uid)
    with Session(engine) as session:
        return list(session.scalars(query.order_by(Verdict.id)).all())


# ------------------------------------------------------------------ accounts

@dataclass(frozen=True)
class Account:
    name: str
    password_hash: str


def check_user_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(c.isspace() or not c.isprintable() for c in name):
        raise ReviewError(f"a user name is 1-{MAX_NAME} printable characters without spaces")
    return name


def add_user(engine: Engine, name: str, password_hash: str, *, replace: bool = False) -> None:
    """Create an account (or set its password with `replace`)."""
    name = check_user_name(name)
    try:
        with Session(engine) as session, session.begin():
            user = session.scalar(select(User).where(User.name == name))
            if user is not None and not replace:
                raise ReviewError(f"user {name!r} exists (use --reset-password to change the password)")
            if user is None:
                session.add(User(name=name, password_hash=password_hash, created_at=utcnow()))
            else:
                user.password_hash = password_hash
            session.add(Event(kind="user_password_set" if user is not None else "user_added", detail=name))
    except IntegrityError as exc:
        raise ReviewError(f"user {name!r} exists") from exc


def remove_user(engine: Engine, name: str) -> bool:
    with Session(engine) as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            return False
        session.delete(user)
        session.add(Event(kind="user_removed", detail=name))
    return True


def get_account(engine: Engine, name: str) -> Account | None:
    with Session(engine) as session:
        user = session.scalar(select(User).where(User.name == name))
        return None if user is None else Account(user.name, user.password_hash)


def set_password_hash(engine: Engine, name: str, password_hash: str) -> None:
    """Store a re-hashed password (after a login, when the hasher's parameters changed)."""
    with Session(engine) as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is not None:
            user.password_hash = password_hash


def record_login(engine: Engine, name: str) -> None:
    with Session(engine) as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is not None:
            user.last_login_at = utcnow()


def list_users(engine: Engine) -> list[tuple[str, object, object]]:
    with Session(engine) as session:
        return [(u.name, u.created_at, u.last_login_at)
                for u in session.scalars(select(User).order_by(User.name))]
