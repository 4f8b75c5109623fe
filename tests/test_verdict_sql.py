"""The verdict log is the same product on SQLite and PostgreSQL.

A real gate runs on each backend (PostgreSQL: a throwaway cluster the
fixtures start), receives the same objects, and every `sql` block of the
README runs unchanged on both and returns the same answers.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from peers import count_successes, storescu

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_queries() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 5, "the README must show at least five example queries"
    return blocks


def _normalise(value):
    """Numbers as rounded floats (PostgreSQL gives Decimal where SQLite gives float)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Number):
        return round(float(value), 6)
    return str(value)


def _run_gate_and_query(gate, files):
    result = storescu(files, gate.port, aec="ANGIOGATE")
    assert count_successes(result) == len(files), result.stderr[-3000:]
    verdicts = gate.wait_settled(len(files))
    a_clip = next(v for v in verdicts if v["decision"] == "satisfactory")
    with gate.engine().begin() as conn:
        conn.execute(text("INSERT INTO labels (sop_instance_uid, label, reason, reviewer, created_at) "
                          "VALUES (:uid, 'unsatisfactory', 'partial', 'reviewer-1', CURRENT_TIMESTAMP)"),
                     {"uid": a_clip["sop_instance_uid"]})
    answers = []
    with gate.engine().connect() as conn:
        for sql in readme_queries():
            answers.append(sorted((tuple(_normalise(v) for v in row) for row in conn.execute(text(sql))),
                                  key=repr))
    return verdicts, answers


@pytest.fixture
def workload(phantoms, samples_dir):
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows] + [samples_dir / "XA1_JPLY.dcm",
                                                          samples_dir / "XA-MONO2-8-12x-catheter.dcm"]
    return files


def test_readme_queries_same_on_sqlite_and_postgresql(gate_factory, workload, postgres_url, tiny_checkpoint):
    settings = {"model": {"path": str(tiny_checkpoint), "threshold": 0.99},
                "rules": {"max_frame_rate_hz": 25.0}}
    lite = gate_factory(settings, name="sqlite").start()
    lite_verdicts, lite_answers = _run_gate_and_query(lite, workload)
    lite.stop()
    pg = gate_factory(settings | {"database_url": postgres_url}, name="postgres").start()
    pg_verdicts, pg_answers = _run_gate_and_query(pg, workload)
    pg.stop()

    def essentials(verdicts):
        return sorted((v["sop_instance_uid"], v["decision"], v["forward_status"], v["failed_rules"])
                      for v in verdicts)

    assert essentials(lite_verdicts) == essentials(pg_verdicts)
    # Timestamps and file paths differ by run; compare the queries whose answers are facts.
    queries = readme_queries()
    for sql, a, b in zip(queries, lite_answers, pg_answers):
        if "received_at" in sql or "next_attempt_at" in sql:
            assert len(a) == len(b), sql
        else:
            assert a == b, sql
    errors = lite_answers[[i for i, q in enumerate(queries) if "WHERE decision = 'error'" in q][0]]
    assert len(errors) == 1 and "undecodable" in str(errors[0])
    frame_rate = lite_answers[[i for i, q in enumerate(queries) if "frame_rate%" in q][0]]
    assert frame_rate, "the 30 fps catheter run fails a 25 Hz maximum"
    assert all(row[1] > 25.0 for row in frame_rate)
    disagreements = lite_answers[[i for i, q in enumerate(queries) if "JOIN labels" in q][0]]
    assert len(disagreements) == 1
