"""Several gates on one PostgreSQL (issue 14 item 4), as real `angiogate serve` processes.

Two gates share the verdict log and the spool. A gate's start frees only the
leases of its own earlier runs (its `gate_id` prefixes every lease it takes),
never the other gate's live work; both judge and forward from the same queues
and every clip is judged once and delivered once; each receives into its own
`incoming/<gate_id>/` folder.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from peers import count_successes, storescu, wait_for as _wait_for


def _copies(files: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for n, source in enumerate(files):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"{n:03d}.dcm")
        made.append(out / f"{n:03d}.dcm")
    return made


def _plant_leased(engine, spool_dir: Path, source: Path, owner: str) -> str:
    """A received clip in the shared spool and the log, leased for an hour by `owner`
    (a gate's run that holds it, live or dead); its UID."""
    from angiogate.dicom.header import read_header
    from angiogate.store.ledger import claim_for_judging, record_receipt
    from angiogate.store.spool import Spool

    spool = Spool(spool_dir, gate_id="planting")
    header = read_header(source)
    temp = spool.incoming / "tmpplanted.dcm"
    temp.write_bytes(source.read_bytes())
    kept = spool.keep(temp, header.sop_instance_uid)
    record_receipt(engine, sop_instance_uid=header.sop_instance_uid, header=header, file_path=kept.relative_path,
                   file_size=kept.size, file_sha256=kept.sha256, calling_ae_title="T", source_address="127.0.0.1")
    [row] = claim_for_judging(engine, owner, 3600)
    assert row.sop_instance_uid == header.sop_instance_uid
    return header.sop_instance_uid


def test_two_gates_on_one_postgresql_share_the_work_and_never_free_each_others(
        gate_factory, postgres_url, storescp, phantoms, tmp_path):
    from angiogate.store.db import open_database

    phantom_dir, rows = phantoms
    sources = [phantom_dir / r["file"] for r in rows]
    clips = _copies(sources * 2, tmp_path / "clips")
    spool_dir = tmp_path / "shared-spool"
    engine = open_database(postgres_url)
    try:
        # Before either gate runs: gate-b holds one clip (a live run elsewhere), and a run of
        # gate-a that died holds another.
        held_by_b = _plant_leased(engine, spool_dir, _copies(sources[:1], tmp_path / "b")[0], "gate-b/999.1")
        held_by_dead_a = _plant_leased(engine, spool_dir, _copies(sources[1:2], tmp_path / "a")[0], "gate-a/1.1")
    finally:
        engine.dispose()

    def settings(gate_id: str) -> dict:
        return {"gate_id": gate_id, "database_url": postgres_url, "spool_dir": str(spool_dir),
                "model": {"path": "none"}, "policies": {"mode": "shadow"},  # everything is forwarded
                "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}]}

    gate_a = gate_factory(settings("gate-a"), name="a").start()

    def status(uid: str) -> dict:
        return gate_a.query("SELECT status, lease_owner FROM verdicts WHERE sop_instance_uid = :u", u=uid)[0]

    _wait_for(lambda: status(held_by_dead_a)["status"] == "judged", 60,
              "gate-a to take over its dead run's clip", gate_a)
    time.sleep(1.0)  # gate-a polls every 0.1 s: it had every chance to take gate-b's clip
    assert status(held_by_b) == {"status": "received", "lease_owner": "gate-b/999.1"}

    gate_b = gate_factory(settings("gate-b"), name="b").start()
    _wait_for(lambda: status(held_by_b)["status"] == "judged", 60, "gate-b to take over its own clip",
              gate_a, gate_b)

    half = len(clips) // 2
    results = [storescu(clips[:half], gate_a.port, aec="ANGIOGATE", timeout=180),
               storescu(clips[half:], gate_b.port, aec="ANGIOGATE", timeout=180)]
    assert [count_successes(r) for r in results] == [half, len(clips) - half]
    total = len(clips) + 2

    def settled() -> bool:
        rows = gate_a.query("SELECT status, forward_status FROM verdicts")
        return len(rows) == total and all(r["status"] == "judged" and r["forward_status"] == "forwarded"
                                          for r in rows)

    _wait_for(settled, 180, "every clip to be judged and forwarded", gate_a, gate_b)
    judged = Counter(e["sop_instance_uid"] for e in gate_a.query("SELECT sop_instance_uid FROM events "
                                                                 "WHERE kind = 'judged'"))
    forwarded = Counter(e["sop_instance_uid"] for e in gate_a.query("SELECT sop_instance_uid FROM events "
                                                                    "WHERE kind = 'forwarded'"))
    assert len(judged) == total and set(judged.values()) == {1}, judged
    assert len(forwarded) == total and set(forwarded.values()) == {1}, forwarded
    delivered = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                        for p in storescp.received_files())
    assert len(delivered) == total and set(delivered.values()) == {1}
    # both gates did work, each received into its own incoming folder
    assert "judged " in gate_a.log_text() and "judged " in gate_b.log_text()
    assert {p.name for p in (spool_dir / "incoming").iterdir()} >= {"gate-a", "gate-b"}
    for gate in (gate_a, gate_b):
        gate.stop()


def test_last_two_deliveries_recorded_at_once_leave_the_clip_forwarded(postgres_url):
    """Found by the chaos script (two destinations, two gates on PostgreSQL): when the
    forwards of one clip to its two destinations are recorded by two workers at the same
    moment, each transaction saw the other's forward still pending, and the clip stayed
    `pending` for good though both were sent. Each pair here is recorded by two threads
    released together; every clip must end `forwarded`."""
    import threading

    from angiogate.store.db import open_database
    from angiogate.store.ledger import claim_for_judging, claim_forwards, forward_done, record_judgement, \
        record_receipt

    engine = open_database(postgres_url)
    pairs = 40
    try:
        for n in range(pairs):
            record_receipt(engine, sop_instance_uid=f"1.2.3.{n}", header=None, file_path=f"objects/{n}",
                           file_size=1, file_sha256=f"{n:064x}", calling_ae_title="T", source_address="127.0.0.1")
            [row] = claim_for_judging(engine, "judge", 60)
            assert record_judgement(engine, row.id, "judge", decision="satisfactory", values={},
                                    forward_to=["A", "B"])
        jobs = {d: claim_forwards(engine, d, f"gate-{d}/1.1", 60, pairs) for d in ("A", "B")}
        assert [len(j) for j in jobs.values()] == [pairs, pairs]
        for n in range(pairs):
            barrier = threading.Barrier(2)

            def record(job):
                barrier.wait()
                assert forward_done(engine, job, transfer_syntax_uid="1.2.840.10008.1.2.1", status=0)

            threads = [threading.Thread(target=record, args=(jobs[d][n],)) for d in ("A", "B")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        from sqlalchemy import text
        with engine.connect() as conn:
            statuses = Counter(r.forward_status for r in conn.execute(text("SELECT forward_status FROM verdicts")))
            sent = conn.execute(text("SELECT COUNT(*) FROM forwards WHERE status = 'sent'")).scalar()
        assert sent == 2 * pairs
        assert statuses == {"forwarded": pairs}, statuses
    finally:
        engine.dispose()
