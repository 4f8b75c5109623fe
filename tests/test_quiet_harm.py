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

from peers import free_port, wait_for as _wait_for


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
        # Several rounds of failed associations (each round counts one failure per object).
        _wait_for(lambda: min(f["failures"] for f in _rows(engine, "SELECT failures FROM forwards")) >= 4,
                  60, "several rounds of failed associations")
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


# ---------------------------------------------------------------- item 6: shared blame does not accumulate

def _judge_all(config, engine, spool, owner="gate:next", judge=None):
    """Judge every queued clip with a JudgeWorker stepped in this thread (model: none)."""
    import angiogate.judge.worker as jw
    from angiogate.judge.verdict import Judge

    worker = jw.JudgeWorker(config, engine, spool, judge or Judge(config, None), ["outbox:x"], owner,
                            threading.Event())
    deadline = time.monotonic() + 120
    try:
        while (any(r["status"] != "judged" for r in _rows(engine, "SELECT status FROM verdicts"))
               and time.monotonic() < deadline):
            worker.step()
    finally:
        worker.pipeline.close()
    return {r["sop_instance_uid"]: r for r in _rows(engine, "SELECT * FROM verdicts")}


def test_clips_in_flight_during_unclean_restarts_are_not_held_as_crashing_the_judge(tmp_path, phantoms):
    """Each of MAX_JUDGE_ATTEMPTS + 1 runs dies (SIGKILL, power cut) holding the same three
    clips; at each start clear_leases frees them. None of them is to blame alone, so each
    is then judged on its merits, not recorded as judge_crashed."""
    import angiogate.judge.worker as jw
    from angiogate.store.ledger import claim_for_judging, clear_leases

    phantom_dir, rows = phantoms
    config, engine, spool = _ledger(tmp_path, {"workers": {"poll_interval_s": 0.05}})
    uids = [_received(engine, spool, phantom_dir / r["file"]) for r in rows[:3]]
    for run in range(jw.MAX_JUDGE_ATTEMPTS + 1):
        assert len(claim_for_judging(engine, f"gate:{run}", 60, limit=3)) == 3  # ...and the gate dies
        clear_leases(engine)                                                    # the next start
    verdicts = _judge_all(config, engine, spool)
    assert [verdicts[u]["reason_code"] for u in uids].count("judge_crashed") == 0, verdicts
    assert all(verdicts[u]["status"] == "judged" and verdicts[u]["judge_attempts"] == 2 for u in uids)
    engine.dispose()


def test_a_clip_that_kills_the_judge_alone_still_ends_as_judge_crashed(tmp_path, phantoms):
    """The crash-loop guard still holds: a clip whose run died holding it with two others
    is a suspect (judged alone); each run that then dies holding it alone counts against
    it, and after MAX_JUDGE_ATTEMPTS it is recorded judge_crashed, while the two others,
    which never were to blame alone, are judged."""
    import angiogate.judge.worker as jw
    from angiogate.store.ledger import claim_for_judging, clear_leases

    phantom_dir, rows = phantoms
    config, engine, spool = _ledger(tmp_path, {"workers": {"poll_interval_s": 0.05}})
    uids = [_received(engine, spool, phantom_dir / r["file"]) for r in rows[:3]]
    claim_for_judging(engine, "gate:0", 60, limit=3)
    clear_leases(engine)  # died holding three: none charged, each a suspect
    killer = _rows(engine, "SELECT * FROM verdicts WHERE sop_instance_uid = :u", u=uids[0])[0]
    assert killer["judge_attempts"] == 1
    for run in range(1, jw.MAX_JUDGE_ATTEMPTS):
        # judged alone as a suspect, and the gate dies again
        with engine.begin() as conn:
            from sqlalchemy import text
            conn.execute(text("UPDATE verdicts SET lease_owner = :o, lease_until = '2999-01-01 00:00:00', "
                              "judge_attempts = judge_attempts + 1 WHERE id = :i"), {"o": f"gate:{run}",
                                                                                    "i": killer["id"]})
        clear_leases(engine)
    verdicts = _judge_all(config, engine, spool)
    assert (verdicts[uids[0]]["decision"], verdicts[uids[0]]["reason_code"]) == ("error", "judge_crashed")
    assert all(verdicts[u]["reason_code"] != "judge_crashed" for u in uids[1:]), verdicts


def test_a_suspect_is_the_only_clip_leased_while_it_is_judged(tmp_path, phantoms):
    """Two suspects claimed together: while the first is judged alone, the second's lease is
    given back, so a death then blames the first alone (clear_leases charges a lone lease)."""
    import angiogate.judge.worker as jw
    from angiogate.judge.verdict import Judge
    from sqlalchemy import text

    phantom_dir, rows = phantoms
    config, engine, spool = _ledger(tmp_path, {"workers": {"poll_interval_s": 0.05}})
    for r in rows[:3]:
        _received(engine, spool, phantom_dir / r["file"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE verdicts SET judge_attempts = 1"))
    started, release = threading.Event(), threading.Event()
    real_prepare = Judge.prepare

    class SlowJudge(Judge):
        def prepare(self, *args, **kwargs):
            started.set()
            release.wait(10)
            return real_prepare(self, *args, **kwargs)

    worker = jw.JudgeWorker(config, engine, spool, SlowJudge(config, None), ["outbox:x"], "gate:1",
                            threading.Event())
    stepping = threading.Thread(target=worker.step, daemon=True)
    stepping.start()
    try:
        assert started.wait(30), "no suspect was started"
        leased = _rows(engine, "SELECT sop_instance_uid, judge_attempts FROM verdicts WHERE lease_owner IS NOT NULL")
        assert len(leased) == 1 and leased[0]["judge_attempts"] == 2, leased
        unleased = _rows(engine, "SELECT judge_attempts FROM verdicts WHERE lease_owner IS NULL")
        assert [r["judge_attempts"] for r in unleased] == [1, 1]  # their claims given back
    finally:
        release.set()
        stepping.join(60)
        worker.pipeline.close()
    engine.dispose()


# ---------------------------------------------------------------- item 7: truncation told per read, not by warnings

def _truncated_copies(phantoms, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A good JPEG Lossless clip, the same cut inside its pixel data (encapsulated: the
    parser stops short of the end), and an Explicit VR LE clip cut (a value runs past it)."""
    phantom_dir, rows = phantoms
    by_syntax = {}
    for r in rows:
        path = phantom_dir / r["file"]
        by_syntax.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID), path)
    good = by_syntax["1.2.840.10008.1.2.4.70"]
    cut = []
    for source, name in ((good, "cut-jpeg.dcm"), (by_syntax["1.2.840.10008.1.2.1"], "cut-native.dcm")):
        data = source.read_bytes()
        (tmp_path / name).write_bytes(data[: int(len(data) * 0.7)])
        cut.append(tmp_path / name)
    return good, cut[0], cut[1]


def test_truncation_is_told_per_read_in_concurrent_threads(phantoms, tmp_path):
    """Threads read a good and a truncated object at the same time, as the judge's
    decode threads do: every read of the good one succeeds and every read of the cut
    ones says `truncated object` (warnings.catch_warnings, process-global, let one
    thread's warning mark another thread's good object truncated)."""
    from angiogate.dicom.header import HeaderError, read_header

    good, cut_jpeg, cut_native = _truncated_copies(phantoms, tmp_path)
    wrong: list[str] = []
    lock = threading.Lock()

    def read(path: Path, truncated: bool, times: int = 60) -> None:
        for _ in range(times):
            try:
                read_header(path)
                ok = not truncated
            except HeaderError as exc:
                ok = truncated and "truncated object" in str(exc)
                if not ok:
                    with lock:
                        wrong.append(f"{path.name}: {exc}")
                continue
            if not ok:
                with lock:
                    wrong.append(f"{path.name}: read as good")

    threads = [threading.Thread(target=read, args=(p, t)) for p, t in
               ((good, False), (cut_jpeg, True), (good, False), (cut_jpeg, True), (good, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not wrong, wrong[:5]
    # and alone: cut in encapsulated pixel data (short of the end) or in native (past it)
    for path in (cut_jpeg, cut_native):
        with pytest.raises(HeaderError, match="truncated object"):
            read_header(path)
    assert read_header(good).frames > 1


# ---------------------------------------------------------------- item 9: objects without pixel data

DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
KOS = "1.2.840.10008.5.1.4.1.1.88.59"      # Key Object Selection Document


def _non_image(path: Path, sop_class_uid: str, modality: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "NOPIX-1", modality, 900, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return path


def _store(port: int, files: list[Path]) -> list[int]:
    """C-STORE each file as it is on disk (its own SOP class and syntax); the statuses."""
    from pynetdicom import AE

    ae = AE(ae_title="NOPIXSCU")
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="ANGIOGATE")
    assert assoc.is_established
    try:
        return [int(s.Status) if s and "Status" in s else -1 for s in map(assoc.send_c_store, files)]
    finally:
        assoc.release()


def test_objects_without_pixel_data_follow_the_non_cine_policy(gate_factory, tmp_path):
    """A dose SR and a key object selection (no pixel data, not a cine SOP class) are
    `not_applicable` and follow policies.non_cine (forward, to the outbox here); an XA
    object without pixel data is broken: `error`, held by policies.on_error."""
    from test_bad_input import _xa

    dose = _non_image(tmp_path / "dose.dcm", DOSE_SR, "SR")
    kos = _non_image(tmp_path / "kos.dcm", KOS, "KO")
    broken = _xa(tmp_path / "xa-nopixels.dcm", pixel=False)
    gate = gate_factory({"policies": {"non_cine": "forward", "on_error": "hold"},
                         "model": {"path": "none"}}).start()
    assert _store(gate.port, [dose, kos, broken]) == [0, 0, 0]
    verdicts = {v["sop_class_uid"]: v for v in gate.wait_settled(3)}
    for sop_class in (DOSE_SR, KOS):
        v = verdicts[sop_class]
        assert (v["decision"], v["reason_code"], v["forward_status"]) == (
            "not_applicable", "not_cine", "forwarded"), v
        assert "no pixel data" in v["reasons"]
    v = verdicts["1.2.840.10008.5.1.4.1.1.12.1"]
    assert (v["decision"], v["forward_status"]) == ("error", "held") and "no pixel data" in v["reasons"], v
    assert len(list((gate.work_dir / "var" / "outbox").glob("*.dcm"))) == 2


# ---------------------------------------------------------------- item 8: header values that do not fit their column

def test_overlong_and_nul_header_values_are_recorded_on_postgresql(gate_factory, postgres_url, tmp_path):
    """On PostgreSQL, a 300-character PatientID, AccessionNumber and SeriesDescription, one
    holding NUL, are cut to their columns (lengths from the schema) and NUL is dropped:
    the object is acknowledged, recorded and judged, not refused with 0xA700 for ever."""
    from angiogate.store.schema import Verdict
    from test_bad_input import _send_raw, _xa

    path = _xa(tmp_path / "long.dcm")
    ds = pydicom.dcmread(path)
    ds.PatientID = "P" * 150 + "\x00" + "Q" * 149
    ds.AccessionNumber = "A" * 300
    ds.SeriesDescription = "LCA\x00 " + "D" * 295
    ds.save_as(path)
    gate = gate_factory({"database_url": postgres_url, "model": {"path": "none"}}).start()
    assert _send_raw(gate.port, [path]) == [0]
    [v] = gate.wait_settled(1)
    width = {name: Verdict.__table__.c[name].type.length
             for name in ("patient_id", "accession_number", "series_description")}
    assert v["patient_id"] == ("P" * 150 + "Q" * 149)[:width["patient_id"]]
    assert v["accession_number"] == "A" * width["accession_number"]
    assert v["series_description"] == ("LCA " + "D" * 295)[:width["series_description"]]
    assert v["status"] == "judged" and "\x00" not in (v["reasons"] or "")
    assert "Out of Resources" not in gate.log_text()


# ---------------------------------------------------------------- item 13: file modes, and the log

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


FORGED = "00:00:00 INFO angiogate: released all"  # the UID column holds 64 characters
HOSTILE_UID = "1.2.3.4\n" + FORGED + "\x1b[31m"
DESCRIPTION = "Ventriculogram SECRETDESC9731"


def _hostile_clip_through_a_gate(gate_factory, tmp_path):
    """A gate on its defaults (umask 0027, SQLite, outbox; shadow mode so the clip is
    forwarded whatever its verdict) receives an XA clip whose dataset SOP Instance UID
    holds a newline, a forged log line and an ANSI escape, and whose SeriesDescription
    fails an exclude rule. The gate is stopped once the clip is forwarded."""
    from test_bad_input import _send_raw, _xa

    path = _xa(tmp_path / "hostile.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = HOSTILE_UID  # the request carries the file meta's valid UID
    ds.SeriesDescription = DESCRIPTION
    ds.save_as(path)
    gate = gate_factory({"model": {"path": "none"}, "policies": {"mode": "shadow"}}).start()
    assert _send_raw(gate.port, [path]) == [0]
    [v] = gate.wait_settled(1)
    assert v["sop_instance_uid"] == HOSTILE_UID and v["forward_status"] == "forwarded", v
    gate.stop()
    return gate, v


def test_the_gate_makes_files_0640_and_folders_0750(gate_factory, tmp_path):
    """The SQLite file, the spool object and the outbox copy are 0640; the spool's and the
    outbox's folders 0750 (SQLite made 0644, outbox copies 0644, spool folders 0755)."""
    gate, v = _hostile_clip_through_a_gate(gate_factory, tmp_path)
    database = gate.work_dir / "var" / "angiogate.sqlite3"
    spooled = gate.spool_dir / v["file_path"]
    [copy] = (gate.work_dir / "var" / "outbox").glob("*.dcm")
    modes = {p.name: oct(_mode(p)) for p in (database, spooled, copy)}
    assert modes == {database.name: "0o640", spooled.name: "0o640", copy.name: "0o640"}, modes
    folders = [gate.spool_dir, gate.spool_dir / "incoming", gate.spool_dir / "objects", spooled.parent,
               copy.parent]
    assert {str(f): oct(_mode(f)) for f in folders} == {str(f): oct(0o750) for f in folders}


def test_a_hostile_uid_and_the_series_description_never_reach_the_log(gate_factory, tmp_path):
    """The UID with a newline, a forged line and an ANSI escape is logged made printable,
    never raw; the SeriesDescription (a dataset value, quoted by the failed rule's reason)
    never appears in the log at all, while the verdict log keeps it and the reason."""
    gate, v = _hostile_clip_through_a_gate(gate_factory, tmp_path)
    assert v["series_description"] == DESCRIPTION and DESCRIPTION in v["reasons"]
    log = gate.log_text()
    assert "\x1b" not in log and "\n" + FORGED not in log and HOSTILE_UID not in log
    assert "SECRETDESC" not in log
    assert "judged 1.2.3.4?" in log  # logged, made printable
