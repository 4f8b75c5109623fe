"""One bench run: the chosen sections, in order, in one temp folder, with their children cleaned up.

Sections (each measures one thing; see its module):
  model    model ms/clip, torch fp32 eager against the serving engine
  decode   decode + preprocess ms per clip, Explicit VR LE and JPEG Lossless
  ingest   storescu MB/s into the gate against into DCMTK storescp
  latency  verdict latency at 1 clip/s, and the highest sustained clips/s
  score    `angiogate score` clips/s, and the paper's validation set extrapolated
  training training step speed-up and fine-tuning on 24 clips (opt-in: `--sections training`)

A section that fails is recorded with its error and the others still run;
Ctrl-C stops the run, and every child process is stopped on the way out.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

SECTIONS = ("model", "decode", "ingest", "latency", "score")  # the default run
OPT_IN = ("training",)                                          # only when named


@dataclass(frozen=True)
class Settings:
    """How much each section does. FULL is the figure of record; QUICK a smoke run."""

    quick: bool
    clip_size: int = 512
    clip_frames: int = 80
    model_warmup: int = 5
    model_runs: int = 30
    decode_clips: int = 6          # distinct clips per syntax
    decode_repeats: int = 3
    ingest_clips: int = 20         # ~21 MB each at 512x512x80
    ingest_repeats: int = 3
    latency_distinct: int = 4      # distinct clips, re-sent with new UIDs
    latency_clips: int = 30
    ladder: tuple[float, ...] = (1, 2, 4, 8, 12, 16)  # 12: the goal
    step_s: float = 20.0
    bisect: bool = True
    drain_s: float = 300.0
    score_clips: int = 96         # issue 16: 96 JPEG Lossless 512x512x80 clips
    score_distinct: int = 8
    score_timeout_s: float = 1800.0
    quick_start_runs: int = 5


FULL = Settings(quick=False)
QUICK = Settings(quick=True, model_warmup=2, model_runs=15, decode_clips=2, decode_repeats=2, ingest_clips=5,
                 ingest_repeats=1, latency_distinct=2, latency_clips=8, ladder=(1, 2, 4), step_s=10.0,
                 bisect=False, drain_s=180.0, score_clips=6, score_distinct=2, score_timeout_s=900.0,
                 quick_start_runs=2)


def parse_sections(text: str | None) -> tuple[str, ...]:
    if not text:
        return SECTIONS
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS + OPT_IN]
    if unknown or not chosen:
        raise ValueError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SECTIONS + OPT_IN)}")
    return tuple(s for s in SECTIONS + OPT_IN if s in chosen)


def run_bench(*, sections: tuple[str, ...] = SECTIONS, settings: Settings = FULL, config_path: Path | None = None,
              workdir: Path | None = None, progress=None) -> dict:
    """Run `sections` and return the machine-readable result (what --json writes)."""
    from angiogate.bench import decode, ingest, latency, machine, model, score, training
    from angiogate.bench.phantoms import PhantomSet
    from angiogate.config import load_config

    say = progress or (lambda _message: None)
    config = load_config(config_path)
    temp = Path(tempfile.mkdtemp(prefix="angiogate-bench-", dir=workdir))
    result = {
        "angiogate_bench": 1,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": settings.quick, "settings": asdict(settings), "sections_run": list(sections),
        "config": str(config_path) if config_path else "(embedded defaults)",
        "workdir": str(temp), "machine": machine.describe(), "sections": {},
    }
    try:
        phantoms = PhantomSet(temp / "phantoms", size=settings.clip_size, frames=settings.clip_frames)
        serving = None
        if set(sections) - {"ingest", "training"}:
            serving = model.resolve_serving_model(config, temp)
            result["serving_model"] = {"checkpoint": str(serving.path), "version": serving.version,
                                       "installed": serving.installed, "note": serving.note}
            if set(sections) & {"model", "latency", "score"}:
                if settled := model.settle_recheck(config, serving, temp, progress=say):
                    result["serving_model"]["recheck"] = settled
                    say(f"model: {settled}")
            if not serving.installed and set(sections) & {"model", "latency", "score"}:
                say("model: exporting the untrained stand-in for the serving engine")
                result["serving_model"]["export"] = model.export_standin(config, serving, temp)
        jobs = {
            "model": lambda: model.run(config_path, serving, warmup=settings.model_warmup,
                                       runs=settings.model_runs, progress=say),
            "decode": lambda: decode.run(config, phantoms, serving, clips=settings.decode_clips,
                                         repeats=settings.decode_repeats, progress=say),
            "ingest": lambda: ingest.run(config, temp / "ingest", phantoms.clips("explicit", settings.ingest_clips),
                                         repeats=settings.ingest_repeats, progress=say),
            "latency": lambda: latency.run(config, temp / "latency", serving,
                                           phantoms.clips("jpeg-lossless", settings.latency_distinct),
                                           latency_clips=settings.latency_clips, ladder=settings.ladder,
                                           step_s=settings.step_s, drain_s=settings.drain_s,
                                           bisect=settings.bisect, progress=say),
            "score": lambda: score.run(config, temp / "score", serving,
                                       phantoms.clips("jpeg-lossless", settings.score_distinct),
                                       clips=settings.score_clips, timeout_s=settings.score_timeout_s,
                                       quick_start_runs=settings.quick_start_runs, progress=say),
            "training": lambda: training.run(temp / "training", _training_checkpoint(config),
                                             speed_repeats=1 if settings.quick else training.SPEED_ROUNDS,
                                             progress=say),
        }
        _render_upfront(phantoms, sections, settings, say)
        for name in sections:
            say(f"{name}: running")
            started = time.monotonic()
            try:
                section = jobs[name]()
            except Exception as exc:  # one broken section must not hide the others' figures
                section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            section["seconds"] = round(time.monotonic() - started, 1)
            result["sections"][name] = section
        result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return result
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _training_checkpoint(config) -> Path:
    """The checkpoint fine-tuned by the training section: the serving one, else the bundled one."""
    from angiogate.engines.model import BUNDLED_MODEL
    from angiogate.modelstore.resolve import model_path

    try:
        return Path(model_path(config) or BUNDLED_MODEL)
    except FileNotFoundError:
        return BUNDLED_MODEL


def _render_upfront(phantoms, sections, settings: Settings, say) -> None:
    """Render each syntax's clips once, as many as the largest user needs."""
    need = {"explicit": 0, "jpeg-lossless": 0}
    if "decode" in sections:
        need = {k: max(v, settings.decode_clips) for k, v in need.items()}
    if "ingest" in sections:
        need["explicit"] = max(need["explicit"], settings.ingest_clips)
    if "latency" in sections:
        need["jpeg-lossless"] = max(need["jpeg-lossless"], settings.latency_distinct)
    if "score" in sections:
        need["jpeg-lossless"] = max(need["jpeg-lossless"], settings.score_distinct)
    for syntax, count in need.items():
        if count:
            say(f"phantoms: rendering {count} {syntax} clips of {phantoms.shape}")
            phantoms.clips(syntax, count)
