"""`angiogate bench` runs end to end and reports sane figures; its goal verdicts are right.

No timing is asserted here: speed is measured only by the command, on an
idle machine. These runs use tiny clips and a tiny model so they stay short;
DCMTK (storescu, storescp) is needed for the ingest section and the lookup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from angiogate.bench.goals import check
from angiogate.bench.score import steady_rate
from angiogate.bench.stats import percentile, summary
from angiogate.children.dcmtk import find_dcmtk
from peers import dcmtk


@pytest.fixture
def dcmtk_installed() -> None:
    dcmtk("storescu")  # fails (or skips, by choice: peers.missing) without DCMTK
    dcmtk("storescp")


needs_dcmtk = pytest.mark.usefixtures("dcmtk_installed")


def _children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2:].split()[0] != "Z"


# ------------------------------------------------------------------ pure parts

def test_goal_verdicts_on_fixed_numbers():
    miss = check("model_ms", 31.25)
    assert miss["status"] == "MISS" and miss["off_by_pct"] == 25.0
    assert miss["text"] == "MISS: 31.2 ms vs 25 ms goal, 25% over"
    assert check("model_ms", 25.0)["status"] == "PASS"
    assert check("model_ms", 12.0)["text"] == "PASS: 12 ms vs 25 ms goal"
    short = check("ingest_ratio", 0.4)
    assert short["status"] == "MISS" and short["off_by_pct"] == 20.0 and short["text"].endswith("20% short")
    assert check("ingest_ratio", 0.5)["status"] == "PASS"
    assert check("latency_p95_s", 1.25)["text"] == "MISS: 1.25 s vs 1 s goal, 25% over"
    assert check("latency_p95_s", 0.55)["status"] == "PASS"
    assert check("sustained_hz", 6.0)["text"] == "MISS: 6 clips/s vs 12 clips/s goal, 50% short"
    assert check("sustained_hz", 12.0)["status"] == "PASS"
    assert check("score_clips_per_s", 12.0)["status"] == "PASS"
    assert check("score_clips_per_s", 5.0)["off_by_pct"] == 50.0
    assert check("validation_min", 70.0)["text"] == "MISS: 70 min vs 35 min goal, 100% over"
    unmeasured = check("latency_p95_s", None)
    assert unmeasured["status"] == "MISS" and "not measured" in unmeasured["text"]


def test_percentiles_and_steady_rate():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5 and percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 50) <= percentile(values, 95)
    assert summary(values) == {"n": 4, "median": 2.5, "min": 1.0, "max": 4.0}
    # Three verdicts printed at once (a batch), then one a second: 1 clip/s after the burst.
    rate, burst = steady_rate([5.0, 5.01, 5.02, 6.02, 7.02])
    assert burst == 3 and rate == pytest.approx(1.0)
    assert steady_rate([3.0]) == (None, 1)


def test_queue_growth_counts_the_second_half_only():
    from angiogate.bench.latency import queue_growth

    # The pipeline fills in the first half (0 -> 2), then holds: no growth.
    assert queue_growth([(0.0, 0), (1.0, 2), (2.0, 2), (3.0, 2), (4.0, 2)], 4.0) == 0
    # Overloaded: it keeps growing.
    assert queue_growth([(0.0, 1), (1.0, 3), (2.0, 4), (3.0, 6), (4.0, 8)], 4.0) == 4


@needs_dcmtk
def test_the_latency_sender_streams_each_clip_with_a_new_uid(storescp, phantoms, tmp_path):
    """The bench's SCU sends the clip as stored, only its SOP Instance UID new each time
    (in the file meta and the dataset alike), to a real peer (DCMTK storescp)."""
    import pydicom

    from angiogate.bench.latency import UID_LENGTH, Sender

    outdir, rows = phantoms
    clips = [outdir / row["file"] for row in rows if row["file"].endswith(".dcm")][:2]
    sender = Sender(storescp.port, storescp.aet, clips, tmp_path / "send")
    try:
        uids = [sender.send_next()[0] for _ in range(3)]
    finally:
        sender.close()
    assert len(set(uids)) == 3 and all(len(uid) == UID_LENGTH for uid in uids)
    received = [pydicom.dcmread(path) for path in storescp.received_files()]
    assert [str(ds.SOPInstanceUID) for ds in received] == uids
    for ds, source in zip(received, [clips[0], clips[1], clips[0]]):
        original = pydicom.dcmread(source)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert ds.PixelData == original.PixelData and ds.StudyInstanceUID == original.StudyInstanceUID


@needs_dcmtk
def test_a_bench_gate_starts_beside_the_sites_own_review_app(tmp_path):
    """The bench runs on the site's server, where the site's gate may already hold its review
    app's port (and a CI run once failed because a demo gate held 8080): the bench gate's app
    takes any free loopback port and keeps its files in the bench's folder."""
    import socket

    from angiogate.bench.gate import BenchGate
    from angiogate.config import load_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        site = load_config(web={"port": taken.getsockname()[1]})
        gate = BenchGate(tmp_path / "gate", site, model_path=None)
        try:
            gate.start()  # raised "web.port ... Address already in use" before
        finally:
            gate.stop()
    assert gate.settings["web"]["port"] == 0
    assert (tmp_path / "gate" / "web-secret.key").exists()


def test_dcmtk_lookup_finds_the_real_storescu():
    for name in ("storescu", "storescp"):
        path = find_dcmtk(name)
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        assert "dcmtk" in out.lower(), (path, out)  # not pynetdicom's script of the same name


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    import torch

    from angiogate.engines.model import ModelInfo, build_network, save_checkpoint

    torch.manual_seed(0)
    info = ModelInfo(arch="x3d_s", num_frames=8, crop_size=64, mean=0.45, std=0.225, threshold=0.5,
                     version="x3d_s-untrained-bench-test")
    folder = tmp_path_factory.mktemp("bench-model")
    checkpoint = save_checkpoint(folder / "tiny.pt", build_network("x3d_s", num_frames=8, crop_size=64,
                                                                   num_outputs=info.num_outputs), info)
    site = folder / "site.yaml"
    # engine torch: the bench's plumbing is under test here, not the engines (no OpenVINO
    # conversion in each of the gate, score and model runs keeps this short on a busy machine).
    site.write_text(f"model: {{path: {checkpoint}, engine: torch}}\n")
    return site


@needs_dcmtk
@pytest.mark.timeout(1800)  # generous for a busy machine; a few minutes when idle
def test_every_section_runs_end_to_end(tiny_site, tmp_path):
    from angiogate.bench.report import render, write_json
    from angiogate.bench.run import SECTIONS, Settings, run_bench
    from angiogate.children.process import live_children

    tiny = Settings(quick=True, clip_size=128, clip_frames=40, model_warmup=1, model_runs=3, decode_clips=1,
                    decode_repeats=1, ingest_clips=2, ingest_repeats=2, latency_distinct=1, latency_clips=3,
                    ladder=(2,), step_s=2.0, bisect=False, drain_s=600, score_clips=3, score_distinct=1,
                    score_timeout_s=900, quick_start_runs=1)
    before = _children_of(os.getpid())
    result = run_bench(settings=tiny, config_path=tiny_site, workdir=tmp_path)
    assert live_children() == [] and _children_of(os.getpid()) <= before
    assert not Path(result["workdir"]).exists()  # the temp folder is removed

    path = tmp_path / "bench.json"
    write_json(result, path)
    loaded = json.loads(path.read_text())
    assert list(loaded["sections"]) == list(SECTIONS)
    for name, section in loaded["sections"].items():
        assert "error" not in section, (name, section.get("traceback"))
    machine = loaded["machine"]
    assert machine["logical_cpus"] >= 1 and isinstance(machine["avx512"], bool) and machine["cpu"]
    assert loaded["serving_model"]["installed"] is True

    model = loaded["sections"]["model"]
    for engine in ("baseline", "serving"):
        ms = model[engine]["ms"]
        assert ms["n"] == 3 and 0 < ms["min"] <= ms["median"] <= ms["max"]
    assert model["baseline_over_serving"] > 0 and model["paper_ms"] == 59.83
    # the verdict is the one the measured figure earns (a constant PASS or MISS would not)
    assert model["goal"]["status"] == ("PASS" if model["serving"]["ms"]["median"] <= model["goal"]["goal"] else "MISS"), model

    decode = loaded["sections"]["decode"]
    assert set(decode["syntaxes"]) == {"explicit", "jpeg-lossless"}
    for syntax in decode["syntaxes"].values():
        assert syntax["total_ms"]["median"] > 0 and syntax["file_mb"] > 0

    ingest = loaded["sections"]["ingest"]
    assert ingest["storescp"]["mb_per_s"]["median"] > 0 and ingest["gate"]["mb_per_s"]["median"] > 0
    assert len(ingest["gate"]["runs"]) == 2 and ingest["gate_over_storescp"] > 0
    ratio = ingest["gate_over_storescp"]
    assert ingest["goal"]["status"] == ("PASS" if ratio >= ingest["goal"]["goal"] else "MISS"), ingest

    latency = loaded["sections"]["latency"]["latency"]
    assert latency["unjudged"] == 0 and latency["model_ran"] == 3
    assert 0 < latency["p50_s"] <= latency["p95_s"]
    sustained = loaded["sections"]["latency"]["sustained"]
    assert [s["rate_hz"] for s in sustained["steps"]] == [2]
    # the one rung's outcome decides the figure (None or 2 alone could not fail)
    assert sustained["highest_sustained_hz"] == (2 if sustained["steps"][0]["holds"] else None), sustained
    step = sustained["steps"][0]  # what the sender kept and the gate judged is said beside the rate
    assert sustained["text"].startswith(f"2 clips/s (sent {step['achieved_hz']:.1f}/s, judged {step['judged_hz']:.1f}/s)"
                                        if step["holds"] else "below 2 clips/s"), sustained

    score = loaded["sections"]["score"]
    assert score["clips"] == 3 and sum(score["decisions"].values()) == 3
    assert score["clips_per_s"] > 0 and score["validation_min"] > 0 and score["wall_s"] > 0
    assert all("untrained-bench-test" in v for v in score["model_versions"])
    start = score["quick_start"]
    assert start["runs"] == 1 and start["median_s"] == start["wall_s"][0] > 0
    assert start["goal"]["status"] == ("PASS" if start["median_s"] <= 1.5 else "MISS"), start
    naive = score["naive"]
    assert naive["clips"] == 3 and naive["naive_wall_s"] > 0 and naive["score_wall_s"] == score["wall_s"]
    assert naive["ratio"] == pytest.approx(naive["naive_wall_s"] / naive["score_wall_s"], abs=0.01)
    assert naive["goal"]["status"] == ("PASS" if naive["ratio"] >= 6 else "MISS"), naive

    render(result)  # the table renders from the same dict


def test_naive_scorer_prints_one_line_per_clip(tmp_path):
    """The baseline `score` is measured against judges every clip it is given (a probability each)."""
    from angiogate.synth import generate

    folder = tmp_path / "clips"
    generate(folder, per_kind=1, seed=5, size=96, kinds=["left_coronary", "catheter_only"],
             syntaxes=("jpeg-lossless",), max_frames=30)
    files = sorted(folder.rglob("*.dcm"))
    out = subprocess.run([sys.executable, "-m", "angiogate.bench.naive", str(folder)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(f) for f in files] and len(files) == 2
    assert all(0.0 <= line["p_unsatisfactory"] <= 1.0 for line in lines)


def test_bench_refuses_an_unknown_section():
    out = subprocess.run([sys.executable, "-m", "angiogate", "bench", "--sections", "model,speed"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "speed" in out.stderr


@pytest.mark.timeout(1800)  # generous for a busy machine; a few minutes when idle
def test_bench_command_quick_decode_writes_json(tmp_path):
    """The command as a user runs it; with no model installed it times an untrained one and says so."""
    site = tmp_path / "site.yaml"
    site.write_text("model: {path: none}\n")
    out_json = tmp_path / "bench.json"
    out = subprocess.run([sys.executable, "-m", "angiogate", "bench", "--quick", "--sections", "decode",
                          "--config", str(site), "--json", str(out_json), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert list(result["sections"]) == ["decode"] and result["quick"] is True
    assert result["serving_model"]["installed"] is False
    assert "UNTRAINED" in out.stdout and "JPEG Lossless" in out.stdout
    decode = result["sections"]["decode"]
    assert decode["clip_shape"] == "512x512x80" and decode["frames_sampled"] == 16


@needs_dcmtk
@pytest.mark.timeout(1800)  # generous for a busy machine; a few minutes when idle
def test_interrupted_bench_leaves_no_process(tmp_path):
    """SIGINT while the ingest section's children run: the bench stops them and exits 130.
    (Waiting for two children at once missed the window in a loaded full-suite run.)"""
    # SIGINT as a terminal's Ctrl-C delivers it: a shell starting the tests in the background hands
    # its children SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    bench = subprocess.Popen([sys.executable, "-m", "angiogate", "bench", "--sections", "ingest",  # full: a window for SIGINT
                              "--workdir", str(tmp_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and bench.poll() is None:
            children = _children_of(bench.pid)
            seen |= children
            if children and list(tmp_path.glob("*/ingest/gate/gate.log")):
                break  # the ingest section's gate has started (storescp, the gate, storescu: 1-3 run)
            time.sleep(0.2)
        assert bench.poll() is None, bench.stderr.read()[-3000:]
        seen |= _children_of(bench.pid)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
    assert bench.returncode == 130, err[-3000:]
    assert seen and not [pid for pid in seen if _alive(pid)]
    assert not list(tmp_path.glob("angiogate-bench-*"))  # the temp folder is removed


def test_training_section_is_opt_in_and_renders_beside_its_goals():
    from angiogate.bench.goals import check
    from angiogate.bench.report import _rows_training
    from angiogate.bench.run import SECTIONS, parse_sections

    assert "training" not in parse_sections(None) and parse_sections(None) == SECTIONS
    assert parse_sections("score,training") == ("score", "training")
    section = {"speed": {"input_shape": [8, 3, 16, 112, 112], "reference_step_s": 30.0, "fast_step_s": 6.0,
                         "speedup": 5.0, "epoch_100_reference_s": 390.0, "epoch_100_fast_s": 78.0},
               "fine_tune": {"labelled_clips": 24, "epochs_run": 8, "fine_tune_s": 200.0, "other_clips": 24,
                             "before": {"auc": 0.8, "kept_good": 0.9}, "after": {"auc": None, "kept_good": 1.0}},
               "goal_speedup": check("train_speedup", 5.0), "goal_fine_tune": check("fine_tune_s", 200.0)}
    rows = _rows_training(section)
    assert rows[0][2]["status"] == "PASS" and rows[1][2]["status"] == "MISS"
    assert "5x" in rows[0][1] and "AUC n/a" in rows[3][1] and "good kept 90%" in rows[2][1]
    section["speed"] |= {"precision": "bf16 mixed precision", "fast_fp32_step_s": 15.0, "speedup_fp32": 2.0,
                         "reference_mixed_step_s": 40.0}
    section["fine_tune"] |= {"look": "boxes", "general": {
        "clips": 100, "before": {"auc": 0.99, "kept_good": 0.9}, "after": {"auc": 0.985, "kept_good": 0.95}}}
    rows = _rows_training(section)
    assert "bf16" in rows[0][0] and "fast in fp32 15 s = 2x" in rows[0][1] and "PyTorch's in bf16 40 s" in rows[0][1]
    assert "(boxes)" in rows[2][0] and "AUC 0.990, good kept 90% -> AUC 0.985, good kept 95%" in rows[4][1]


def test_the_training_sites_clips_carry_its_look_and_keep_their_labels(tmp_path):
    """The bench's proxy site: the same phantoms, every clip rewritten with the site's burned-in
    look, identities and labels unchanged."""
    import numpy as np
    import pydicom

    from angiogate.bench.training import SITE_LOOK, render_site
    from angiogate.training.data import records_from_csv

    kinds = ("left_coronary", "catheter_only")
    render_site(tmp_path / "plain", per_kind=2, seed=5, size=96, look=None, kinds=kinds)
    render_site(tmp_path / "site", per_kind=2, seed=5, size=96, look=SITE_LOOK, kinds=kinds)
    plain, site = records_from_csv(tmp_path / "plain"), records_from_csv(tmp_path / "site")
    assert len(site) == 4 and sorted(r.target for r in site) == [0, 0, 1, 1]
    for a, b in zip(plain, site):
        assert (a.sop_instance_uid, a.patient_id, a.label) == (b.sop_instance_uid, b.patient_id, b.label)
        before, after = pydicom.dcmread(a.path), pydicom.dcmread(b.path)
        assert after.SOPInstanceUID == before.SOPInstanceUID and after.PatientID == before.PatientID
        assert before.pixel_array.shape == after.pixel_array.shape
        changed = before.pixel_array != after.pixel_array
        assert changed.any(axis=(1, 2)).all()  # every frame carries the burned-in boxes and label
        brighter = after.pixel_array[changed].astype(int) > before.pixel_array[changed]
        assert brighter.mean() > 0.95 and changed.mean() < 0.3  # white strokes, not a new picture


def test_bench_gates_share_the_sites_export_folder(tmp_path, monkeypatch):
    """A bench gate serves what a settled gate of the site serves: its exports and this CPU's
    agreement records are in the site's export folder (where the bench re-checked them), not
    in a folder of its own beside its `promoted_path`, where it would serve fp32 and re-check."""
    from angiogate.bench.gate import bench_settings
    from angiogate.config import Config, load_config

    monkeypatch.chdir(tmp_path)
    site = load_config()  # export_dir unset: the folder beside the (relative) promoted_path
    assert site.model.export_dir is None
    gate = Config.model_validate(bench_settings(site, tmp_path / "gate", port=11112, model_path=tmp_path / "m.pt"))
    assert gate.model.export_folder == (tmp_path / site.model.export_folder).resolve()
    assert gate.model.promoted_path == tmp_path / "gate" / "models" / "current.pt"
    assert Path(gate.model.path) == tmp_path / "m.pt"
