"""The review web app in process: accounts, sessions, CSRF, health, metrics, pages, CLI.

The app runs over a real SQLite verdict log (migrated by Alembic) and a real
spool folder, driven through Starlette's TestClient. Verdict rows are written
as the gate writes them (ledger.record_receipt, claim, record_judgement).
The gate as a whole, a browser and the downstream are in test_web_browser.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import warnings
from datetime import datetime

import pytest
import yaml
from sqlalchemy import select, text
from sqlalchemy.orm import Session
with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what its TestClient runs on here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from angiogate.children.process import free_port
from angiogate.config import load_config
from angiogate.dicom.header import read_header
from angiogate.store.spool import Spool
from angiogate.store.db import open_database
from angiogate.store.ledger import claim_for_judging, record_judgement, record_receipt
from angiogate.store.review import add_user
from angiogate.store.schema import Event, Forward, Label, User, Verdict
from angiogate.web import auth, queries
from angiogate.web.app import create_app
from angiogate.web.health import GateLink

PASSWORD = "correct horse battery"


class Alive:
    """A real worker thread for readiness: alive until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stop.wait, name="judge", daemon=True)
        self.thread.start()

    def status(self) -> dict[str, bool]:
        return {"judge": self.thread.is_alive()}


def site(tmp_path, **web):
    data = {"spool_dir": "var/spool", "database_url": "sqlite:///var/log.sqlite3",
            "web": {"page_size": 5} | web, "model": {"path": "none"}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def judged(engine, spool_root, phantom_file, decision, *, score=None, threshold=0.5, forward_to=()):
    """Receive a phantom file into the log as the intake does, then judge it as the worker does."""
    header = read_header(phantom_file)
    kept = spool_root / "objects" / phantom_file.name
    kept.write_bytes(phantom_file.read_bytes())
    import hashlib

    receipt = record_receipt(engine, sop_instance_uid=header.sop_instance_uid, header=header,
                             file_path=f"objects/{phantom_file.name}", file_size=kept.stat().st_size,
                             file_sha256=hashlib.sha256(kept.read_bytes()).hexdigest(),
                             calling_ae_title="STORESCU", source_address="127.0.0.1")
    claimed = [r for r in claim_for_judging(engine, "test", 60, limit=50) if r.id == receipt.verdict_id]
    assert claimed
    record_judgement(engine, receipt.verdict_id, "test", decision=decision,
                     values={"score": score, "threshold": threshold if score is not None else None,
                             "model_version": "m1" if score is not None else "none (rules only)",
                             "reason_code": None if decision == "satisfactory" else "no_contrast",
                             "reasons": "test", "rule_results": {"modality": {"passed": True, "detail": "XA"}},
                             "timings_ms": {"decode": 1.0, "total": 2.0}},
                     forward_to=list(forward_to))
    return receipt.verdict_id, header


@pytest.fixture
def review(tmp_path, phantoms, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(site(tmp_path))
    if getattr(request, "param", "sqlite") == "postgresql":
        cfg = cfg.model_copy(update={"database_url": request.getfixturevalue("postgres_url")})
    engine = open_database(cfg.database_url_with_password())
    spool = Spool(cfg.spool_dir)
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows if r["file"].endswith(".dcm")][:7]
    ids = []
    for k, path in enumerate(files):
        decision = "unsatisfactory" if k % 2 else "satisfactory"
        ids.append(judged(engine, spool.root, path, decision, score=0.2 + 0.1 * k,
                          forward_to=() if decision == "unsatisfactory" else ("outbox:x",))[0])
    add_user(engine, "alice", auth.hash_password(PASSWORD))
    worker = Alive()
    app = create_app(cfg, engine, GateLink(workers=worker.status, spool_dir=spool.root, destinations=["outbox:x"]))
    yield {"cfg": cfg, "engine": engine, "spool": spool, "app": app, "ids": ids, "worker": worker,
           "files": files}
    worker.stop.set()
    engine.dispose()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def logged_in(app, name="alice", password=PASSWORD) -> tuple[TestClient, str]:
    client = TestClient(app)
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"name": name, "password": password, "csrf_token": token,
                                         "next": "/verdicts"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    page = client.get("/verdicts")
    return client, csrf_of(page.text)


def labels(engine) -> list[Label]:
    with Session(engine) as session:
        rows = list(session.scalars(select(Label)))
        session.expunge_all()
        return rows


# ----------------------------------------------------------------- accounts

def test_user_add_stores_an_argon2_hash_never_the_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = site(tmp_path)
    out = subprocess.run([sys.executable, "-m", "angiogate", "user", "add", "bob", "--password-stdin",
                          "--config", str(config)], input=PASSWORD + "\n", capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = load_config(config)
    engine = open_database(cfg.database_url_with_password())
    with engine.connect() as conn:
        row = conn.execute(text("SELECT name, password_hash FROM users")).one()
        dump = "\n".join(str(r) for r in conn.execute(text("SELECT * FROM users")))
        dump += "\n".join(str(r) for r in conn.execute(text("SELECT * FROM events")))
    assert row.name == "bob" and row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in dump and PASSWORD not in (tmp_path / "var" / "log.sqlite3").read_bytes().decode("latin-1")
    assert auth.verify_password(row.password_hash, PASSWORD)
    assert not auth.verify_password(row.password_hash, PASSWORD + "x")
    # A second add of the same name is refused; a short password too.
    again = subprocess.run([sys.executable, "-m", "angiogate", "user", "add", "bob", "--password-stdin",
                            "--config", str(config)], input=PASSWORD + "\n", capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr
    short = subprocess.run([sys.executable, "-m", "angiogate", "user", "add", "carol", "--password-stdin",
                            "--config", str(config)], input="short\n", capture_output=True, text=True, timeout=120)
    assert short.returncode == 2 and "at least" in short.stderr
    engine.dispose()


def test_login_wrong_password_and_unknown_user_are_refused(review):
    client = TestClient(review["app"])
    token = csrf_of(client.get("/login").text)
    for name, password in (("alice", "wrong password"), ("mallory", PASSWORD)):
        answer = client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                             follow_redirects=False)
        assert answer.status_code == 401 and "Wrong name or password" in answer.text
    assert client.get("/verdicts", follow_redirects=False).status_code == 303


def test_repeated_failed_logins_from_one_address_are_throttled(review):
    client = TestClient(review["app"], client=("10.0.0.9", 40000))
    token = csrf_of(client.get("/login").text)
    for _ in range(5):
        assert client.post("/login", data={"name": "alice", "password": "guess", "csrf_token": token}).status_code == 401
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 429 and "Too many failed logins" in answer.text
    # Another address is not blocked by this one's guesses.
    other, _ = logged_in(review["app"])
    assert other.get("/verdicts").status_code == 200


def test_login_form_needs_its_csrf_token(review):
    client = TestClient(review["app"])
    client.get("/login")
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": "forged"},
                         follow_redirects=False)
    assert answer.status_code == 403
    assert client.get("/verdicts", follow_redirects=False).headers["location"].startswith("/login")


# ------------------------------------------------------- no anonymous writes

def test_anonymous_reads_go_to_login_and_anonymous_writes_are_refused(review):
    client = TestClient(review["app"])
    clip = review["ids"][1]
    for path in ("/verdicts", f"/clips/{clip}", "/agreement"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
    assert client.get(f"/clips/{clip}/preview.gif").status_code == 401
    token = csrf_of(client.get("/login").text)  # even with the anonymous session's own token
    for path, data in ((f"/clips/{clip}/label", {"label": "satisfactory"}), (f"/clips/{clip}/release", {}),
                       ("/verdicts/bulk", {"action": "release", "ids": [str(clip)]})):
        answer = client.post(path, data=data | {"csrf_token": token}, follow_redirects=False)
        assert answer.status_code == 401, path
    assert labels(review["engine"]) == []
    with Session(review["engine"]) as session:
        assert session.get(Verdict, clip).released_at is None


def test_a_post_without_the_sessions_csrf_token_is_refused(review):
    client, token = logged_in(review["app"])
    clip = review["ids"][1]
    for data in ({}, {"csrf_token": "not-the-token"}):
        answer = client.post(f"/clips/{clip}/label", data=data | {"label": "unsatisfactory"}, follow_redirects=False)
        assert answer.status_code == 403
        answer = client.post(f"/clips/{clip}/release", data=data, follow_redirects=False)
        assert answer.status_code == 403
    # Another logged-in session's token is not this session's.
    _, other_token = logged_in(review["app"])
    assert other_token != token
    assert client.post(f"/clips/{clip}/release", data={"csrf_token": other_token},
                       follow_redirects=False).status_code == 403
    assert labels(review["engine"]) == []


def test_trusted_proxy_header_only_from_the_configured_proxy(review, tmp_path):
    cfg = load_config(site(tmp_path, trusted_user_header="X-Remote-User", trusted_proxies=["10.1.2.3"]))
    app = create_app(cfg, review["engine"], GateLink(spool_dir=review["spool"].root, destinations=["outbox:x"]))
    stranger = TestClient(app, client=("10.9.9.9", 40000))
    assert stranger.get("/verdicts", headers={"X-Remote-User": "eve"}, follow_redirects=False).status_code == 303
    proxy = TestClient(app, client=("10.1.2.3", 40000), headers={"X-Remote-User": "dr-proxy"})
    page = proxy.get("/verdicts")
    assert page.status_code == 200 and "dr-proxy" in page.text
    clip = review["ids"][1]
    proxy.post(f"/clips/{clip}/label", data={"label": "unsatisfactory", "reason": "partial",
                                             "csrf_token": csrf_of(page.text)})
    assert [(l.reviewer, l.label, l.reason) for l in labels(review["engine"])] == [("dr-proxy", "unsatisfactory",
                                                                                   "partial")]


# ------------------------------------------------------------ label, release

def test_release_of_a_clip_whose_bytes_were_pruned_says_so(review):
    """Spool retention removed a held clip's bytes (issue 14 item 10): releasing it from
    the app tells the reviewer why nothing happened, and queues nothing."""
    client, token = logged_in(review["app"])
    engine, held = review["engine"], review["ids"][1]
    with Session(engine) as session, session.begin():
        session.get(Verdict, held).file_pruned_at = datetime(2026, 1, 2, 3, 4)
        session.get(Verdict, held).file_pruned_reason = "held"
    answer = client.post(f"/clips/{held}/release", data={"csrf_token": token, "scope": "clip"})
    assert answer.status_code == 200, answer.text
    assert "released 0 clip(s); 1 not released: their bytes were pruned from the spool" in answer.text
    with Session(engine) as session:
        assert session.get(Verdict, held).forward_status == "held"
        assert session.scalar(select(Forward).where(Forward.verdict_id == held)) is None


@pytest.mark.parametrize("review", ["sqlite", "postgresql"], indirect=True)
def test_label_and_release_record_the_reviewer(review):
    client, token = logged_in(review["app"])
    engine, held = review["engine"], review["ids"][1]
    answer = client.post(f"/clips/{held}/label", data={"label": "satisfactory", "reason": "no_contrast",
                                                       "note": "filled late", "csrf_token": token})
    assert answer.status_code == 200 and "labelled 1 clip" in answer.text
    [label] = labels(engine)
    assert (label.label, label.reason, label.reviewer, label.note) == ("satisfactory", None, "alice", "filled late")
    answer = client.post(f"/clips/{held}/release", data={"csrf_token": token, "scope": "clip"})
    assert "released 1 clip" in answer.text and "by <span id=\"released-by\">alice</span>" in answer.text
    with Session(engine) as session:
        verdict = session.get(Verdict, held)
        assert verdict.released_by == "alice" and verdict.forward_status == "pending"
        forward = session.scalar(select(Forward).where(Forward.verdict_id == held))
        assert forward.destination == "outbox:x" and forward.status == "pending"
        kinds = [(e.kind, e.detail) for e in session.scalars(select(Event).where(
            Event.sop_instance_uid == verdict.sop_instance_uid).order_by(Event.id))]
    assert ("labelled", "satisfactory by alice") in kinds and ("released", "by alice") in kinds


def test_label_and_release_a_whole_study_from_the_clip_page(review):
    client, token = logged_in(review["app"])
    engine, clip = review["engine"], review["ids"][1]
    with Session(engine) as session:
        study = session.get(Verdict, clip).study_instance_uid
        in_study = {v.id: v for v in session.scalars(select(Verdict).where(Verdict.study_instance_uid == study))}
        session.expunge_all()
    assert len(in_study) > 1, "phantoms of one patient share a study"
    answer = client.post(f"/clips/{clip}/label", data={"csrf_token": token, "label": "unsatisfactory",
                                                       "reason": "device", "scope": "study"})
    assert f"labelled {len(in_study)} clip(s)" in answer.text
    assert {l.sop_instance_uid for l in labels(engine)} == {v.sop_instance_uid for v in in_study.values()}
    held = [v for v in in_study.values() if v.forward_status == "held"]
    answer = client.post(f"/clips/{clip}/release", data={"csrf_token": token, "scope": "study"})
    assert f"released {len(held)} clip(s)" in answer.text
    with Session(engine) as session:
        assert {v.id for v in session.scalars(select(Verdict).where(Verdict.released_by == "alice"))} == \
            {v.id for v in held}
    assert client.post(f"/clips/{clip}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/clips/{clip}/release", data={"csrf_token": token, "scope": "all"}).status_code == 400


def test_bulk_label_and_release_by_selection(review):
    client, token = logged_in(review["app"])
    held = [i for k, i in enumerate(review["ids"]) if k % 2]
    answer = client.post("/verdicts/bulk", data={"csrf_token": token, "action": "label-unsatisfactory",
                                                 "reason": "partial", "ids": [str(i) for i in held]})
    assert f"labelled {len(held)} clip(s)" in answer.text
    answer = client.post("/verdicts/bulk", data={"csrf_token": token, "action": "release",
                                                 "ids": [str(i) for i in review["ids"]]})
    # Only the held ones are released; forwarded ones are left as they are.
    assert f"released {len(held)} clip(s); {len(review['ids']) - len(held)} not held" in answer.text
    assert {l.reviewer for l in labels(review["engine"])} == {"alice"}


# ---------------------------------------------------------------- the pages

@pytest.mark.parametrize("review", ["sqlite", "postgresql"], indirect=True)
def test_list_filters_paging_and_no_identifiers_in_urls(review):
    client, _ = logged_in(review["app"])
    page = client.get("/verdicts")
    assert "7 clip(s)" in page.text and "page 1 of 2" in page.text
    assert len(re.findall(r'href="/clips/\d+"', page.text)) == 5
    assert "page 2 of 2" in client.get("/verdicts?page=2").text
    assert "3 clip(s)" in client.get("/verdicts?decision=unsatisfactory").text
    assert "3 clip(s)" in client.get("/verdicts?forward_status=held").text
    # Scores 0.2, 0.3, ... 0.8 against 0.5: within 0.15 are 0.4, 0.5 and 0.6.
    assert "3 clip(s)" in client.get("/verdicts?borderline=0.15").text
    assert "0 clip(s)" in client.get("/verdicts?date_to=2000-01-01").text
    assert "7 clip(s)" in client.get("/verdicts?model_version=m1").text
    # Every link and form target names clips by row id, never by a DICOM identifier.
    with Session(review["engine"]) as session:
        secrets = {value for v in session.scalars(select(Verdict)) for value in
                   (v.sop_instance_uid, v.study_instance_uid, v.series_instance_uid, v.patient_id) if value}
    clip = client.get(f"/clips/{review['ids'][0]}").text
    for html in (page.text, clip):
        targets = re.findall(r'(?:href|src|action|data-url)="([^"]*)"', html)
        assert targets and not any(s in t for t in targets for s in secrets)
    # A study found by its UID (in a form body) is listed by a row id.
    study = client.post("/verdicts/find", data={"identifier": review_study(review), "csrf_token":
                                                csrf_of(page.text)}, follow_redirects=False)
    assert re.fullmatch(r"/(clips/\d+|verdicts\?study_of=\d+)", study.headers["location"])


def review_study(review) -> str:
    with Session(review["engine"]) as session:
        return session.get(Verdict, review["ids"][0]).study_instance_uid


def test_clip_page_preview_and_sampled_frames(review):
    client, _ = logged_in(review["app"])
    clip = review["ids"][0]
    page = client.get(f"/clips/{clip}")
    assert page.status_code == 200 and "modality" in page.text and "received" in page.text
    gif = client.get(f"/clips/{clip}/preview.gif")
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    from PIL import Image
    import io

    # An animation of the run (PIL merges identical consecutive frames, so at most one per frame).
    frames = Image.open(io.BytesIO(gif.content)).n_frames
    assert 1 < frames <= min(read_header(review["files"][0]).frames, 90)
    png = client.get(f"/clips/{clip}/frames.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/clips/99999").status_code == 404


def test_heat_map_of_the_serving_checkpoint(review, tiny_checkpoint, tmp_path):
    cfg = load_config(site(tmp_path), model={"path": str(tiny_checkpoint)})
    app = create_app(cfg, review["engine"], GateLink(spool_dir=review["spool"].root))
    client, _ = logged_in(app)
    answer = client.get(f"/clips/{review['ids'][0]}/heatmap.json")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert 0.0 <= result["score"] <= 1.0 and len(result["frame_changes"]) == 8 == len(result["frame_indices"])
    assert result["model_version"].startswith("x3d_s-untrained-test+")
    png = client.get(result["png"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


@pytest.mark.parametrize("review", ["sqlite", "postgresql"], indirect=True)
def test_agreement_counts_confusion_and_auc(review):
    engine = review["engine"]
    client, token = logged_in(review["app"])
    # Reviewers call the clips scored 0.6 and above unsatisfactory: the scores rank them perfectly.
    with Session(engine) as session:
        rows = [(v.id, v.score) for v in session.scalars(select(Verdict))]
    for verdict_id, score in rows:
        client.post(f"/clips/{verdict_id}/label", data={"csrf_token": token, "label":
                                                        "unsatisfactory" if score >= 0.55 else "satisfactory"})
    [stats] = queries.agreement(engine)
    assert (stats.clips, stats.labelled, stats.scored) == (7, 7, 7)
    assert stats.auc == 1.0
    # Decisions alternate with k; labels follow the score: the table counts both ways.
    assert stats.compared == 7 and stats.agree == sum(
        1 for k in range(7) if (k % 2 == 1) == (0.2 + 0.1 * k >= 0.55))
    page = client.get("/agreement")
    assert "1.000" in page.text and "not a clinical validation" in page.text
    assert queries.auc([0.1, 0.9, 0.5], [False, True, False]) == 1.0
    assert queries.auc([0.5, 0.5], [False, True]) == 0.5
    assert queries.auc([0.5], [True]) is None


# ------------------------------------------------------------ health, metrics

def test_health_live_and_ready(review):
    client = TestClient(review["app"])
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "workers", "spool"}
    review["worker"].stop.set()
    review["worker"].thread.join(5)
    answer = client.get("/health/ready")
    assert answer.status_code == 503 and not answer.json()["checks"]["workers"]["ok"]


def test_ready_fails_when_the_spool_is_full_or_not_writable(review, tmp_path):
    cfg = load_config(site(tmp_path), spool={"min_free_bytes": 2 ** 62})  # more than any disk has free
    worker = Alive()
    app = create_app(cfg, review["engine"], GateLink(workers=worker.status, spool_dir=review["spool"].root))
    answer = TestClient(app).get("/health/ready")
    assert answer.status_code == 503 and "below spool.min_free_bytes" in answer.json()["checks"]["spool"]["detail"]
    # A spool whose incoming/ folder is not a folder cannot take a file.
    broken = tmp_path / "broken-spool"
    broken.mkdir()
    (broken / "incoming").write_text("a file where the folder belongs")
    app = create_app(load_config(site(tmp_path)), review["engine"],
                     GateLink(workers=worker.status, spool_dir=broken))
    answer = TestClient(app).get("/health/ready")
    assert answer.status_code == 503 and "not writable" in answer.json()["checks"]["spool"]["detail"]
    worker.stop.set()


def test_ready_fails_when_the_database_does_not_answer(review, tmp_path):
    from angiogate.store.db import make_engine

    port = free_port()  # a port where no PostgreSQL listens
    down = make_engine(f"postgresql+psycopg://angiogate@127.0.0.1:{port}/angiogate?connect_timeout=2")
    worker = Alive()
    app = create_app(load_config(site(tmp_path)), down, GateLink(workers=worker.status,
                                                                 spool_dir=review["spool"].root))
    client = TestClient(app)
    answer = client.get("/health/ready")
    assert answer.status_code == 503 and not answer.json()["checks"]["database"]["ok"]
    assert client.get("/health/live").status_code == 200
    assert "angiogate_verdict_log_up 0.0" in client.get("/metrics").text
    worker.stop.set()
    down.dispose()


@pytest.mark.parametrize("review", ["sqlite", "postgresql"], indirect=True)
def test_metrics_names_and_values(review):
    client = TestClient(review["app"])
    body = client.get("/metrics").text
    for name in ("angiogate_objects_received_total", "angiogate_verdicts_total", "angiogate_forwards",
                 "angiogate_forward_attempts_total", "angiogate_queue_depth", "angiogate_verdict_latency_seconds_bucket",
                 "angiogate_verdict_latency_seconds_count", "angiogate_spool_free_bytes", "angiogate_worker_alive",
                 "angiogate_clips"):
        assert f"\n{name}" in body, name
    assert "angiogate_objects_received_total 7.0" in body
    assert 'angiogate_verdicts_total{decision="unsatisfactory",reason="no_contrast"} 3.0' in body
    assert 'angiogate_queue_depth{queue="forward:outbox:x"} 4.0' in body
    assert "angiogate_verdict_latency_seconds_count 7.0" in body
    # A second scrape counts each clip once.
    assert "angiogate_verdict_latency_seconds_count 7.0" in client.get("/metrics").text


# -------------------------------------------------------------------- CLI

def angiogate(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, "-m", "angiogate", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, input=stdin)


def test_cli_label_and_release_by_study_series_and_all(review, tmp_path):
    engine, config = review["engine"], tmp_path / "site.yaml"
    with Session(engine) as session:
        rows = list(session.scalars(select(Verdict).order_by(Verdict.id)))
        held = [v for v in rows if v.forward_status == "held"]
        uid = held[0].sop_instance_uid
        other_series = held[1]
    out = angiogate("label", uid, "--label", "unsatisfactory", "--reason", "device", "--by", "dr-cli",
                    "--config", config, cwd=tmp_path)
    assert out.returncode == 0 and f"{uid}: labelled" in out.stdout, out.stderr
    out = angiogate("label", "1.2.3.4", "--label", "satisfactory", "--config", config, cwd=tmp_path)
    assert out.returncode == 1 and "unknown SOP Instance UID" in out.stdout
    out = angiogate("label", uid, "--label", "maybe", "--config", config, cwd=tmp_path)
    assert out.returncode == 2
    assert [(l.reviewer, l.reason) for l in labels(engine)] == [("dr-cli", "device")]
    assert angiogate("release", "--config", config, cwd=tmp_path).returncode == 2  # nothing named
    out = angiogate("release", "--series", other_series.series_instance_uid, "--by", "dr-cli", "--wait", "0",
                    "--config", config, cwd=tmp_path)
    assert out.returncode == 0 and f"{other_series.sop_instance_uid}: released" in out.stdout, out.stderr
    out = angiogate("release", "--study", held[0].study_instance_uid, "--wait", "0", "--config", config, cwd=tmp_path)
    assert out.returncode == 0 and f"{uid}: released" in out.stdout
    out = angiogate("release", "--all-held", "--by", "dr-all", "--wait", "0", "--config", config, cwd=tmp_path)
    assert out.returncode == 0
    with Session(engine) as session:
        released = {v.sop_instance_uid: v.released_by for v in session.scalars(select(Verdict)) if v.released_at}
    assert set(released) == {v.sop_instance_uid for v in held}
    assert released[other_series.sop_instance_uid] == "dr-cli" and released[uid] == "cli"


# -------------------------------------------------------------- migrations

def test_users_migration_on_sqlite_and_postgresql(tmp_path, postgres_url):
    from sqlalchemy import inspect

    from angiogate.store.db import make_engine, upgrade

    lite = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    upgrade(lite, "0001")
    with lite.begin() as conn:  # a log from before the review app, with a row
        conn.execute(text("INSERT INTO labels (sop_instance_uid, label, created_at) VALUES ('1.2', 'satisfactory', "
                          "CURRENT_TIMESTAMP)"))
    assert "users" not in inspect(lite).get_table_names()
    upgrade(lite)
    for engine in (lite, open_database(postgres_url)):
        columns = {c["name"] for c in inspect(engine).get_columns("users")}
        assert columns == {"id", "name", "password_hash", "created_at", "last_login_at"}
        add_user(engine, "alice", auth.hash_password(PASSWORD))
        with pytest.raises(Exception):
            add_user(engine, "alice", auth.hash_password(PASSWORD))
        with Session(engine) as session:
            assert session.scalar(select(User.name)) == "alice"
        engine.dispose()
