"""`angiogate score` throughput on a folder of JPEG Lossless clips, as a user runs it.

The command runs as a child (`--json`, unbuffered), so the wall time
includes interpreter start, imports and model load. Each output line is
time-stamped as it arrives: the first verdict marks the end of start-up, and
the steady rate is counted from the end of the first burst of lines (a
batched scorer prints a batch at once) to the last line. The paper's
validation set is then start-up + 20,388 clips at the steady rate.

Beside it, on the same clips: the naive scorer (`angiogate.bench.naive`:
the paper's shape in torch fp32 eager, pydicom decode, one clip at a time),
also a whole process, for the ratio of the two wall times; and the quick
start, `angiogate score FILE` on one clip, whole process, several times
(after the folder run, so the compile cache and this CPU's agreement records
are what a second run on a site finds).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from angiogate.bench.goals import VALIDATION_CLIPS, check
from angiogate.bench.model import site_file
from angiogate.bench.phantoms import CAVEAT, fill_folder
from angiogate.children.process import end, spawn, tail
from angiogate.config import Config

BURST_S = 0.05  # lines closer together than this arrived as one write


def steady_rate(arrivals: list[float]) -> tuple[float | None, int]:
    """(clips/s after the first burst, size of that burst) from line arrival times."""
    if not arrivals:
        return None, 0
    burst = 1
    while burst < len(arrivals) and arrivals[burst] - arrivals[burst - 1] < BURST_S:
        burst += 1
    rest = len(arrivals) - burst
    span = arrivals[-1] - arrivals[burst - 1]
    if rest < 2 or span <= 0:
        return None, burst
    return rest / span, burst


def _whole_process(argv: list[str], log: Path, workdir: Path, timeout_s: float, what: str) -> float:
    """Wall seconds of one child from spawn to exit; raises if it fails or overruns."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    proc = spawn(argv, log, stdout=subprocess.DEVNULL, env=env, cwd=workdir)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} did not finish in {timeout_s:.0f} s") from exc
    finally:
        end(proc, timeout_s=10)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{tail(log)}")
    return wall


def quick_start(site: Path, clip: Path, workdir: Path, *, runs: int, timeout_s: float) -> dict:
    """`angiogate score FILE` as a whole process, `runs` times: the median wall is the start figure."""
    walls = [_whole_process([sys.executable, "-m", "angiogate", "score", "--config", str(site), str(clip)],
                            workdir / f"quick-start-{i}.log", workdir, timeout_s, "`angiogate score FILE`")
             for i in range(runs)]
    median = statistics.median(walls)
    return {"runs": runs, "wall_s": [round(w, 3) for w in walls], "median_s": round(median, 3),
            "goal": check("quick_start_s", median)}


def naive_comparison(folder: Path, files: int, score_wall_s: float, workdir: Path, timeout_s: float) -> dict:
    """The naive scorer over the same folder, whole process; the ratio of wall times."""
    wall = _whole_process([sys.executable, "-m", "angiogate.bench.naive", str(folder)], workdir / "naive.log",
                          workdir, timeout_s, "the naive scorer")
    ratio = wall / score_wall_s
    return {"clips": files, "naive_wall_s": round(wall, 2), "score_wall_s": round(score_wall_s, 2),
            "ratio": round(ratio, 2), "goal": check("score_vs_naive", ratio)}


def run(config: Config, workdir: Path, model, sources: list[Path], *, clips: int, timeout_s: float,
        progress=None, quick_start_runs: int = 5, naive: bool = True) -> dict:
    say = progress or (lambda _m: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / "clips"
    files = fill_folder(folder, sources, clips)
    site = site_file(config, model.path, workdir / "score-site.yaml")
    log = workdir / "score.stderr.log"
    arrivals: list[float] = []
    lines: list[dict] = []

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    proc = spawn([sys.executable, "-m", "angiogate", "score", "--json", "--config", str(site), str(folder)],
                 log, stdout=subprocess.PIPE, env=env, cwd=workdir)

    def read() -> None:
        for raw in proc.stdout:
            arrivals.append(time.perf_counter() - started)
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"decision": "unparsed", "raw": raw.decode(errors="replace")[:200]})

    reader = threading.Thread(target=read, name="score-reader", daemon=True)
    reader.start()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`angiogate score` did not finish {clips} clips in {timeout_s:.0f} s "
                           f"({len(lines)} done)") from exc
    finally:
        end(proc, timeout_s=10)
        reader.join(10)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0 or len(lines) != len(files):
        raise RuntimeError(f"`angiogate score` exited {proc.returncode} after {len(lines)} of {len(files)} "
                           f"clips:\n{tail(log)}")
    steady, burst = steady_rate(arrivals)
    first_s = arrivals[0]
    startup_s = first_s - (burst / steady if steady else 0.0)
    rate_for_extrapolation = steady or len(files) / wall_s
    validation_s = max(startup_s, 0.0) + VALIDATION_CLIPS / rate_for_extrapolation
    decisions: dict[str, int] = {}
    for line in lines:
        decisions[line.get("decision", "?")] = decisions.get(line.get("decision", "?"), 0) + 1
    versions = sorted({str(line.get("model_version")) for line in lines})
    headline = round(steady, 2) if steady else round(len(files) / wall_s, 2)
    say(f"score: quick start, `angiogate score FILE` x{quick_start_runs}")
    start = quick_start(site, files[0], workdir, runs=quick_start_runs, timeout_s=120)
    versus = None
    if naive:
        say(f"score: the naive scorer over the same {len(files)} clips")
        versus = naive_comparison(folder, len(files), wall_s, workdir, timeout_s)
    return {
        "clips": len(files), "clip_mb": round(sum(f.stat().st_size for f in files) / len(files) / 1e6, 2),
        "distinct_clips": len(sources), "wall_s": round(wall_s, 2),
        "clips_per_s_wall": round(len(files) / wall_s, 3),
        "first_verdict_s": round(first_s, 2), "startup_s": round(startup_s, 2), "first_burst": burst,
        "clips_per_s_steady": round(steady, 3) if steady else None,
        "clips_per_s": headline, "clips_per_s_basis": "steady" if steady else "wall",
        "validation_clips": VALIDATION_CLIPS, "validation_min": round(validation_s / 60, 1),
        "decisions": decisions, "model_versions": versions, "model": model.note,
        "goal": check("score_clips_per_s", headline),
        "validation_goal": check("validation_min", validation_s / 60),
        "quick_start": start, "naive": versus,
        "note": CAVEAT,
    }
