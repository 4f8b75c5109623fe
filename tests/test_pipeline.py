"""Judging in two stages (prepare in threads, classify in batches): same verdicts
as one clip at a time, one judgement per clip in order, each queued clip judged
once by the worker, one engine per batch across a model swap, `score` in input
order. Nothing here asserts a duration."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid
from sqlalchemy import text

from peers import wait_for as _wait_for

from angiogate.config import load_config
from angiogate.engines.torch_engine import TorchEngine
from angiogate.judge.pipeline import ClipPipeline, judge_files
from angiogate.judge.verdict import Judge

MODEL_DECISIONS = {"satisfactory", "unsatisfactory"}


# ---------------------------------------------------------------- helpers

class RecordingEngine:
    """A real engine under its own version name; records the size of every batch it is given."""

    def __init__(self, inner, version: str | None = None, before_predict=None):
        self.inner, self.info, self.name = inner, inner.info, inner.name
        self.version = version or inner.version
        self.batches: list[int] = []
        self.before_predict = before_predict

    def predict(self, clips):
        self.batches.append(len(clips))
        if self.before_predict is not None:
            self.before_predict()
        return self.inner.predict(clips)


def _write_clip(path: Path, *, frames=40, pixel_frames=None, description="Coronary LCA", seed=0) -> Path:
    """An 8-bit 96x96 XA object at 15 fps; `pixel_frames` < frames truncates its pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = XRayAngiographicImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.PatientID = "XA", description, "P1"
    ds.Rows = ds.Columns = 96
    ds.NumberOfFrames, ds.FrameTime = frames, 66.67
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    stored = frames if pixel_frames is None else pixel_frames
    ds.PixelData = np.random.default_rng(seed).integers(0, 255, (stored, 96, 96), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _model_clips(phantoms) -> list[Path]:
    """Phantom clips of every kind and both syntaxes that the default rules pass to the model."""
    phantom_dir, rows = phantoms
    judge = Judge(load_config(model={"path": "none"}), None)
    return [phantom_dir / r["file"] for r in rows
            if judge.judge(phantom_dir / r["file"]).decision == "satisfactory"]


@pytest.fixture(scope="module")
def torch_engine(tiny_checkpoint):
    return TorchEngine(tiny_checkpoint, device="cpu")


# ---------------------------------------------------------------- the two stages

def test_batched_classification_equals_one_at_a_time(phantoms, torch_engine):
    clips = _model_clips(phantoms)
    assert len(clips) >= 3
    probe = Judge(load_config(), torch_engine)
    scores = sorted(probe.judge(c).score for c in clips)
    # A threshold in the widest gap between scores: both decisions occur, and a
    # float difference between batched and single inference cannot flip one.
    gap = max(range(len(scores) - 1), key=lambda k: scores[k + 1] - scores[k])
    threshold = (scores[gap] + scores[gap + 1]) / 2
    engine = RecordingEngine(torch_engine)
    judge = Judge(load_config(model={"threshold": threshold}), engine)

    one_by_one = [judge.judge(c) for c in clips]
    assert engine.batches == [1] * len(clips)
    engine.batches.clear()
    batched = judge.classify([judge.prepare(c) for c in clips])
    assert engine.batches == [len(clips)]  # one model call for the whole batch

    assert {j.decision for j in one_by_one} == MODEL_DECISIONS
    for single, many in zip(one_by_one, batched):
        assert many.decision == single.decision and many.reason_code == single.reason_code
        assert many.score == pytest.approx(single.score, abs=1e-5)
        assert (many.threshold, many.model_version) == (single.threshold, single.model_version)
        assert many.frame_indices == single.frame_indices and many.failed_rules == single.failed_rules
        assert set(many.timings_ms) == set(single.timings_ms) >= {
            "decode", "preprocess", "inference", "inference_batch", "total"}
        assert many.timings_ms["inference"] == pytest.approx(many.timings_ms["inference_batch"] / len(clips),
                                                             abs=0.01)


def test_mixed_batch_gives_one_correct_judgement_each_in_order(tmp_path, phantoms, torch_engine):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    model_clips = _model_clips(phantoms)
    files = [
        _write_clip(tmp_path / "good1.dcm", seed=1),
        junk,
        _write_clip(tmp_path / "single.dcm", frames=1),
        _write_clip(tmp_path / "lv.dcm", description="LV gram"),
        model_clips[0],
        _write_clip(tmp_path / "truncated.dcm", pixel_frames=10),
        _write_clip(tmp_path / "good2.dcm", seed=2),
        model_clips[-1],
    ]
    expected = [("satisfactory", None), ("error", "unreadable"), ("not_applicable", "not_cine"),
                ("unsatisfactory", "series_description"), ("satisfactory", None), ("error", "undecodable"),
                ("satisfactory", None), ("satisfactory", None)]
    engine = RecordingEngine(torch_engine)
    judge = Judge(load_config(model={"threshold": 1.0}), engine)  # the model passes every clip it sees

    singles = [judge.judge(f) for f in files]
    engine.batches.clear()
    batched = judge.classify([judge.prepare(f) for f in files])
    assert engine.batches == [4]  # the four clips that reach the model, in one call
    assert [(j.decision, j.reason_code) for j in batched] == expected
    assert [(j.decision, j.reason_code) for j in singles] == expected
    for single, many in zip(singles, batched):
        assert (many.score is None) == (single.score is None)
        if single.score is not None:
            assert many.score == pytest.approx(single.score, abs=1e-5)
        assert many.reasons[0].split(":")[0] == single.reasons[0].split(":")[0]

    # The same files through the pipeline: several threads, batches, input order kept.
    judged = list(judge_files(judge, files, decode_threads=3, judge_batch=3))
    assert [j.tag for j in judged] == files
    assert [(j.judgement.decision, j.judgement.reason_code) for j in judged] == expected
    assert judged[1].header is None and judged[0].header.sop_instance_uid


def test_a_batch_never_waits_to_fill_and_holds_one_engine(tmp_path, torch_engine):
    engine_a, engine_b = RecordingEngine(torch_engine, "A"), RecordingEngine(torch_engine, "B")
    judge = Judge(load_config(), engine_a)
    pipeline = ClipPipeline(judge, decode_threads=2, judge_batch=8)
    try:
        lone = _write_clip(tmp_path / "lone.dcm")
        pipeline.submit("lone", lone)
        batch = pipeline.next_batch()
        assert [tag for tag, _ in batch] == ["lone"]  # not held back for seven more
        assert [j.judgement.model_version for j in pipeline.classify(batch)] == ["A"]

        pipeline.submit("first", _write_clip(tmp_path / "first.dcm"))
        _wait_for(lambda: pipeline.prepared() == 1, 60, "the first clip to be prepared")
        judge.engine = engine_b  # a model swap between two clips
        pipeline.submit("second", _write_clip(tmp_path / "second.dcm"))
        _wait_for(lambda: pipeline.prepared() == 2, 60, "the second clip to be prepared")
        first, second = pipeline.next_batch(), pipeline.next_batch()
        assert [tag for tag, _ in first] == ["first"] and [tag for tag, _ in second] == ["second"]
        assert [j.judgement.model_version for j in pipeline.classify(first)] == ["A"]
        assert [j.judgement.model_version for j in pipeline.classify(second)] == ["B"]
        assert engine_a.batches == [1, 1] and engine_b.batches == [1]
        assert pipeline.next_batch() == [] and len(pipeline) == 0
    finally:
        pipeline.close()


def test_room_bounds_the_clips_held(tmp_path):
    judge = Judge(load_config(model={"path": "none"}), None)
    pipeline = ClipPipeline(judge, decode_threads=2, judge_batch=3)
    try:
        clip = _write_clip(tmp_path / "c.dcm")
        assert pipeline.room() == 4  # one clip per thread to work on and one to go on with
        for n in range(4):
            pipeline.submit(n, clip)
        _wait_for(lambda: pipeline.prepared() == 4, 60, "four clips to be prepared")
        assert pipeline.room() == 3  # capacity 2 x 2 + 3 = 7 clips held
        for n in range(4, 7):
            pipeline.submit(n, clip)
        _wait_for(lambda: pipeline.prepared() == 7, 60, "seven clips to be prepared")
        assert pipeline.room() == 0
        assert [tag for tag, _ in pipeline.next_batch()] == [0, 1, 2]
        assert pipeline.room() == 3
    finally:
        pipeline.close()


# ---------------------------------------------------------------- the judge worker

@pytest.fixture
def queue_setup(tmp_path, tiny_checkpoint):
    """A SQLite verdict log, a spool, and a config with several decode threads and batches of 4."""
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({
        "workers": {"poll_interval_s": 0.05, "lease_s": 60, "decode_threads": 3, "judge_batch": 4},
        "model": {"path": str(tiny_checkpoint), "threshold": 1.0}, "outbox_dir": "outbox"}))
    config = load_config(site)
    db = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    stop = threading.Event()
    yield config, db, spool, stop
    stop.set()
    db.dispose()


def _queue(db, spool, files: list[Path]) -> list[str]:
    """Receive copies of `files` as new objects (rows `received`), in order; their UIDs."""
    from angiogate.store.ledger import record_receipt

    uids = []
    for f in files:
        uid = generate_uid()
        temp = spool.incoming / f"tmp{uid}.dcm"
        shutil.copyfile(f, temp)
        kept = spool.keep(temp, uid)
        record_receipt(db, sop_instance_uid=uid, header=None, file_path=kept.relative_path, file_size=kept.size,
                       file_sha256=kept.sha256, calling_ae_title="T", source_address="127.0.0.1")
        uids.append(uid)
    return uids


def _rows(db) -> list[dict]:
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM verdicts ORDER BY id"))]


def _judged_events(db) -> dict[str, int]:
    with db.connect() as conn:
        return dict(conn.execute(text("SELECT sop_instance_uid, COUNT(*) FROM events WHERE kind = 'judged' "
                                      "GROUP BY sop_instance_uid")).all())


def _timings(row) -> dict:
    value = row["timings_ms"]
    return json.loads(value) if isinstance(value, str) else value


def _worker(config, db, spool, judge, stop):
    from angiogate.judge.worker import JudgeWorker

    return JudgeWorker(config, db, spool, judge, ["outbox:x"], "gate:1", stop)


def _hold_until_prepared(worker_box: list, at_least: int, timeout: float = 60):
    """A before_predict hook: the first model call waits (at most `timeout`) until `at_least`
    clips are prepared behind it, so the next batch is a full one whatever the machine's speed."""
    state = {"first": True}

    def hook():
        if state["first"]:
            state["first"] = False
            pipeline = worker_box[0].pipeline
            deadline = time.monotonic() + timeout
            while pipeline.prepared() < at_least and time.monotonic() < deadline:
                time.sleep(0.02)
    return hook


def test_worker_judges_each_queued_clip_exactly_once_in_batches(queue_setup, phantoms, torch_engine, tmp_path):
    config, db, spool, stop = queue_setup
    model_clips = _model_clips(phantoms)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom" * 20)
    files = [model_clips[n % len(model_clips)] for n in range(14)]
    files += [junk, _write_clip(tmp_path / "lv.dcm", description="LV gram")]
    uids = _queue(db, spool, files)
    box: list = []
    engine = RecordingEngine(torch_engine, before_predict=_hold_until_prepared(box, 4))
    worker = _worker(config, db, spool, Judge(config, engine), stop)
    box.append(worker)
    worker.start()
    _wait_for(lambda: all(r["status"] == "judged" for r in _rows(db)), 300, "every clip to be judged")
    stop.set()
    worker.join(30)

    rows = _rows(db)
    assert [r["sop_instance_uid"] for r in rows] == uids
    assert all(r["judge_attempts"] == 1 and r["lease_owner"] is None for r in rows)
    assert _judged_events(db) == {uid: 1 for uid in uids}  # each recorded exactly once
    decisions = [r["decision"] for r in rows]
    assert decisions[14:] == ["error", "unsatisfactory"] and decisions.count("satisfactory") == 14
    assert sum(engine.batches) == 14 and max(engine.batches) == 4  # batches, never beyond judge_batch
    assert worker.judged == len(files)
    batched = [_timings(r) for r in rows if r["score"] is not None]
    assert any(t["inference_batch"] > t["inference"] for t in batched)


def test_a_suspect_clip_is_judged_alone(queue_setup, phantoms, torch_engine):
    """A clip claimed before without a verdict (the gate died holding it) is judged with
    nothing else in flight: if it is the one that kills the process, no neighbour is blamed."""
    config, db, spool, stop = queue_setup
    clip = _model_clips(phantoms)[0]
    uids = _queue(db, spool, [clip] * 6)
    with db.begin() as conn:
        conn.execute(text("UPDATE verdicts SET judge_attempts = 1 WHERE sop_instance_uid = :u"), {"u": uids[2]})
    engine = RecordingEngine(torch_engine)
    worker = _worker(config, db, spool, Judge(config, engine), stop)
    deadline = time.monotonic() + 300
    try:
        while any(r["status"] != "judged" for r in _rows(db)) and time.monotonic() < deadline:
            worker.step()
    finally:
        worker.pipeline.close()
    rows = {r["sop_instance_uid"]: r for r in _rows(db)}
    suspect = rows[uids[2]]
    assert suspect["judge_attempts"] == 2 and suspect["decision"] == "satisfactory"
    assert _timings(suspect)["inference"] == _timings(suspect)["inference_batch"]  # a batch of one
    assert engine.batches.count(1) >= 1 and sum(engine.batches) == 6
    assert _judged_events(db) == {uid: 1 for uid in uids}


def test_a_model_swap_mid_run_never_splits_a_batch(queue_setup, phantoms, torch_engine):
    config, db, spool, stop = queue_setup
    clips = _model_clips(phantoms)
    first = _queue(db, spool, [clips[n % len(clips)] for n in range(12)])
    engine_a, engine_b = RecordingEngine(torch_engine, "model-A"), RecordingEngine(torch_engine, "model-B")
    judge = Judge(config, engine_a)
    worker = _worker(config, db, spool, judge, stop)
    later: list[str] = []

    def swap_like_the_model_watcher():
        _wait_for(lambda: sum(r["status"] == "judged" for r in _rows(db)) >= 3, 300, "three verdicts")
        judge.engine = engine_b  # one reference swap, from another thread, at any moment
        later.extend(_queue(db, spool, [clips[n % len(clips)] for n in range(6)]))

    swapper = threading.Thread(target=swap_like_the_model_watcher)
    worker.start()
    swapper.start()
    swapper.join(300)
    _wait_for(lambda: len(_rows(db)) == 18 and all(r["status"] == "judged" for r in _rows(db)), 300,
              "every clip to be judged")
    stop.set()
    worker.join(30)

    rows = _rows(db)
    versions = [r["model_version"] for r in rows]
    assert set(versions) == {"model-A", "model-B"}
    # In queue order the old model's verdicts all come before the new one's ...
    assert versions == sorted(versions)
    # ... every clip received after the swap is judged by the new model ...
    assert {r["model_version"] for r in rows if r["sop_instance_uid"] in later} == {"model-B"}
    # ... and each model call judged exactly the clips that name its model.
    assert sum(engine_a.batches) == versions.count("model-A")
    assert sum(engine_b.batches) == versions.count("model-B")
    for row in rows:  # a clip's share of its batch times the batch size is the batch's time
        timings = _timings(row)
        size = round(timings["inference_batch"] / timings["inference"]) if timings["inference"] else 1
        assert 1 <= size <= config.workers.judge_batch
    assert _judged_events(db) == {uid: 1 for uid in first + later}


# ---------------------------------------------------------------- angiogate score

def _score(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "angiogate", "score", "--json", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_score_prints_in_input_order_with_several_threads(phantoms, tiny_checkpoint, tmp_path):
    phantom_dir, rows = phantoms
    folder = tmp_path / "clips"
    for r in rows[:6]:
        target = folder / r["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(phantom_dir / r["file"], target)
    (folder / "notes.txt").write_text("not DICOM")  # one object that fails does not stop the rest
    walk_order = sorted(p for p in folder.rglob("*") if p.is_file())
    model = {"path": str(tiny_checkpoint), "engine": "torch"}  # the order is the point, not the engine
    parallel = tmp_path / "parallel.yaml"
    parallel.write_text(yaml.safe_dump({"model": model, "workers": {"decode_threads": 3, "judge_batch": 4}}))
    serial = tmp_path / "serial.yaml"
    serial.write_text(yaml.safe_dump({"model": model, "workers": {"decode_threads": 1, "judge_batch": 1}}))

    out = _score("--config", parallel, folder)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in walk_order]
    notes = next(line for line in lines if line["file"].endswith("notes.txt"))
    assert len(lines) == 7 and (notes["decision"], notes["reason_code"]) == ("error", "unreadable")
    assert any(line["score"] is not None for line in lines)

    shuffled = list(walk_order)
    random.Random(5).shuffle(shuffled)
    out = _score("--config", serial, *shuffled)
    assert out.returncode == 0, out.stderr
    one_by_one = {line["file"]: line for line in map(json.loads, out.stdout.splitlines())}
    assert list(one_by_one) == [str(p) for p in shuffled]
    for line in lines:
        alone = one_by_one[line["file"]]
        assert set(line) == set(alone)
        assert (line["decision"], line["reason_code"], line["sop_instance_uid"]) == (
            alone["decision"], alone["reason_code"], alone["sop_instance_uid"])
        if line["score"] is not None:
            assert line["score"] == pytest.approx(alone["score"], abs=1e-5)


def test_an_idle_worker_wakes_when_intake_records_an_object(tmp_path):
    """The judge polls for work every `workers.poll_interval_s` (0.5 s by default: half of the
    verdict latency at 1 clip/s); the gate's own intake wakes it when it records an object.
    Here the poll is an hour: only the wake-up can get the clip judged within the wait."""
    from angiogate.judge.worker import JudgeWorker
    from angiogate.receive.intake import SUCCESS, Intake
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    config = load_config(None, workers={"poll_interval_s": 3600}, model={"path": "none"},
                         outbox_dir=str(tmp_path / "outbox"))
    db = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    stop, arrived = threading.Event(), threading.Event()
    intake = Intake(db, spool, on_recorded=arrived.set)
    worker = JudgeWorker(config, db, spool, Judge(config, None), ["outbox:x"], "gate:1", stop, arrived)
    steps = []
    step = worker.step
    worker.step = lambda: steps.append(step()) or steps[-1]
    worker.start()
    try:
        _wait_for(lambda: steps == [False], 30, "the worker to find nothing and idle")
        temp = spool.incoming / "tmpwake.dcm"
        temp.write_bytes(b"not DICOM: judged as an error at once")
        assert intake.accept(temp, affected_sop_instance_uid="1.2.3", calling_ae_title="T",
                             source_address="127.0.0.1") == SUCCESS
        _wait_for(lambda: [r["status"] for r in _rows(db)] == ["judged"], 60, "the clip to be judged")
    finally:
        stop.set()
        arrived.set()  # as Gate.stop does
        worker.join(30)
        db.dispose()
    assert not worker.is_alive()
