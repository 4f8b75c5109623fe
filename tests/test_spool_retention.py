"""Spool retention, the free-space watermark and bounded `events` (issue 14 item 10).

Ages are made by setting timestamps in the verdict log and file times on disk,
never by sleeping. The ledger-level tests run on SQLite and one on PostgreSQL;
the watermark and the gate's own pruner are shown on a real `angiogate serve`
with DCMTK's storescu.
"""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import text
from typer.testing import CliRunner

from angiogate.config import SpoolSettings
from angiogate.store.db import open_database
from angiogate.store.ledger import (claim_for_judging, claim_forwards, forward_done, forward_failed,
                                    record_judgement, record_receipt, release)
from angiogate.store.retention import prune, report
from angiogate.store.review import add_labels
from angiogate.store.schema import utcnow
from angiogate.store.spool import Spool

from peers import store_results, storescu, wait_for

DEST = "PACS@127.0.0.1:104"
POLICY = SpoolSettings(min_free_bytes=0, forwarded_days=7, held_days=30, labelled_days=30, orphan_grace_h=24,
                       prune_interval_s=0)
DAY = 86400


@pytest.fixture
def log_and_spool(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    try:
        yield engine, Spool(tmp_path / "spool", gate_id="g1")
    finally:
        engine.dispose()


def _sql(engine, sql: str, **params) -> list[dict]:
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return [dict(r._mapping) for r in result] if result.returns_rows else []


def _receive(engine, spool: Spool, uid: str, content: bytes | None = None):
    temp = spool.incoming / "tmpreceived.dcm"
    temp.write_bytes(content if content is not None else uid.encode() * 100)
    kept = spool.keep(temp, uid)
    record_receipt(engine, sop_instance_uid=uid, header=None, file_path=kept.relative_path, file_size=kept.size,
                   file_sha256=kept.sha256, calling_ae_title="MODALITY", source_address="127.0.0.1")
    return kept


def _clip(engine, spool: Spool, uid: str, *, forward: bool, sent: bool = False, content: bytes | None = None):
    """A received and judged clip: queued for DEST (`forward`, delivered when `sent`) or held."""
    kept = _receive(engine, spool, uid, content)
    [row] = claim_for_judging(engine, "g1/1", 60)
    assert row.sop_instance_uid == uid
    assert record_judgement(engine, row.id, "g1/1", decision="satisfactory" if forward else "unsatisfactory",
                            values={}, forward_to=[DEST] if forward else [])
    if sent:
        [job] = claim_forwards(engine, DEST, "g1/1", 60, 10)
        assert forward_done(engine, job, transfer_syntax_uid="1.2.840.10008.1.2.1", status=0)
    return kept


def _age(engine, spool: Spool, uid: str, days: float) -> None:
    """Make a clip `days` old: receipt, verdict, forward and its file on disk."""
    then = utcnow() - timedelta(days=days)
    _sql(engine, "UPDATE verdicts SET received_at = :t, decided_at = :t, forwarded_at = "
                 "CASE WHEN forwarded_at IS NULL THEN NULL ELSE :t END WHERE sop_instance_uid = :u", t=then, u=uid)
    [row] = _sql(engine, "SELECT file_path FROM verdicts WHERE sop_instance_uid = :u", u=uid)
    _age_file(spool.root / row["file_path"], days)


def _age_file(path: Path, days: float) -> None:
    old = time.time() - days * DAY
    os.utime(path, (old, old))


def _row(engine, uid: str) -> dict:
    return _sql(engine, "SELECT * FROM verdicts WHERE sop_instance_uid = :u", u=uid)[0]


def _present(spool: Spool, engine, uid: str) -> bool:
    return (spool.root / _row(engine, uid)["file_path"]).exists()


def _pruned_events(engine) -> dict[str | None, str]:
    return {e["sop_instance_uid"]: e["detail"] for e in _sql(engine, "SELECT * FROM events WHERE kind = 'pruned'")}


# ---------------------------------------------------------------- forwarded and held clips

def test_forwarded_clips_go_after_n_days_and_keep_their_verdict(log_and_spool):
    engine, spool = log_and_spool
    _clip(engine, spool, "1.2.3.1", forward=True, sent=True)
    _clip(engine, spool, "1.2.3.2", forward=True, sent=True)
    _age(engine, spool, "1.2.3.1", 8)   # older than forwarded_days 7
    _age(engine, spool, "1.2.3.2", 6)   # younger
    assert prune(engine, spool, POLICY, dry_run=True).totals() == {"forwarded": (1, 700)}
    assert _present(spool, engine, "1.2.3.1")  # a dry run changes nothing
    assert _row(engine, "1.2.3.1")["file_pruned_at"] is None

    result = prune(engine, spool, POLICY)
    assert [c.sop_instance_uid for c in result.pruned] == ["1.2.3.1"]
    old, young = _row(engine, "1.2.3.1"), _row(engine, "1.2.3.2")
    assert not _present(spool, engine, "1.2.3.1") and _present(spool, engine, "1.2.3.2")
    assert old["decision"] == "satisfactory" and old["forward_status"] == "forwarded"  # the verdict stays
    assert old["file_pruned_at"] is not None and old["file_pruned_reason"] == "forwarded"
    assert young["file_pruned_at"] is None
    assert "forwarded to every destination over 7 days ago" in _pruned_events(engine)["1.2.3.1"]
    assert prune(engine, spool, POLICY).pruned == []  # nothing twice


def test_held_clips_wait_for_a_label_or_release_then_n_days(log_and_spool):
    engine, spool = log_and_spool
    for uid in ("1.2.4.1", "1.2.4.2", "1.2.4.3", "1.2.4.4"):
        _clip(engine, spool, uid, forward=False)
        _age(engine, spool, uid, 40)  # verdicts older than held_days 30
    # 1: held, nobody looked: goes after held_days. 2: labelled 40 days ago: goes.
    # 3: labelled yesterday: stays (retraining reads it). 4: released: forwarded, then forwarded_days.
    add_labels(engine, ["1.2.4.2", "1.2.4.3"], label="unsatisfactory", reason="partial", note=None, reviewer="r")
    _sql(engine, "UPDATE labels SET created_at = :t WHERE sop_instance_uid = '1.2.4.2'", t=utcnow() - timedelta(days=40))
    _sql(engine, "UPDATE labels SET created_at = :t WHERE sop_instance_uid = '1.2.4.3'", t=utcnow() - timedelta(days=1))
    assert release(engine, ["1.2.4.4"], [DEST], "r") == {"1.2.4.4": "released"}

    pruned = {c.sop_instance_uid: c.reason for c in prune(engine, spool, POLICY).pruned}
    assert pruned == {"1.2.4.1": "held", "1.2.4.2": "labelled"}
    assert _present(spool, engine, "1.2.4.3") and _present(spool, engine, "1.2.4.4")  # pending forward: never

    [job] = claim_forwards(engine, DEST, "g1/1", 60, 10)
    forward_done(engine, job, transfer_syntax_uid="1.2.840.10008.1.2.1", status=0)
    assert prune(engine, spool, POLICY).pruned == []       # forwarded just now
    _age(engine, spool, "1.2.4.4", 8)
    assert [c.reason for c in prune(engine, spool, POLICY).pruned] == ["forwarded"]

    # held_days 0: unlabelled held clips are kept for ever.
    _clip(engine, spool, "1.2.4.5", forward=False)
    _age(engine, spool, "1.2.4.5", 4000)
    assert prune(engine, spool, POLICY.model_copy(update={"held_days": 0})).pruned == []


def test_unjudged_pending_leased_and_failed_are_never_pruned(log_and_spool):
    engine, spool = log_and_spool
    _clip(engine, spool, "1.2.5.3", forward=True)          # will fail for good
    [job3] = claim_forwards(engine, DEST, "g1/1", 60, 10)
    forward_failed(engine, job3, error="refused", status=0xA700, retry_in_s=None)
    _clip(engine, spool, "1.2.5.4", forward=True, sent=True)  # sent, but another gate leases its forward row
    _clip(engine, spool, "1.2.5.2", forward=True)          # pending
    _receive(engine, spool, "1.2.5.1")                     # unjudged
    for uid in ("1.2.5.1", "1.2.5.2", "1.2.5.3", "1.2.5.4"):
        _age(engine, spool, uid, 400)
    _sql(engine, "UPDATE verdicts SET forwarded_at = :t WHERE sop_instance_uid IN ('1.2.5.2', '1.2.5.3')",
         t=utcnow() - timedelta(days=400))
    _sql(engine, "UPDATE forwards SET lease_owner = 'gate-b/7.7', lease_until = :t WHERE sop_instance_uid = '1.2.5.4'",
         t=utcnow() + timedelta(hours=1))
    assert prune(engine, spool, POLICY).pruned == []
    assert all(_present(spool, engine, u) for u in ("1.2.5.1", "1.2.5.2", "1.2.5.3", "1.2.5.4"))
    # The lease ran out: now it may go.
    _sql(engine, "UPDATE forwards SET lease_until = :t WHERE sop_instance_uid = '1.2.5.4'",
         t=utcnow() - timedelta(hours=1))
    assert [c.sop_instance_uid for c in prune(engine, spool, POLICY).pruned] == ["1.2.5.4"]


def test_a_release_that_lands_between_choice_and_prune_wins(log_and_spool):
    from angiogate.store.retention import _row_candidates

    engine, spool = log_and_spool
    _clip(engine, spool, "1.2.6.1", forward=False)
    _age(engine, spool, "1.2.6.1", 40)
    [chosen] = list(_row_candidates(engine, POLICY))
    assert release(engine, ["1.2.6.1"], [DEST], "r") == {"1.2.6.1": "released"}
    from angiogate.store.retention import _prune_row

    assert not _prune_row(engine, spool, chosen, POLICY, POLICY.orphan_grace_h * 3600, "test")
    assert _present(spool, engine, "1.2.6.1") and _row(engine, "1.2.6.1")["file_pruned_at"] is None


def test_release_of_a_pruned_clip_says_why_and_a_resend_brings_it_back(log_and_spool):
    engine, spool = log_and_spool
    _clip(engine, spool, "1.2.7.1", forward=False, content=b"clip bytes" * 50)
    _age(engine, spool, "1.2.7.1", 40)
    assert [c.reason for c in prune(engine, spool, POLICY).pruned] == ["held"]
    [outcome] = release(engine, ["1.2.7.1"], [DEST], "r").values()
    assert outcome.startswith("cannot be released: its bytes were pruned from the spool") and "(held)" in outcome
    assert _row(engine, "1.2.7.1")["forward_status"] == "held"

    # The same bytes sent again: kept, the row's verdict stands for them again.
    _receive(engine, spool, "1.2.7.1", b"clip bytes" * 50)
    row = _row(engine, "1.2.7.1")
    assert row["file_pruned_at"] is None and _present(spool, engine, "1.2.7.1") and row["decision"] == "unsatisfactory"
    assert release(engine, ["1.2.7.1"], [DEST], "r") == {"1.2.7.1": "released"}


def test_a_resend_kept_while_its_old_copy_is_pruned_is_not_lost(log_and_spool):
    """The row is marked pruned; before its file is removed, identical bytes arrive again
    (same name): the fresh copy is put back, and the resend's receipt restores the row."""
    engine, spool = log_and_spool
    kept = _clip(engine, spool, "1.2.8.1", forward=True, sent=True, content=b"same" * 100)
    _age(engine, spool, "1.2.8.1", 8)
    temp = spool.incoming / "tmpagain.dcm"
    temp.write_bytes(b"same" * 100)
    again = spool.keep(temp, "1.2.8.1")     # fresh mtime, same name
    assert again.relative_path == kept.relative_path
    assert [c.reason for c in prune(engine, spool, POLICY).pruned] == ["forwarded"]
    assert (spool.root / kept.relative_path).exists()     # young: put back, not removed
    record_receipt(engine, sop_instance_uid="1.2.8.1", header=None, file_path=again.relative_path,
                   file_size=again.size, file_sha256=again.sha256, calling_ae_title="M", source_address="x")
    assert _row(engine, "1.2.8.1")["file_pruned_at"] is None


# ---------------------------------------------------------------- files no live row points to

def test_superseded_bytes_and_orphans_go_after_the_grace_and_incoming_is_untouched(log_and_spool):
    engine, spool = log_and_spool
    first = _clip(engine, spool, "1.2.9.1", forward=True, sent=True, content=b"first" * 100)
    second = _receive(engine, spool, "1.2.9.1", b"second" * 100)   # replaces it: new content, judged anew
    orphan_temp = spool.incoming / "tmporphan.dcm"
    orphan_temp.write_bytes(b"never recorded" * 10)
    orphan = spool.keep(orphan_temp, "1.2.9.2")                     # kept, never recorded (a crash)
    leftover = spool.incoming / "tmpleftover.dcm"                   # a receive's temp file: never ours
    leftover.write_bytes(b"partial")
    _age_file(leftover, 100)

    assert prune(engine, spool, POLICY).pruned == []                # all younger than orphan_grace_h
    for path in (first.relative_path, orphan.relative_path):
        _age_file(spool.root / path, 2)
    _age_file(spool.root / second.relative_path, 2)                 # live (unjudged): never
    result = prune(engine, spool, POLICY)
    assert {(c.reason, c.relative_path) for c in result.pruned} == {
        ("superseded", first.relative_path), ("orphan", orphan.relative_path)}
    assert not (spool.root / first.relative_path).exists() and not (spool.root / orphan.relative_path).exists()
    assert (spool.root / second.relative_path).exists() and leftover.exists()
    events = _pruned_events(engine)
    assert "superseded: an earlier content of this object" in events["1.2.9.1"]
    assert "orphan: a file no verdict row points to" in events["1.2.9.2"]


def test_a_series_with_pruned_clips_gets_no_key_object_document(log_and_spool):
    """Its document would copy a clip's header from the spool: with the bytes gone the
    key-object maker failed on that series at every pass, logging a traceback each time."""
    from angiogate.store.ledger import series_due_for_key_objects

    engine, spool = log_and_spool
    _clip(engine, spool, "1.2.10.1", forward=True, sent=True)
    _sql(engine, "UPDATE verdicts SET study_instance_uid = '1.9', series_instance_uid = '1.9.1', "
                 "sop_class_uid = '1.2.840.10008.5.1.4.1.1.12.1', received_at = :t", t=utcnow() - timedelta(hours=1))
    assert len(series_due_for_key_objects(engine, DEST, quiet_s=30)) == 1
    _sql(engine, "UPDATE verdicts SET file_pruned_at = :t, file_pruned_reason = 'forwarded'", t=utcnow())
    assert series_due_for_key_objects(engine, DEST, quiet_s=30) == []


# ---------------------------------------------------------------- report and CLI

def test_spool_report_and_prune_through_the_cli(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"database_url": "sqlite:///log.sqlite3", "spool_dir": "spool",
                                    "spool": {"min_free_bytes": 12345}}))
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    try:
        for n in range(3):
            _clip(engine, spool, f"1.3.1.{n}", forward=True, sent=True, content=bytes(1000))  # 3 x 1000 bytes
        _age(engine, spool, "1.3.1.0", 10)
        _age(engine, spool, "1.3.1.1", 10)
        _clip(engine, spool, "1.3.2.1", forward=False, content=bytes(500))
        (spool.incoming / "tmpinflight.dcm").write_bytes(bytes(77))
        orphan = spool.objects / "ab"
        orphan.mkdir()
        (orphan / "9.9.9.0123456789abcdef.dcm").write_bytes(bytes(300))

        runner = CliRunner()
        out = runner.invoke(app(), ["spool", "report", "--config", str(site)])
        assert out.exit_code == 0, out.output
        states = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^\s+(\w+)\s+(\d+) objects\s+(\d+) bytes",
                                                                    out.output, re.M)}
        assert states["forwarded"] == (3, 3000) and states["held"] == (1, 500)
        assert states["orphan"] == (1, 300) and states["incoming"] == (1, 77) and states["pruned"] == (0, 0)
        assert "watermark spool.min_free_bytes 12345 bytes" in out.output and ": receiving" in out.output
        assert "prunable now: forwarded 2 objects (2000 bytes" in out.output  # the orphan is too young

        dry = runner.invoke(app(), ["spool", "prune", "--dry-run", "--config", str(site)])
        assert dry.exit_code == 0, dry.output
        assert dry.output.count("would prune forwarded") == 2 and "would prune: forwarded 2 objects (2000 bytes" in dry.output
        assert (spool.root / _row(engine, "1.3.1.0")["file_path"]).exists()

        done = runner.invoke(app(), ["spool", "prune", "--config", str(site)])
        assert "pruned: forwarded 2 objects (2000 bytes" in done.output, done.output
        out = runner.invoke(app(), ["spool", "report", "--config", str(site)])
        states = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^\s+(\w+)\s+(\d+) objects\s+(\d+) bytes",
                                                                    out.output, re.M)}
        assert states["forwarded"] == (1, 1000) and states["pruned"] == (2, 2000)
        assert report(engine, spool, POLICY).states["pruned"] == (2, 2000)
    finally:
        engine.dispose()


def app():
    from angiogate.cli import app as cli_app

    return cli_app


# ---------------------------------------------------------------- bounded events

def test_repeated_forward_failures_add_events_only_when_the_error_changes(log_and_spool):
    engine, spool = log_and_spool
    _clip(engine, spool, "1.4.1.1", forward=True)

    def fail(error: str, retry: float | None = 0.0, charge: bool = False):
        [job] = claim_forwards(engine, DEST, "g1/1", 60, 10)
        forward_failed(engine, job, error=error, status=None, retry_in_s=retry, charge=charge)

    for _ in range(50):
        fail("association to PACS rejected: connection refused")
    for _ in range(20):
        fail("peer answered 0xA700", charge=True)
    fail("peer answered 0xA700", retry=None, charge=True)   # gives up
    events = _sql(engine, "SELECT kind, detail FROM events WHERE kind LIKE 'forward_%' ORDER BY id")
    assert [e["kind"] for e in events] == ["forward_failed", "forward_failed", "forward_gave_up"], events
    [forward] = _sql(engine, "SELECT * FROM forwards")
    assert forward["failures"] == 71 and forward["attempts"] == 21 and forward["status"] == "failed"
    assert forward["last_error"] == "peer answered 0xA700"
    assert "failure 71" in events[-1]["detail"]


# ---------------------------------------------------------------- PostgreSQL

def test_retention_on_postgresql_leaves_another_gates_work_alone(postgres_url, tmp_path):
    engine = open_database(postgres_url)
    spool = Spool(tmp_path / "shared-spool", gate_id="gate-a")
    try:
        _clip(engine, spool, "1.5.1.1", forward=True, sent=True)
        _clip(engine, spool, "1.5.1.2", forward=True, sent=True)
        _clip(engine, spool, "1.5.1.3", forward=False)
        for uid in ("1.5.1.1", "1.5.1.2", "1.5.1.3"):
            _age(engine, spool, uid, 60)
        # gate-b holds a lease on 1.5.1.2's forward row (re-sending it, say).
        _sql(engine, "UPDATE forwards SET lease_owner = 'gate-b/1.1', lease_until = now() AT TIME ZONE 'UTC' "
                     "+ interval '1 hour' WHERE sop_instance_uid = '1.5.1.2'")
        # gate-b's receive in progress in the shared spool, old as it may be.
        theirs = spool.root / "incoming" / "gate-b"
        theirs.mkdir(parents=True)
        (theirs / "tmpbusy.dcm").write_bytes(b"x")
        _age_file(theirs / "tmpbusy.dcm", 5)
        pruned = {c.sop_instance_uid: c.reason for c in prune(engine, spool, POLICY, by="gate gate-a").pruned}
        assert pruned == {"1.5.1.1": "forwarded", "1.5.1.3": "held"}
        assert _present(spool, engine, "1.5.1.2") and (theirs / "tmpbusy.dcm").exists()
        [outcome] = release(engine, ["1.5.1.3"], [DEST], "r").values()
        assert outcome.startswith("cannot be released")
        assert {e["sop_instance_uid"] for e in _sql(engine, "SELECT * FROM events WHERE kind = 'pruned'")} == \
            {"1.5.1.1", "1.5.1.3"}
    finally:
        engine.dispose()


# ---------------------------------------------------------------- a real gate: watermark and its pruner

def _copy_with_new_uid(source: Path, out: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def test_watermark_refuses_before_writing_then_a_lower_one_accepts(gate_factory, phantoms, tmp_path):
    """spool.min_free_bytes above the disk's free space: storescu gets 0xA700 for every
    object, nothing reaches the log or objects/, one WARNING for the episode, and
    /health/ready says not ready. Restarted with a watermark below the free space,
    the same push succeeds, and the gate's own pruner later removes the forwarded
    clips' bytes once their forward is made old."""
    import httpx

    phantom_dir, rows = phantoms
    files = [_copy_with_new_uid(phantom_dir / r["file"], tmp_path / "push" / f"{n}.dcm")
             for n, r in enumerate(rows[:3])]
    gate = gate_factory({"model": {"path": "none"}, "policies": {"mode": "shadow"},
                         "spool": {"min_free_bytes": 2 ** 62, "prune_interval_s": 0.5}}).start()
    results = store_results(storescu(files, gate.port, aec="ANGIOGATE", timeout=120))
    assert [status for _, status in results] == ["Refused: OutOfResources"] * len(files), results
    assert gate.verdicts() == []
    assert not any(p.is_file() for p in (gate.spool_dir / "objects").rglob("*"))
    warnings = [line for line in gate.log_text().splitlines() if "below spool.min_free_bytes" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], warnings
    ready = httpx.get(gate.web_url + "/health/ready", timeout=60)
    assert ready.status_code == 503 and "C-STORE is refused" in ready.json()["checks"]["spool"]["detail"]
    gate.stop()

    gate.settings["spool"] = {"min_free_bytes": 1 << 20, "prune_interval_s": 0.5}
    gate.config_path.write_text(yaml.safe_dump(gate.settings))
    gate.start()
    results = store_results(storescu(files, gate.port, aec="ANGIOGATE", timeout=120))
    assert [status for _, status in results] == ["Success"] * len(files), results
    settled = gate.wait_settled(len(files))
    assert {r["forward_status"] for r in settled} == {"forwarded"}
    assert httpx.get(gate.web_url + "/health/ready", timeout=60).status_code == 200

    # The running gate prunes by itself: forwards made 8 days old (files first: a pass
    # between the two would find young files and leave them to the orphan rule) go.
    for r in settled:
        _age_file(gate.spool_dir / r["file_path"], 8)
    old = utcnow() - timedelta(days=8)
    with gate.engine().begin() as conn:
        conn.execute(text("UPDATE verdicts SET forwarded_at = :t"), {"t": old})
    wait_for(lambda: all(r["file_pruned_at"] for r in gate.verdicts()), 90, "the gate to prune", gate)
    assert not any(p.is_file() for p in (gate.spool_dir / "objects").rglob("*"))
    assert len(gate.query("SELECT id FROM events WHERE kind = 'pruned'")) == len(files)


# ---------------------------------------------------------------- migration 0003

def test_retention_migration_keeps_old_rows_on_sqlite_and_postgresql(tmp_path, postgres_url):
    """A log from before 0003, with a clip and a failing forward, migrates on both backends:
    the row is not pruned, the forward counts no failures yet, and downgrading removes
    the columns again."""
    from sqlalchemy import inspect

    from angiogate.store.db import make_engine, upgrade

    for engine in (make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}"), make_engine(postgres_url)):
        try:
            upgrade(engine, "0002")
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO verdicts (id, sop_instance_uid, file_path, file_size, file_sha256, received_count, "
                    "status, judge_attempts, forward_status, received_at) VALUES (1, '1.6.1', 'objects/aa/x.dcm', 9, "
                    "'ab', 1, 'judged', 1, 'pending', CURRENT_TIMESTAMP)"))
                conn.execute(text(
                    "INSERT INTO forwards (verdict_id, sop_instance_uid, destination, status, attempts, "
                    "next_attempt_at, created_at, last_error) VALUES (1, '1.6.1', 'D', 'pending', 2, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'refused')"))
            upgrade(engine)
            [row] = _sql(engine, "SELECT file_pruned_at, file_pruned_reason FROM verdicts")
            assert row == {"file_pruned_at": None, "file_pruned_reason": None}
            [forward] = _sql(engine, "SELECT failures, attempts FROM forwards")
            assert forward == {"failures": 0, "attempts": 2}
            from alembic import command
            from alembic.config import Config as AlembicConfig

            from angiogate.store.db import MIGRATIONS

            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.downgrade(cfg, "0002")
            assert "failures" not in {c["name"] for c in inspect(engine).get_columns("forwards")}
            assert "file_pruned_at" not in {c["name"] for c in inspect(engine).get_columns("verdicts")}
        finally:
            engine.dispose()
