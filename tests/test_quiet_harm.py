"""Issue 14's quiet harm: nothing crashes, yet clips end wrongly held, refused or exposed.

- an outage of a destination (no association) used to charge an attempt to
  every object of the batch, so `forwarding.max_attempts` exhausted the queue;
- unclean restarts used to accumulate claims on every clip in flight, holding
  innocent clips as `judge_crashed`;
- truncation was detected through the process-global warnings machinery, so
  another thread's warning could mark a good object truncated;
- a header value longer than its column (or holding NUL) was refused by
  PostgreSQL, and the object with 0xA700 for ever;
- objects without pixel data (dose reports, SR, KOS) were `error` and held,
  not `not_applicable` following `policies.non_cine`;
- files and folders were world-readable, and dataset values and raw UIDs
  reached the log.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
import yaml

from peers import free_port


def _wait_for(predicate, timeout: float, what: str, gate=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{gate.log_text()[-6000:]}" if gate else ""))


def _rows(engine, sql: str, **params) -> list[dict]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _ledger(tmp_path: Path, settings: dict):
    from angiogate.config import load_config
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"model": {"path": "none"}} | settings))
    return load_config(site), open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}"), Spool(tmp_path / "spool")


def _received(engine, spool, path: Path) -> str:
    """`path` kept in the spool and recorded as received, as intake does; its UID."""
    from angiogate.dicom.header import read_header
    from angiogate.store.ledger import record_receipt

    header = read_header(path)
    temp = spool.incoming / f"tmp{header.sop_instance_uid}"
    temp.write_bytes(path.read_bytes())
    kept = spool.keep(temp, header.sop_instance_uid)
    record_receipt(engine, sop_instance_uid=header.sop_instance_uid, header=header, file_path=kept.relative_path,
                   file_size=kept.size, file_sha256=kept.sha256, calling_ae_title="T", source_address="127.0.0.1")
    return header.sop_instance_uid


# ---------------------------------------------------------------- item 5: an outage is not each object's failure

def test_a_destination_outage_charges_no_attempts_but_a_refusal_still_does(tmp_path, phantoms):
    """With max_attempts 2, the destination is down for several rounds of retries: every
    forward stays pending with attempts 0 and last_error naming the failed association.
    Once the peer is up, every object is delivered but the one it refuses, which fails
    after its 2 attempts."""
    import angiogate.forward.worker as fw
    from angiogate.config import Destination
    from angiogate.forward.dicom_target import destination_key
    from angiogate.store.ledger import claim_for_judging, record_judgement
    from test_faults import RefusingSCP

    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows][:3]
    config, engine, spool = _ledger(tmp_path, {
        "workers": {"poll_interval_s": 0.05},
        "forwarding": {"max_attempts": 2, "retry_base_s": 0.05, "retry_cap_s": 0.2}})
    uids = [_received(engine, spool, f) for f in files]
    port = free_port()
    destination = Destination(ae_title="REFUSER", host="127.0.0.1", port=port)
    key = destination_key(destination)
    for row in claim_for_judging(engine, "judge", 60, limit=len(uids)):
        assert record_judgement(engine, row.id, "judge", decision="satisfactory", values={}, forward_to=[key])
    stop = threading.Event()
    worker = fw.ForwardWorker(key, config, engine, spool, "gate:1", stop, destination)
    worker.start()
    peer = None
    try:
        # Several rounds of failed associations (each round records one event per object).
        _wait_for(lambda: len(_rows(engine, "SELECT id FROM events WHERE kind = 'forward_failed'"))
                  >= 4 * len(uids), 60, "several rounds of failed associations")
        forwards = _rows(engine, "SELECT * FROM forwards")
        assert {f["status"] for f in forwards} == {"pending"}, forwards
        assert {f["attempts"] for f in forwards} == {0}, forwards
        assert all("association" in (f["last_error"] or "") for f in forwards), forwards
        peer = RefusingSCP(refuse={uids[0]}, port=port)
        _wait_for(lambda: {f["status"] for f in _rows(engine, "SELECT status FROM forwards")} <= {"sent", "failed"},
                  60, "every forward to settle once the peer is up")
    finally:
        stop.set()
        worker.join(15)
        if peer is not None:
            peer.stop()
    by_uid = {f["sop_instance_uid"]: f for f in _rows(engine, "SELECT * FROM forwards")}
    assert (by_uid[uids[0]]["status"], by_uid[uids[0]]["attempts"], by_uid[uids[0]]["last_status"]) == (
        "failed", 2, 0xA700)
    assert all(by_uid[u]["status"] == "sent" and by_uid[u]["attempts"] == 1 for u in uids[1:]), by_uid
    assert sorted(peer.stored) == sorted(uids[1:])
    engine.dispose()
