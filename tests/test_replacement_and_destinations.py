"""Objects replaced under the same UID, forwards whose object or destination changed.

Issue 14's stoppers, each shown against the real gate or its real workers:
- the same SOP Instance UID arriving again with other bytes after it was
  judged (a clip re-sent as JPEG Lossless) used to stall the judge for good;
- a forward whose row names no transfer syntax (an `error` clip whose header
  was unreadable at intake, then released) used to be re-claimed for ever,
  blocking every other forward to that DICOM destination;
- a destination removed or re-addressed in the config used to strand its
  pending forwards without a word, and `release` refused those clips.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import yaml

from peers import StoreSCP, count_successes, free_port, storescu, wait_for as _wait_for

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _settings(tiny_checkpoint, destinations, **extra) -> dict:
    return {"model": {"path": str(tiny_checkpoint), "threshold": 0.99}, "destinations": destinations} | extra


def _reencoded(source: Path, out: Path) -> Path:
    """The same clip (same UIDs, same pixels) in the other syntax the synth writes:
    JPEG Lossless SV1 for Explicit VR LE and back. Other bytes, same object."""
    from angiogate.synth.dicom_writer import write_xa

    ds = pydicom.dcmread(source)
    syntax = "explicit" if ds.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1 else "jpeg-lossless"
    write_xa(out, ds.pixel_array, frame_rate_hz=1000.0 / float(ds.FrameTime), syntax=syntax,
             patient_id=str(ds.PatientID), patient_name=str(ds.PatientName),
             study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
             sop_instance_uid=str(ds.SOPInstanceUID), series_number=int(ds.SeriesNumber),
             instance_number=int(ds.InstanceNumber), series_description=str(ds.get("SeriesDescription", "")))
    return out


def _syntax(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _push(gate, files):
    result = storescu(files, gate.port, aec="ANGIOGATE", timeout=120)
    assert count_successes(result) == len(files), result.stderr[-4000:]


def test_resend_with_other_bytes_is_judged_anew_and_the_judge_keeps_going(
        gate_factory, storescp, phantoms, tiny_checkpoint, tmp_path):
    """Stopper 1: a judged clip arrives again as JPEG Lossless under the same UID. The new
    content gets its own verdict and is forwarded, the old content's forward is superseded,
    `events` says so, and every clip pushed after it is judged."""
    phantom_dir, rows = phantoms
    first = phantom_dir / next(r["file"] for r in rows if r["label"] == "satisfactory")
    fresh = [phantom_dir / r["file"] for r in rows if phantom_dir / r["file"] != first][:4]
    gate = gate_factory(_settings(tiny_checkpoint, [
        {"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}])).start()
    _push(gate, [first])
    [before] = gate.wait_settled(1)
    assert before["forward_status"] == "forwarded"

    resent = _reencoded(first, tmp_path / "resent.dcm")
    assert _uid(resent) == _uid(first) and resent.read_bytes() != first.read_bytes()
    _push(gate, [resent])
    _push(gate, fresh)
    verdicts = gate.wait_settled(1 + len(fresh), timeout=120)

    assert len(verdicts) == 1 + len(fresh)
    assert all(v["status"] == "judged" for v in verdicts), verdicts
    replaced = next(v for v in verdicts if v["sop_instance_uid"] == _uid(first))
    assert replaced["transfer_syntax_uid"] == _syntax(resent) != before["transfer_syntax_uid"]
    assert replaced["file_sha256"] != before["file_sha256"] and replaced["received_count"] == 2
    assert replaced["forward_status"] == "forwarded" and replaced["decided_at"] > before["decided_at"]
    kinds = [e["kind"] for e in gate.query("SELECT kind FROM events WHERE sop_instance_uid = :u ORDER BY id",
                                           u=_uid(first))]
    assert kinds == ["received", "judged", "forwarded", "replaced", "judged", "forwarded"], kinds
    [forward] = gate.query("SELECT * FROM forwards WHERE sop_instance_uid = :u", u=_uid(first))
    assert (forward["status"], forward["transfer_syntax_sent"]) == ("sent", _syntax(resent))
    # The downstream holds both contents: the old one, then the new one.
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in storescp.received_files()]
    of_first = [str(d.file_meta.TransferSyntaxUID) for d in received if str(d.SOPInstanceUID) == _uid(first)]
    assert sorted(of_first) == sorted([_syntax(first), _syntax(resent)])
    forwarded = {v["sop_instance_uid"] for v in verdicts if v["forward_status"] == "forwarded"}
    assert {str(d.SOPInstanceUID) for d in received} == forwarded


def test_replacement_while_the_old_content_is_in_flight_is_not_recorded_as_the_new(tmp_path):
    """The ledger's side of stopper 1: a judgement or a delivery of the old content that
    completes after the replacement arrived is not recorded against the new content."""
    from angiogate.store.db import open_database
    from angiogate.store.ledger import (claim_for_judging, claim_forwards, forward_done, record_judgement,
                                        record_receipt)

    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    receipt = dict(sop_instance_uid="1.2.3", header=None, file_size=1, calling_ae_title="T",
                   source_address="127.0.0.1")
    record_receipt(engine, file_path="objects/a", file_sha256="a" * 64, **receipt)
    [row] = claim_for_judging(engine, "judge", 60)
    assert record_judgement(engine, row.id, "judge", decision="satisfactory", values={}, forward_to=["D"],
                            file_sha256=row.file_sha256)
    [job] = claim_forwards(engine, "D", "fwd", 60, 1)  # the old content is being sent...
    record_receipt(engine, file_path="objects/b", file_sha256="b" * 64, **receipt)  # ...when new bytes arrive
    assert not forward_done(engine, job, transfer_syntax_uid="1.2.840.10008.1.2.1", status=0)
    [row] = claim_for_judging(engine, "judge", 60)
    assert record_judgement(engine, row.id, "judge", decision="satisfactory", values={}, forward_to=["D"],
                            file_sha256="b" * 64)
    [job] = claim_forwards(engine, "D", "fwd", 60, 1)
    assert job.file_path == "objects/b" and job.attempts == 0
    assert forward_done(engine, job, transfer_syntax_uid="1.2.840.10008.1.2.1", status=0)
    # a judgement made on stale bytes is refused even under the right lease
    record_receipt(engine, file_path="objects/c", file_sha256="c" * 64, **receipt)
    [row] = claim_for_judging(engine, "judge", 60)
    assert not record_judgement(engine, row.id, "judge", decision="satisfactory", values={},
                                forward_to=["D"], file_sha256="b" * 64)
    engine.dispose()


def test_an_object_replaced_many_times_is_judged_on_each_content(tmp_path):
    """Found by tests/test_ledger_state_machine.py: judge_attempts (claims without a verdict,
    the judge_crashed guard's count) carried over from one content to the next, so the
    fourth replacement of a clip that never crashed anything was recorded as `error`
    judge_crashed without being decoded, and held. New content starts a new count."""
    import angiogate.judge.worker as jw
    from angiogate.config import load_config
    from angiogate.judge.verdict import Judge
    from angiogate.receive.intake import SUCCESS, Intake
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"model": {"path": "none"}, "outbox_dir": str(tmp_path / "outbox")}))
    config = load_config(site)
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    intake = Intake(engine, spool)
    worker = jw.JudgeWorker(config, engine, spool, Judge(config, None), ["outbox:x"], "gate/1",
                            threading.Event())
    try:
        for n in range(jw.MAX_JUDGE_ATTEMPTS + 2):
            temp = spool.incoming / f"receive-{n}"
            temp.write_bytes(b"not DICOM, content %d" % n)
            assert intake.accept(temp, affected_sop_instance_uid="1.2.3", calling_ae_title="T",
                                 source_address="127.0.0.1") == SUCCESS
            assert worker.step()
            with engine.connect() as conn:
                row = conn.exec_driver_sql("SELECT status, reason_code, judge_attempts FROM verdicts").one()
            # judged on its merits (not DICOM: unreadable), once, as every content before it
            assert tuple(row) == ("judged", "unreadable", 1), (n, tuple(row))
    finally:
        worker.pipeline.close()
        engine.dispose()


def test_judge_worker_survives_a_verdict_the_database_refuses(tmp_path, monkeypatch):
    """An IntegrityError is not an outage: the clip gets an `error` verdict naming the
    refusal, and the next clip is judged (it used to be retried for ever)."""
    from sqlalchemy.exc import IntegrityError

    import angiogate.judge.worker as jw
    from angiogate.config import load_config
    from angiogate.judge.verdict import Judge
    from angiogate.store.db import open_database
    from angiogate.store.ledger import record_receipt
    from angiogate.store.spool import Spool

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"workers": {"poll_interval_s": 0.05}, "model": {"path": "none"}}))
    config, spool = load_config(site), Spool(tmp_path / "spool")
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    for uid in ("1.1", "1.2"):
        temp = spool.incoming / f"tmp{uid.replace('.', '')}.dcm"
        temp.write_bytes(b"not DICOM " + uid.encode())
        kept = spool.keep(temp, uid)
        record_receipt(engine, sop_instance_uid=uid, header=None, file_path=kept.relative_path,
                       file_size=kept.size, file_sha256=kept.sha256, calling_ae_title="T",
                       source_address="127.0.0.1")
    real, refused = jw.record_judgement, []

    def refuse_the_first(*args, **kwargs):
        if not refused:
            refused.append(args[1])
            raise IntegrityError("INSERT INTO forwards", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(jw, "record_judgement", refuse_the_first)
    stop = threading.Event()
    worker = jw.JudgeWorker(config, engine, spool, Judge(config, None), ["outbox:x"], "gate:1", stop)
    worker.start()
    try:
        _wait_for(lambda: worker.judged == 2, 20, "both clips to be judged")
    finally:
        stop.set()
        worker.join(15)
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = {r.sop_instance_uid: r for r in conn.execute(text("SELECT * FROM verdicts"))}
    refused_row = next(r for r in rows.values() if r.id == refused[0])
    assert refused_row.decision == "error" and refused_row.reason_code == "internal"
    assert "refused" in refused_row.reasons and refused_row.forward_status == "held"
    assert all(r.status == "judged" for r in rows.values())
    engine.dispose()


def test_forward_with_no_transfer_syntax_does_not_block_its_destination(gate_factory, storescp,
                                                                         phantoms, tiny_checkpoint):
    """Stopper 2: a held clip whose row names no SOP class or transfer syntax (as when its
    header was unreadable at intake) is released to a DICOM destination with another clip.
    Both UIDs come from the file meta the SCP wrote; both are sent in one batch."""
    from sqlalchemy import text

    phantom_dir, rows = phantoms
    clips = [phantom_dir / r["file"] for r in rows if r["label"] == "satisfactory"][:2]
    gate = gate_factory({"model": {"path": str(tiny_checkpoint), "threshold": 0.0},  # holds everything
                         "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1",
                                           "port": storescp.port}]}).start()
    _push(gate, clips)
    assert {r["forward_status"] for r in gate.wait_settled(2)} == {"held"}
    bare = _uid(clips[0])
    with gate.engine().begin() as conn:  # the row as an unreadable header leaves it
        conn.execute(text("UPDATE verdicts SET transfer_syntax_uid = NULL, sop_class_uid = NULL "
                          "WHERE sop_instance_uid = :u"), {"u": bare})
    released = subprocess.run([sys.executable, "-m", "angiogate", "release", *map(_uid, clips),
                               "--config", str(gate.config_path), "--wait", "60"],
                              cwd=gate.work_dir, capture_output=True, text=True, timeout=120)
    assert released.returncode == 0, released.stdout + released.stderr
    assert {_uid(p) for p in storescp.received_files()} == set(map(_uid, clips))
    [forward] = gate.query("SELECT * FROM forwards WHERE sop_instance_uid = :u", u=bare)
    assert (forward["status"], forward["attempts"], forward["transfer_syntax_sent"]) == (
        "sent", 1, _syntax(clips[0]))
    assert "ValueError" not in gate.log_text()


def test_forward_of_an_object_with_no_file_meta_gives_up_with_a_reason(tmp_path):
    """Stopper 2, when not even the file meta names a syntax: the forward fails once with
    a reason a PACS engineer can act on; it is not claimed again and again."""
    import angiogate.forward.worker as fw
    from angiogate.config import Destination, load_config
    from angiogate.forward.dicom_target import destination_key
    from angiogate.store.db import open_database
    from angiogate.store.ledger import claim_for_judging, record_judgement, record_receipt
    from angiogate.store.spool import Spool
    from test_faults import RefusingSCP

    peer = RefusingSCP(refuse=set())
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"workers": {"poll_interval_s": 0.05}, "model": {"path": "none"}}))
    config, spool = load_config(site), Spool(tmp_path / "spool")
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    temp = spool.incoming / "tmpraw.dcm"
    temp.write_bytes(b"not DICOM at all")
    kept = spool.keep(temp, "1.2.3.4")
    record_receipt(engine, sop_instance_uid="1.2.3.4", header=None, file_path=kept.relative_path,
                   file_size=kept.size, file_sha256=kept.sha256, calling_ae_title="T", source_address="127.0.0.1")
    destination = Destination(ae_title=peer.aet, host="127.0.0.1", port=peer.port)
    key = destination_key(destination)
    [row] = claim_for_judging(engine, "judge", 60)
    assert record_judgement(engine, row.id, "judge", decision="error", values={}, forward_to=[key])
    stop = threading.Event()
    worker = fw.ForwardWorker(key, config, engine, spool, "gate:1", stop, destination)
    worker.start()
    try:
        _wait_for(lambda: _forward_row(engine)["status"] == "failed", 10, "the forward to fail")
        time.sleep(0.5)  # a worker stuck on it would claim it again meanwhile
    finally:
        stop.set()
        worker.join(15)
        peer.stop()
    forward = _forward_row(engine)
    assert forward["attempts"] == 1
    assert "cannot be sent over DICOM" in forward["last_error"]
    engine.dispose()


def _forward_row(engine) -> dict:
    from sqlalchemy import text

    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM forwards")).one()._mapping)


def _pending_to_dead_port(gate_factory, phantoms, tiny_checkpoint, ae_title="STORESCP"):
    phantom_dir, rows = phantoms
    good = [phantom_dir / r["file"] for r in rows if r["label"] == "satisfactory"][:2]
    dead = free_port()
    gate = gate_factory(_settings(tiny_checkpoint, [{"ae_title": ae_title, "host": "127.0.0.1", "port": dead}],
                                  forwarding={"retry_base_s": 60, "retry_cap_s": 60})).start()
    _push(gate, good)
    _wait_for(lambda: len(gate.query("SELECT id FROM forwards WHERE status = 'pending' AND last_error IS NOT NULL"))
              == len(good), 60, "the forwards to the dead destination to be tried", gate)
    gate.stop()
    return gate, good


def _rewrite_destinations(gate, destinations) -> None:
    gate.settings["destinations"] = destinations
    gate.config_path.write_text(yaml.safe_dump(gate.settings))


def test_readdressed_destination_takes_its_pending_forwards_along(gate_factory, tmp_path, phantoms,
                                                                   tiny_checkpoint):
    """Stopper 3: the downstream moved (same AE title, new port) while forwards waited."""
    gate, good = _pending_to_dead_port(gate_factory, phantoms, tiny_checkpoint)
    moved_to = StoreSCP(tmp_path / "moved", aet="STORESCP").start()
    try:
        _rewrite_destinations(gate, [{"ae_title": "STORESCP", "host": "127.0.0.1", "port": moved_to.port}])
        gate.start()
        _wait_for(lambda: {_uid(p) for p in moved_to.received_files()} == {_uid(f) for f in good}, 60,
                  "the pending forwards to reach the re-addressed destination", gate)
        gate.wait_settled(len(good))
    finally:
        moved_to.stop()
    assert "re-addressed in the configuration" in gate.log_text()
    assert len(gate.query("SELECT id FROM events WHERE kind = 'forward_moved'")) == len(good)
    assert {r["destination"] for r in gate.query("SELECT destination FROM forwards")} == {
        f"STORESCP@127.0.0.1:{moved_to.port}"}


def test_removed_destination_fails_its_forwards_and_release_sends_them_on(gate_factory, tmp_path, phantoms,
                                                                          tiny_checkpoint):
    """Stopper 3: the downstream was removed and another configured. Its pending forwards
    show as failed with the reason, and `angiogate release` sends the clips to the new one."""
    gate, good = _pending_to_dead_port(gate_factory, phantoms, tiny_checkpoint, ae_title="OLDPACS")
    new = StoreSCP(tmp_path / "new", aet="NEWPACS").start()
    try:
        _rewrite_destinations(gate, [{"ae_title": "NEWPACS", "host": "127.0.0.1", "port": new.port}])
        gate.start()
        _wait_for(lambda: {v["forward_status"] for v in gate.verdicts()} == {"failed"}, 30,
                  "the stranded clips to show as failed", gate)
        assert "is no longer in the configuration" in gate.log_text()
        errors = {f["last_error"] for f in gate.query("SELECT last_error FROM forwards")}
        assert all("no longer in the configuration" in e for e in errors), errors
        uids = [_uid(f) for f in good]
        released = subprocess.run([sys.executable, "-m", "angiogate", "release", *uids,
                                   "--config", str(gate.config_path), "--wait", "60"],
                                  cwd=gate.work_dir, capture_output=True, text=True, timeout=120)
        assert released.returncode == 0, released.stdout + released.stderr
        assert {_uid(p) for p in new.received_files()} == set(uids)
    finally:
        new.stop()
    assert {v["forward_status"] for v in gate.verdicts()} == {"forwarded"}
