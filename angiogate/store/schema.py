"""The verdict log's schema: the one place its tables and columns are defined.

`verdicts` holds one row per received object (keyed by SOP Instance UID):
what arrived, what the rules and the model said, and where it went.
`forwards` is the durable forward queue, one row per object and destination.
`labels` keeps reviewer overrides that feed retraining; `events` is the audit
trail (receipts, duplicates, releases, labels, failures, prunes). A clip whose
bytes spool retention removed keeps its row and verdict; `file_pruned_at`
says when its file went, `file_pruned_reason` under which rule. `users` holds the
review app's local accounts (password hashes only, never passwords). Alembic migrations under
`angiogate/store/migrations` create exactly these tables; users query them
in SQL, so renaming a column is a migration and a README change.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Decisions a clip can get: defined below the store, stored here as they are.
from angiogate.decisions import DECISIONS, ERROR, NOT_APPLICABLE, SATISFACTORY, UNSATISFACTORY  # noqa: F401


# verdicts.status: where the object is in the judging queue.
RECEIVED = "received"
JUDGED = "judged"

# verdicts.forward_status and forwards.status.
FWD_WAITING = "waiting"      # not judged yet
FWD_PENDING = "pending"      # queued for at least one destination
FWD_FORWARDED = "forwarded"  # every destination acknowledged it
FWD_HELD = "held"            # kept in quarantine; `angiogate release` sends it
FWD_FAILED = "failed"        # a destination gave up after max_attempts
SENT = "sent"
# forwards.status only: the row was queued or sent for content that a newer object
# with the same SOP Instance UID replaced; it is queued again if the new content goes.
SUPERSEDED = "superseded"


def utcnow() -> datetime:
    """Naive UTC: every timestamp column is UTC, identical on SQLite and PostgreSQL."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Verdict(Base):
    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    modality: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)
    frame_rate_hz: Mapped[float | None] = mapped_column(Float)
    frame_rate_source: Mapped[str | None] = mapped_column(String(32))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    source_address: Mapped[str | None] = mapped_column(String(64))
    file_path: Mapped[str] = mapped_column(String(512), nullable=False)
    file_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    file_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    received_count: Mapped[int] = mapped_column(Integer, default=1, nullable=False)

    status: Mapped[str] = mapped_column(String(16), default=RECEIVED, nullable=False)
    decision: Mapped[str | None] = mapped_column(String(16), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(128))
    reason_code: Mapped[str | None] = mapped_column(String(32))
    reasons: Mapped[str | None] = mapped_column(Text)
    failed_rules: Mapped[str | None] = mapped_column(String(256))
    rule_results: Mapped[dict | None] = mapped_column(JSON)
    timings_ms: Mapped[dict | None] = mapped_column(JSON)
    judge_attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)

    forward_status: Mapped[str] = mapped_column(String(16), default=FWD_WAITING, nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(DateTime())
    released_by: Mapped[str | None] = mapped_column(String(64))

    received_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime())
    forwarded_at: Mapped[datetime | None] = mapped_column(DateTime())

    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime())

    # Spool retention (store/retention.py): the file is gone, the row and verdict stay.
    file_pruned_at: Mapped[datetime | None] = mapped_column(DateTime())
    file_pruned_reason: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_verdicts_status", "status"),)


class Forward(Base):
    __tablename__ = "forwards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    verdict_id: Mapped[int] = mapped_column(ForeignKey("verdicts.id"), nullable=False, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    destination: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=FWD_PENDING, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Every failed try, charged to `attempts` or not (a destination that cannot be reached);
    # `events` gets a row only when the error changes, so an outage does not grow it per retry.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0", nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_sent: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime())

    __table_args__ = (
        UniqueConstraint("verdict_id", "destination", name="uq_forwards_verdict_destination"),
        Index("ix_forwards_status_next", "status", "next_attempt_at"),
    )


class Label(Base):
    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    label: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(32))
    reviewer: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)


class User(Base):
    """A local account of the review web app (`angiogate user add NAME`)."""
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow, nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime())
