"""What the review pages read from the verdict log: filtered lists, one clip, agreement.

Pure reads. Filters arrive as plain values (already parsed from the query
string); a study or series is named by the row id of one of its clips, so
no DICOM identifier ever travels in a URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from angiogate.decisions import SATISFACTORY, UNSATISFACTORY
from angiogate.store.schema import Event, Forward, Label, Verdict


@dataclass
class Filters:
    decision: str | None = None
    reason: str | None = None
    forward_status: str | None = None
    study_of: int | None = None    # verdict id: clips of the same study
    series_of: int | None = None   # verdict id: clips of the same series
    date_from: date | None = None
    date_to: date | None = None
    model_version: str | None = None
    borderline: float | None = None  # |score - threshold| below this
    labelled: str | None = None      # "yes" | "no" | "disagree"
    page: int = 1

    def query_args(self, **changes) -> dict:
        """The filters as query-string arguments (empty ones left out)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__} | changes
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in values.items()
                if v not in (None, "") and not (k == "page" and v == 1)}


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def parse_filters(args) -> Filters:
    borderline = args.get("borderline")
    try:
        borderline_value = float(borderline) if borderline else None
    except ValueError:
        borderline_value = None
    return Filters(
        decision=args.get("decision") or None, reason=args.get("reason") or None,
        forward_status=args.get("forward_status") or None,
        study_of=_parse_int(args.get("study_of")), series_of=_parse_int(args.get("series_of")),
        date_from=_parse_date(args.get("date_from")), date_to=_parse_date(args.get("date_to")),
        model_version=args.get("model_version") or None,
        borderline=borderline_value if borderline_value and borderline_value > 0 else None,
        labelled=args.get("labelled") if args.get("labelled") in ("yes", "no", "disagree") else None,
        page=max(1, _parse_int(args.get("page")) or 1))


def _newest_labels():
    """Subquery: the newest label row id per clip."""
    return select(Label.sop_instance_uid, func.max(Label.id).label("label_id")).group_by(
        Label.sop_instance_uid).subquery()


def _where(session: Session, f: Filters) -> list:
    clauses = []
    if f.decision:
        clauses.append(Verdict.decision == f.decision)
    if f.reason:
        clauses.append(or_(Verdict.reason_code == f.reason, Verdict.failed_rules.like(f"%{f.reason}%")))
    if f.forward_status:
        clauses.append(Verdict.forward_status == f.forward_status)
    for anchor_id, column in ((f.study_of, Verdict.study_instance_uid), (f.series_of, Verdict.series_instance_uid)):
        if anchor_id is not None:
            value = session.scalar(select(column).where(Verdict.id == anchor_id))
            clauses.append(column == value if value is not None else Verdict.id == anchor_id)
    if f.date_from:
        clauses.append(Verdict.received_at >= datetime.combine(f.date_from, time.min))
    if f.date_to:
        clauses.append(Verdict.received_at < datetime.combine(f.date_to + timedelta(days=1), time.min))
    if f.model_version:
        clauses.append(Verdict.model_version == f.model_version)
    if f.borderline is not None:
        clauses.append(and_(Verdict.score.is_not(None), Verdict.threshold.is_not(None),
                            func.abs(Verdict.score - Verdict.threshold) < f.borderline))
    return clauses


@dataclass
class Row:
    verdict: Verdict
    label: Label | None


@dataclass
class Page:
    rows: list[Row]
    total: int
    page: int
    pages: int
    filters: Filters
    choices: dict = field(default_factory=dict)


def verdict_page(engine: Engine, f: Filters, page_size: int) -> Page:
    with Session(engine) as session:
        newest = _newest_labels()
        query = (select(Verdict, Label).outerjoin(newest, newest.c.sop_instance_uid == Verdict.sop_instance_uid)
                 .outerjoin(Label, Label.id == newest.c.label_id))
        clauses = _where(session, f)
        if f.labelled == "yes":
            clauses.append(Label.id.is_not(None))
        elif f.labelled == "no":
            clauses.append(Label.id.is_(None))
        elif f.labelled == "disagree":
            clauses.append(and_(Label.id.is_not(None), Label.label != Verdict.decision))
        if clauses:
            query = query.where(*clauses)
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        pages = max(1, (total + page_size - 1) // page_size)
        page = min(f.page, pages)
        rows = [Row(v, l) for v, l in session.execute(
            query.order_by(Verdict.id.desc()).offset((page - 1) * page_size).limit(page_size)).all()]
        choices = {
            "decisions": sorted(d for d in session.scalars(select(Verdict.decision).distinct()) if d),
            "reasons": sorted(r for r in session.scalars(select(Verdict.reason_code).distinct()) if r),
            "model_versions": sorted(m for m in session.scalars(select(Verdict.model_version).distinct()) if m),
            "forward_statuses": sorted(s for s in session.scalars(select(Verdict.forward_status).distinct()) if s),
        }
        session.expunge_all()
    return Page(rows, total, page, pages, f, choices)


@dataclass
class ClipDetail:
    verdict: Verdict
    forwards: list[Forward]
    events: list[Event]
    labels: list[Label]
    series_held: int
    study_held: int
    series_clips: int
    study_clips: int


def clip_detail(engine: Engine, verdict_id: int) -> ClipDetail | None:
    with Session(engine) as session:
        verdict = session.get(Verdict, verdict_id)
        if verdict is None:
            return None
        uid = verdict.sop_instance_uid
        forwards = list(session.scalars(select(Forward).where(Forward.verdict_id == verdict_id)
                                        .order_by(Forward.id)))
        events = list(session.scalars(select(Event).where(Event.sop_instance_uid == uid)
                                      .order_by(Event.at, Event.id)))
        labels = list(session.scalars(select(Label).where(Label.sop_instance_uid == uid)
                                      .order_by(Label.created_at.desc(), Label.id.desc())))

        def count(column, value, held: bool) -> int:
            if value is None:
                return 0
            query = select(func.count()).select_from(Verdict).where(column == value)
            if held:
                query = query.where(Verdict.forward_status.in_(("held", "failed")), Verdict.status == "judged")
            return int(session.scalar(query))

        detail = ClipDetail(verdict, forwards, events, labels,
                            count(Verdict.series_instance_uid, verdict.series_instance_uid, True),
                            count(Verdict.study_instance_uid, verdict.study_instance_uid, True),
                            count(Verdict.series_instance_uid, verdict.series_instance_uid, False),
                            count(Verdict.study_instance_uid, verdict.study_instance_uid, False))
        session.expunge_all()
    return detail


def uids_in_scope(engine: Engine, verdict_id: int, scope: str) -> list[str]:
    """SOP Instance UIDs of the clip, its series or its study."""
    with Session(engine) as session:
        verdict = session.get(Verdict, verdict_id)
        if verdict is None:
            return []
        if scope == "clip":
            return [verdict.sop_instance_uid]
        column = {"series": Verdict.series_instance_uid, "study": Verdict.study_instance_uid}[scope]
        value = getattr(verdict, column.key)
        if value is None:
            return [verdict.sop_instance_uid]
        return list(session.scalars(select(Verdict.sop_instance_uid).where(column == value).order_by(Verdict.id)))


def uids_of_ids(engine: Engine, verdict_ids: list[int]) -> list[str]:
    if not verdict_ids:
        return []
    with Session(engine) as session:
        return list(session.scalars(select(Verdict.sop_instance_uid).where(Verdict.id.in_(verdict_ids))
                                    .order_by(Verdict.id)))


# ----------------------------------------------------------------- agreement

def auc(scores: list[float], positives: list[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


@dataclass
class Agreement:
    model_version: str
    clips: int = 0
    labelled: int = 0
    # confusion[model decision][reviewer label]
    confusion: dict = field(default_factory=lambda: {d: {SATISFACTORY: 0, UNSATISFACTORY: 0}
                                                    for d in (SATISFACTORY, UNSATISFACTORY, "other")})
    scored: int = 0
    auc: float | None = None

    @property
    def agree(self) -> int:
        return self.confusion[SATISFACTORY][SATISFACTORY] + self.confusion[UNSATISFACTORY][UNSATISFACTORY]

    @property
    def compared(self) -> int:
        return sum(self.confusion[d][l] for d in (SATISFACTORY, UNSATISFACTORY)
                   for l in (SATISFACTORY, UNSATISFACTORY))

    @property
    def kept_good(self) -> float | None:
        """Of the clips reviewers call satisfactory, the share the model let through."""
        good = self.confusion[SATISFACTORY][SATISFACTORY] + self.confusion[UNSATISFACTORY][SATISFACTORY]
        return None if not good else self.confusion[SATISFACTORY][SATISFACTORY] / good


def agreement(engine: Engine) -> list[Agreement]:
    """Per model version: how its verdicts agree with the newest reviewer label of each clip."""
    with Session(engine) as session:
        newest = _newest_labels()
        rows = session.execute(
            select(Verdict.model_version, Verdict.decision, Verdict.score, Label.label)
            .outerjoin(newest, newest.c.sop_instance_uid == Verdict.sop_instance_uid)
            .outerjoin(Label, Label.id == newest.c.label_id)
            .where(Verdict.status == "judged")).all()
    by_version: dict[str, Agreement] = {}
    scores: dict[str, tuple[list, list]] = {}
    for version, decision, score, label in rows:
        version = version or "unknown"
        stats = by_version.setdefault(version, Agreement(version))
        stats.clips += 1
        if label not in (SATISFACTORY, UNSATISFACTORY):
            continue
        stats.labelled += 1
        stats.confusion[decision if decision in (SATISFACTORY, UNSATISFACTORY) else "other"][label] += 1
        if score is not None:
            s, p = scores.setdefault(version, ([], []))
            s.append(float(score))
            p.append(label == UNSATISFACTORY)
    for version, (s, p) in scores.items():
        by_version[version].scored = len(s)
        by_version[version].auc = auc(s, p)
    return sorted(by_version.values(), key=lambda a: a.model_version)
