"""The `angiogate` command: serve, echo, score, synth, release, label, spool, user.

Thin: each command parses its options and calls the room that does the work.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from angiogate.config import CONFIG_ENV, SYSTEM_CONFIG, Config, ConfigError, find_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="angiogate: a DICOM quality gate for cath-lab X-ray angiography cine clips.")
ConfigOption = typer.Option(None, "--config", "-c", help=f"site config file (YAML); else ${CONFIG_ENV}, else "
                            f"{SYSTEM_CONFIG} if it exists, else the embedded defaults")


def _config(path: Optional[Path], **overrides) -> Config:
    """The configuration every command runs on: the site file `find_config` finds."""
    site, _ = find_config(path)
    try:
        return load_config(site, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        typer.echo(f"angiogate: {exc}", err=True)
        raise typer.Exit(2) from exc


def _config_line(path: Optional[Path]) -> str:
    site, how = find_config(path)
    return f"config: {site} (from {how})" if site else f"config: {how}"


def _logging(level: str) -> None:
    from pydicom import config as pydicom_config

    # Real-world headers break VR rules all the time; that is not the gate's news.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's INFO is one line per PDU event: keep it for --log-level DEBUG.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    # pydicom logs each failing decoder plugin with a traceback; the judge reports one clear reason.
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)


def _model_banner(judge) -> str:
    from angiogate.engines.info import BUNDLED_MODEL
    from angiogate.modelstore.resolve import PHANTOM_NOTICE

    if judge.engine is None:
        return "model: none -- judging by rules alone (header rules and contrast_arrival; every verdict says so)"
    line = f"model: {judge.engine.version} on {judge.engine.name}"
    reason = getattr(judge.engine, "serving_reason", None)
    if reason:
        line += f"\n  why: {reason}"
    phantom_only = bool(judge.engine.info.extra.get("synthetic_only"))
    if phantom_only or judge.config.model.path == "bundled" or Path(judge.config.model.path) == BUNDLED_MODEL:
        line += f"\n  NOTE: {PHANTOM_NOTICE}"
    return line


@app.command()
def serve(config: Optional[Path] = ConfigOption,
          port: Optional[int] = typer.Option(None, help="override `port`"),
          demo: bool = typer.Option(False, "--demo", help="push one phantom clip of every kind to "
                                    "the gate itself once it runs, and summarise what happened")) -> None:
    """Run the gate: receive, judge, record and forward until stopped (SIGTERM/Ctrl-C)."""
    from angiogate.forward.targets import forward_targets
    from angiogate.service import Gate

    cfg = _config(config, port=port)
    _logging(cfg.log_level)
    gate = Gate(cfg)
    try:
        gate.start()
    except Exception as exc:
        typer.echo(f"angiogate: cannot start: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"angiogate serving AE {cfg.ae_title} on {cfg.bind_address}:{gate.port}\n"
               f"  {_config_line(config)}\n  verdict log: {cfg.database_url_for_log()}\n  spool: {cfg.spool_dir}\n"
               f"  satisfactory clips to: {', '.join(forward_targets(cfg))}\n  {_model_banner(gate.judge)}"
               + (f"\n  review app: {gate.web.url} (health: /health/ready, metrics: /metrics)" if gate.web else "")
               + ("\n  SHADOW MODE: every clip is forwarded whatever its verdict" if cfg.policies.mode == "shadow"
                  else ""), err=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if demo:
        threading.Thread(target=_run_demo, args=(cfg, gate), daemon=True).start()
    stopping.wait()
    typer.echo("angiogate: stopping (queued work resumes at next start)", err=True)
    gate.stop()


def _run_demo(cfg: Config, gate) -> None:
    from angiogate.demo import push_phantoms, wait_and_summarise
    from angiogate.forward.targets import forward_targets

    folder = cfg.spool_dir.parent / "demo"
    typer.echo(f"demo: rendering phantom clips into {folder} (synthetic, not clinical data)", err=True)
    try:
        uids = push_phantoms(folder, ae_title=cfg.ae_title, port=gate.port)
    except Exception as exc:
        typer.echo(f"demo: pushing phantoms failed: {exc}", err=True)
        return
    typer.echo(wait_and_summarise(gate.engine, uids), err=True)
    where = ", ".join(forward_targets(cfg))
    typer.echo(f"demo: satisfactory clips went to {where}; held clips stay in {cfg.spool_dir}.\n"
               f"demo: the verdict log is {cfg.database_url_for_log()}, for example:\n"
               "  SELECT decision, score, reasons, forward_status FROM verdicts;\n"
               "demo: release a held clip with `angiogate release <SOP Instance UID>`. Ctrl-C stops the gate.",
               err=True)
    if gate.web is not None:
        typer.echo(f"demo: review the verdicts at {gate.web.url}verdicts (make an account first: "
                   "`angiogate user add NAME`)", err=True)


@app.command()
def echo(host: str = typer.Argument("127.0.0.1"), port: int = typer.Argument(11112),
         called_aet: str = typer.Option("ANGIOGATE", "-aec", "--called-aet",
                                        help="called AE title: the peer's (as DCMTK's -aec)"),
         calling_aet: str = typer.Option("ECHOSCU", "-aet", "--calling-aet",
                                         help="calling AE title: ours (as DCMTK's -aet)")) -> None:
    """C-ECHO a DICOM peer and print its status."""
    from angiogate.forward.sender import echo as send_echo
    from angiogate.forward.target import SendError

    try:
        status = send_echo(called_aet, host, port, calling_ae_title=calling_aet)
    except SendError as exc:
        typer.echo(f"C-ECHO failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"C-ECHO {called_aet}@{host}:{port} from {calling_aet}: status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)


def _iter_files(paths: list[Path]):
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


@app.command()
def score(paths: list[Path] = typer.Argument(..., help="DICOM files or folders"),
          config: Optional[Path] = ConfigOption,
          as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Judge files offline with the configured rules and model (nothing is stored or sent).

    Files are prepared in parallel (`workers.decode_threads`) and classified in
    batches (`workers.judge_batch`); results are printed in input order."""
    from angiogate.lean_imports import import_pydicom

    import_pydicom()  # before anything else imports it: without its extras (lean_imports.py)
    from angiogate.judge.pipeline import judge_files
    from angiogate.judge.verdict import Judge
    from angiogate.modelstore.resolve import load_engine

    cfg = _config(config)
    _logging("WARNING")
    judge = Judge(cfg, load_engine(cfg))
    typer.echo(_model_banner(judge), err=True)
    _recheck_in_background(cfg, judge)
    for judged in judge_files(judge, _iter_files(paths), decode_threads=cfg.workers.decode_threads,
                              judge_batch=cfg.workers.judge_batch):
        path, judgement = judged.tag, judged.judgement
        uid = judged.header.sop_instance_uid if judged.header is not None else None
        if as_json:
            typer.echo(json.dumps({"file": str(path), "sop_instance_uid": uid} | judgement.as_dict()))
        else:
            score_text = "-" if judgement.score is None else f"{judgement.score:.3f}"
            typer.echo(f"{judgement.decision:15s} {score_text:>6s}  {path}  {'; '.join(judgement.reasons)}")
    _end_process()


def _end_process() -> None:
    """End the process now that every verdict is printed, skipping its teardown.

    Freeing OpenVINO's compiled model and core and clearing the interpreter's
    modules took 0.26-0.37 s after the last verdict of `score FILE` (15 ms
    without, on a loaded 2-core EPYC); nothing is left to save by then: the output is
    flushed here, no file is open, the re-check child runs detached. Only when
    this process is the CLI (its __main__ runs `app`) writing to its own
    stdout and stderr: a caller that captures them in-process (typer's
    CliRunner, pytest) gets control back. If the output cannot be flushed (a
    closed pipe), the ordinary exit reports it.
    """
    if (sys.modules["__main__"].__dict__.get("app") is not app
            or sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    logging.shutdown()
    os._exit(0)


def _recheck_in_background(cfg, judge) -> None:
    """`score` serves what is checked here now; an export checked on another CPU is re-checked
    by a detached child (nice 19), whose record the next run of `score` (or the gate) uses."""
    from angiogate.modelstore import recheck
    from angiogate.modelstore.resolve import model_path

    path = model_path(cfg)
    if path is None or judge.engine is None or not (precisions := recheck.wanted(path, cfg)):
        return
    log_file = cfg.model.export_folder / "recheck.log"
    recheck.start(path, precisions, cfg, detach=True, log_file=log_file)
    typer.echo(f"  {recheck.explain(path, precisions, judge.engine.name)} (log: {log_file})", err=True)


@app.command()
def synth(outdir: Path = typer.Argument(..., help="folder to write phantom clips into"),
          per_kind: int = typer.Option(1, help="clips per phantom kind"),
          seed: int = typer.Option(0),
          size: int = typer.Option(512, help="rows and columns"),
          kinds: Optional[str] = typer.Option(None, help="comma-separated phantom kinds (default: all)"),
          syntax: Optional[list[str]] = typer.Option(None, help="explicit | jpeg-lossless (repeatable; default both)"),
          workers: int = typer.Option(1, help="processes rendering clips"),
          preview: bool = typer.Option(False, "--preview", help="also write contact_sheet.png")) -> None:
    """Write synthetic phantom XA clips (every kind, Explicit VR LE and JPEG Lossless) and labels.csv."""
    from angiogate.synth import KINDS, contact_sheet, generate
    from angiogate.synth.manifest import write_manifest

    typer.echo("Phantoms are synthetic: for tests and a first try, not clinical data.", err=True)
    chosen = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else list(KINDS)
    extra = {"syntaxes": tuple(syntax)} if syntax else {}
    try:
        rows = generate(outdir, per_kind=per_kind, seed=seed, size=size, kinds=chosen, workers=workers, **extra)
    except ValueError as exc:
        typer.echo(f"angiogate synth: {exc}", err=True)
        raise typer.Exit(2)
    write_manifest(outdir, per_kind=per_kind, seed=seed, size=size, kinds=chosen if kinds else None,
                   syntaxes=list(syntax) if syntax else None, clips=len(rows))
    typer.echo(f"wrote {len(rows)} clips, labels.csv and synth.json to {outdir}")
    if preview:
        png = contact_sheet(outdir, outdir / "contact_sheet.png")
        typer.echo(f"contact sheet: {png}")


@app.command("real-variants")
def real_variants(source: Path = typer.Argument(..., help="a real satisfactory run (multi-frame DICOM)"),
                  outdir: Path = typer.Argument(..., help="folder to write the variants and labels.csv into"),
                  seed: int = typer.Option(0, help="draws the boxes and the lossy quality")) -> None:
    """Write variants of one real good run: 7.5/15/30 fps, zoom, burned-in boxes, lossy; and its
    pre-contrast frames played to its length (held). A robustness check, not a validation set."""
    from angiogate.training.real_variants import make_variants

    rows = _write_real_set("real-variants", lambda: make_variants(source, outdir, seed=seed))
    typer.echo(f"wrote {len(rows)} variants of {source.name} and labels.csv to {outdir}; {_SCORE_THEM}")


_SCORE_THEM = "score them with `angiogate score` or `angiogate evaluate`"


def _write_real_set(command: str, make):
    """Run `make()`; a bad input (ValueError, OSError) ends the command with its message and exit 2."""
    try:
        return make()
    except (ValueError, OSError) as exc:
        typer.echo(f"angiogate {command}: {exc}", err=True)
        raise typer.Exit(2)


@app.command("real-frames")
def real_frames(frames: Path = typer.Argument(..., help="folder of real still frames, <run>_<number>.png"),
                outdir: Path = typer.Argument(..., help="folder to write the pseudo-runs and labels.csv into"),
                seed: int = typer.Option(0, help="draws the noise (and the training set's timings and looks)"),
                train: int = typer.Option(0, "--train", min=0,
                                          help="write a labelled set instead (to train on, or to evaluate on "
                                               "patients a model never saw): this many satisfactory pseudo-runs "
                                               "per run of frames (random timing and look), half as many "
                                               "no-contrast clips of the same fields"),
                hold_out: Optional[list[str]] = typer.Option(None, "--hold-out",
                                                             help="with --train: leave out this patient's runs "
                                                                  "(<patient>_v<n> names; repeatable)")) -> None:
    """Write a satisfactory pseudo-run per run of real frames (real tree and background, a synthetic
    injection) at 7.5 and 15 fps: a proxy for keeping real good runs, not a validation set. With
    --train, a training set of such runs and of the same fields without contrast."""
    if train:
        from angiogate.training.real_frames_set import make_training_set

        rows = _write_real_set("real-frames", lambda: make_training_set(
            frames, outdir, per_run=train, fields_per_run=max(1, train // 2), hold_out=tuple(hold_out or ()),
            seed=seed))
        trees = sum(r["label"] == "satisfactory" for r in rows)
        typer.echo(f"wrote {trees} satisfactory and {len(rows) - trees} no-contrast clips of "
                   f"{len({r['run'] for r in rows})} runs of real frames and labels.csv to {outdir}; train on "
                   "them with `angiogate retrain --data`, or evaluate on patients a model never saw")
        return
    if hold_out:
        typer.echo("angiogate real-frames: --hold-out needs --train", err=True)
        raise typer.Exit(2)
    from angiogate.training.real_frames import make_runs

    rows = _write_real_set("real-frames", lambda: make_runs(frames, outdir, seed=seed))
    typer.echo(f"wrote {len(rows)} pseudo-runs of {len({r['run'] for r in rows})} runs of real frames and "
               f"labels.csv to {outdir}; {_SCORE_THEM}")


@app.command()
def release(uids: Optional[list[str]] = typer.Argument(None, help="SOP Instance UIDs of held clips"),
            study: Optional[str] = typer.Option(None, "--study", help="every held clip of this Study Instance UID"),
            series: Optional[str] = typer.Option(None, "--series",
                                                 help="every held clip of this Series Instance UID"),
            all_held: bool = typer.Option(False, "--all-held", help="every held (or failed) clip"),
            config: Optional[Path] = ConfigOption,
            by: str = typer.Option("cli", help="who releases (recorded in the log)"),
            wait: float = typer.Option(30.0, help="seconds to wait for the running gate to send them")) -> None:
    """Forward held clips on request (by UID, study, series, or all); recorded in the verdict log."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from angiogate.forward.targets import forward_targets
    from angiogate.forward.worker import reconcile_destinations
    from angiogate.store.db import open_database
    from angiogate.store.ledger import release as release_clips
    from angiogate.store.schema import FWD_PENDING, Verdict

    from angiogate.store.review import releasable_uids

    if not (uids or study or series or all_held):
        typer.echo("angiogate release: name SOP Instance UIDs, --study, --series or --all-held", err=True)
        raise typer.Exit(2)
    cfg = _config(config)
    engine = open_database(cfg.database_url_with_password())
    targets = forward_targets(cfg)
    reconcile_destinations(engine, targets)  # forwards stranded by a destination removed from the config
    uids = list(uids or [])
    if study or series or all_held:
        chosen = releasable_uids(engine, study_instance_uid=study, series_instance_uid=series, all_held=all_held)
        typer.echo(f"{len(chosen)} held clip(s) match", err=True)
        uids += [u for u in chosen if u not in uids]
    outcomes = release_clips(engine, uids, targets, by)
    for uid, outcome in outcomes.items():
        typer.echo(f"{uid}: {outcome}")
    released = [u for u, o in outcomes.items() if o == "released"]
    deadline = time.monotonic() + wait
    status = {}
    while released and time.monotonic() < deadline:
        with Session(engine) as session:
            status = dict(session.execute(select(Verdict.sop_instance_uid, Verdict.forward_status)
                                          .where(Verdict.sop_instance_uid.in_(released))).all())
        if all(s != FWD_PENDING for s in status.values()):
            break
        time.sleep(0.5)
    for uid in released:
        typer.echo(f"{uid}: forward status {status.get(uid, FWD_PENDING)}"
                   + (" (sent when `angiogate serve` runs)" if status.get(uid, FWD_PENDING) == FWD_PENDING else ""))
    if len(released) != len(uids):
        raise typer.Exit(1)


@app.command()
def label(uids: list[str] = typer.Argument(..., help="SOP Instance UIDs of clips in the verdict log"),
          label_value: str = typer.Option(..., "--label", help="satisfactory | unsatisfactory"),
          reason: Optional[str] = typer.Option(None, help="why unsatisfactory: non_coronary, no_contrast, "
                                               "partial, device, graft (or your own code)"),
          note: Optional[str] = typer.Option(None, help="free text kept with the label"),
          by: str = typer.Option("cli", help="reviewer's name (recorded in labels.reviewer)"),
          config: Optional[Path] = ConfigOption) -> None:
    """Record a reviewer's label for clips; `retrain --from-verdict-log` learns from the newest one."""
    from angiogate.store.db import open_database
    from angiogate.store.review import ReviewError, add_labels

    cfg = _config(config)
    engine = open_database(cfg.database_url_with_password())
    try:
        outcomes = add_labels(engine, uids, label=label_value, reason=reason, note=note, reviewer=by)
    except ReviewError as exc:
        typer.echo(f"angiogate label: {exc}", err=True)
        raise typer.Exit(2) from exc
    for uid, outcome in outcomes.items():
        typer.echo(f"{uid}: {outcome}")
    if any(o != "labelled" for o in outcomes.values()):
        raise typer.Exit(1)


spool_app = typer.Typer(no_args_is_help=True, help="What the spool holds, and pruning it by the retention policy.")
app.add_typer(spool_app, name="spool")
SPOOL_STATES = ("unjudged", "pending", "forwarded", "held", "failed", "superseded", "orphan", "incoming", "pruned")


def _spool(config: Optional[Path]):
    from angiogate.store.db import open_database
    from angiogate.store.spool import Spool

    cfg = _config(config)
    return cfg, open_database(cfg.database_url_with_password()), Spool(cfg.spool_dir)


def _size(n: int) -> str:
    return f"{n} bytes" + (f" ({n / 2 ** 30:.2f} GiB)" if n >= 2 ** 30 else f" ({n / 2 ** 20:.1f} MiB)" if n else "")


@spool_app.command("report")
def spool_report(config: Optional[Path] = ConfigOption) -> None:
    """Objects and bytes by state (pruned rows keep their verdict, not their bytes), free space, what a prune takes."""
    from angiogate.store.retention import report

    cfg, engine, spool = _spool(config)
    found = report(engine, spool, cfg.spool)
    typer.echo(f"spool {spool.root}")
    for state in SPOOL_STATES + tuple(sorted(set(found.states) - set(SPOOL_STATES))):
        n, b = found.states.get(state, (0, 0))
        typer.echo(f"  {state:<11} {n:>8} objects  {_size(b)}" + ("  (rows only: bytes gone)" if state == "pruned" else ""))
    refusing = found.free_bytes < found.min_free_bytes
    typer.echo(f"free space: {_size(found.free_bytes)}; watermark spool.min_free_bytes {_size(found.min_free_bytes)}: "
               + ("C-STORE REFUSED (0xA700)" if refusing else "receiving"))
    typer.echo("prunable now: " + (", ".join(f"{reason} {n} objects ({_size(b)})" for reason, (n, b)
                                             in sorted(found.prunable.items())) or "nothing"))


@spool_app.command("prune")
def spool_prune(dry_run: bool = typer.Option(False, "--dry-run", help="list what would go; change nothing"),
                config: Optional[Path] = ConfigOption) -> None:
    """Apply the retention policy (config section `spool`) now, as the running gate does periodically."""
    from angiogate.store.retention import prune

    cfg, engine, spool = _spool(config)
    result = prune(engine, spool, cfg.spool, dry_run=dry_run, by="angiogate spool prune")
    verb = "would prune" if dry_run else "pruned"
    for candidate in result.pruned:
        typer.echo(f"{verb} {candidate.reason:<10} {candidate.sop_instance_uid or '-'}  {candidate.relative_path}"
                   f"  {candidate.size} bytes")
    totals = result.totals()
    typer.echo(f"{verb}: " + (", ".join(f"{reason} {n} objects ({_size(b)})" for reason, (n, b)
                                          in sorted(totals.items())) or "nothing")
               + (f"; {result.skipped} changed meanwhile and left alone" if result.skipped else ""))


user_app = typer.Typer(no_args_is_help=True, help="Accounts of the review web app.")
app.add_typer(user_app, name="user")


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@user_app.command("add")
def user_add(name: str = typer.Argument(..., help="login name (recorded on labels and releases)"),
             password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from "
                                                 "the first line of standard input instead of prompting"),
             reset_password: bool = typer.Option(False, "--reset-password", help="set a new password for an "
                                                 "existing user"),
             config: Optional[Path] = ConfigOption) -> None:
    """Add a reviewer account (the password is stored as an Argon2id hash only)."""
    from angiogate.store.db import open_database
    from angiogate.store.review import ReviewError, add_user
    from angiogate.web.auth import hash_password

    cfg = _config(config)
    engine = open_database(cfg.database_url_with_password())
    try:
        add_user(engine, name, hash_password(_read_password(password_stdin)), replace=reset_password)
    except (ReviewError, ValueError) as exc:
        typer.echo(f"angiogate user add: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"user {name} {'password set' if reset_password else 'added'}")


@user_app.command("list")
def user_list(config: Optional[Path] = ConfigOption) -> None:
    """List reviewer accounts and their last login."""
    from angiogate.store.db import open_database
    from angiogate.store.review import list_users

    engine = open_database(_config(config).database_url_with_password())
    for name, created, last_login in list_users(engine):
        typer.echo(f"{name}\tcreated {created:%Y-%m-%d %H:%M}\tlast login "
                   f"{last_login.strftime('%Y-%m-%d %H:%M') if last_login else 'never'}")


@user_app.command("remove")
def user_remove(name: str = typer.Argument(...), config: Optional[Path] = ConfigOption) -> None:
    """Remove a reviewer account (their labels and releases stay, under their name)."""
    from angiogate.store.db import open_database
    from angiogate.store.review import remove_user

    engine = open_database(_config(config).database_url_with_password())
    if not remove_user(engine, name):
        typer.echo(f"angiogate user remove: no user {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"user {name} removed")


def _reason_weights(pairs: Optional[list[str]]) -> dict[str, float]:
    """`--reason-weight graft=2 --reason-weight device=1.5` -> {'graft': 2.0, 'device': 1.5}."""
    from angiogate.engines.model import REASON_CLASSES

    weights: dict[str, float] = {}
    for pair in pairs or []:
        reason, _, factor = pair.partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if reason not in REASON_CLASSES or not value > 0:
            raise typer.BadParameter(f"{pair!r}: expected REASON=FACTOR with FACTOR > 0 and REASON one of "
                                     f"{', '.join(REASON_CLASSES)}", param_hint="--reason-weight")
        weights[reason] = value
    return weights


@app.command()
def retrain(data: Optional[list[Path]] = typer.Option(None, "--data", help="folder of DICOM clips with labels.csv"),
            labels_csv: Optional[Path] = typer.Option(None, help="labels CSV (default: DATA/labels.csv)"),
            from_verdict_log: bool = typer.Option(False, help="add reviewer labels from the verdict log"),
            phantoms: int = typer.Option(0, help="generate N phantom clips per kind to train on"),
            arch: str = typer.Option("x3d_s", help="x3d_s | r3d_18 | r2d_18 | r3d_152 | r2d_152"),
            epochs: Optional[int] = typer.Option(None, help="default: 60; 8 when fine-tuning (--init-from, "
                                                 "fewer than 200 clips)"),
            batch_size: Optional[int] = typer.Option(None, help="default: 8; 4 when fine-tuning"),
            seed: int = typer.Option(0),
            lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: the paper's 1e-4, "
                                               "fine-tuning too)"),
            frames: Optional[int] = typer.Option(None, help="frames per clip the model takes (default: "
                                                 "the --init-from checkpoint's, else 16)"),
            size: Optional[int] = typer.Option(None, help="model input size in pixels (square; default: the "
                                               "--init-from checkpoint's, else 160)"),
            channels: Optional[str] = typer.Option(None, help="input channels: grey (the paper's) | "
                                                   "grey+contrast (grey beside a subtraction of each pixel's "
                                                   "brightest frame); default: the --init-from checkpoint's, "
                                                   "else grey"),
            patience: Optional[int] = typer.Option(None, help="early stop after N epochs without validation "
                                                   "gain (default: 10; 3 when fine-tuning)"),
            frozen_blocks: Optional[int] = typer.Option(None, help="X3D: do not train the stem and the first "
                                                        "N-1 stages (default: 0; 2 when fine-tuning)"),
            freeze_batch_norm: Optional[bool] = typer.Option(None, "--freeze-batch-norm/--train-batch-norm",
                                                             help="keep batch norm statistics (default: "
                                                             "trained; when fine-tuning, frozen only in the "
                                                             "frozen blocks)"),
            min_held_out: Optional[int] = typer.Option(None, help="clips of each label held out in validation "
                                                       "and test (default: 0; 3 when fine-tuning)"),
            step_size: int = typer.Option(30, help="StepLR: multiply the learning rate by --gamma every N epochs"),
            gamma: float = typer.Option(0.1, help="StepLR factor"),
            threads: int = typer.Option(2, help="torch threads for training"),
            augment: bool = typer.Option(True, "--augment/--no-augment", help="the paper's augmentations"),
            balance_reasons: bool = typer.Option(False, "--balance-reasons",
                                                 help="draw each unsatisfactory reason equally often"),
            reason_weight: Optional[list[str]] = typer.Option(None, "--reason-weight",
                                                              help="REASON=FACTOR (repeatable), with "
                                                              "--balance-reasons: draw that reason FACTOR times "
                                                              "as often as each other reason (e.g. graft=2)"),
            keep_target: Optional[float] = typer.Option(None, min=0.5, max=1.0,
                                                        help="threshold: the lowest that keeps this share of "
                                                        "the validation split's satisfactory clips (e.g. 0.95); "
                                                        "default: Youden's J. With --resume on a finished run, "
                                                        "re-chooses its best checkpoint's threshold"),
            keep_confidence: Optional[float] = typer.Option(None, min=0.5, max=0.99,
                                                            help="with --keep-target: the validation keep rate "
                                                            "must show the target with this confidence (e.g. "
                                                            "0.8; one-sided exact binomial bound), not only "
                                                            "meet it"),
            init_from: Optional[Path] = typer.Option(None, help="start from this checkpoint's weights "
                                                     "(fine-tune; frames and size may differ)"),
            device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: the config's "
                                                 "model.device); CUDA trains in mixed precision"),
            real_samples: Optional[list[Path]] = typer.Option(None, "--real-samples",
                                                              help="real clips (files or folders) whose "
                                                              "verdicts the model card lists (default: "
                                                              "../shared/samples when present)"),
            out_dir: Path = typer.Option(Path("var/training"), help="checkpoints, split, history, model card"),
            resume: bool = typer.Option(False, help="continue from OUT_DIR/last.pt"),
            promote: bool = typer.Option(False, help="make the best checkpoint the serving model, if it beats "
                                         "the serving model on the held-out test split (higher AUC)"),
            force_promote: bool = typer.Option(False, "--force-promote",
                                               help="make the best checkpoint the serving model without "
                                                    "that comparison"),
            config: Optional[Path] = ConfigOption) -> None:
    """Train a model (the paper's recipe) from labelled clips, reviewer labels and/or phantoms."""
    from angiogate.export.promotion_check import compare_on_split
    from angiogate.export.trained import export_trained
    from angiogate.modelstore.promote import promote as promote_checkpoint
    from angiogate.modelstore.resolve import model_path
    from angiogate.training.cli import retrain_command

    cfg = _config(config)
    _logging("WARNING")
    best = retrain_command([str(d) for d in data or []], str(labels_csv) if labels_csv else None,
                           from_verdict_log, phantoms, arch, epochs, batch_size, str(out_dir), resume, seed,
                           promote or force_promote, lr=lr, num_frames=frames, crop_size=size, input_channels=channels,
                           patience=patience, frozen_blocks=frozen_blocks, freeze_batch_norm=freeze_batch_norm,
                           min_held_out=min_held_out, step_size=step_size, gamma=gamma, threads=threads, augment=augment,
                           balance_reasons=balance_reasons, reason_weights=_reason_weights(reason_weight),
                           keep_target=keep_target,
                           keep_confidence=keep_confidence, config=cfg,
                           init_from=str(init_from) if init_from else None, device=device or cfg.model.device,
                           real_samples=[str(p) for p in real_samples or []])
    if promote and not force_promote:
        try:
            serving = model_path(cfg)
        except FileNotFoundError:
            serving = None
        comparison = compare_on_split(best, serving, out_dir / "split.json", cfg)
        typer.echo(comparison.report())
        if not comparison.promote:
            raise typer.Exit(3)
    if promote or force_promote:
        export_trained(best, out_dir / "split.json", cfg, echo=typer.echo)
        served = promote_checkpoint(best, cfg.model.promoted_path, cfg.model.export_folder)
        typer.echo(f"promoted {best} -> {served}; a running gate switches to it between two clips")


@app.command()
def evaluate(data: list[Path] = typer.Argument(..., help="folders of clips, each with labels.csv"),
             checkpoint: Optional[Path] = typer.Option(None, help="default: the serving model"),
             out_dir: Path = typer.Option(Path("var/evaluation")),
             device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: the config's "
                                                  "model.device); CUDA runs in mixed precision"),
             config: Optional[Path] = ConfigOption) -> None:
    """The paper's Table 2 metrics with 95% CIs, ROC and confusion PNGs, and Table 3 complexity."""
    from angiogate.modelstore.resolve import model_path
    from angiogate.training.cli import evaluate_command

    cfg = _config(config)
    checkpoint = checkpoint or model_path(cfg)
    if checkpoint is None:
        typer.echo("angiogate: no model to evaluate (give --checkpoint)", err=True)
        raise typer.Exit(2)
    evaluate_command([str(d) for d in data], str(checkpoint), str(out_dir), device=device or cfg.model.device)


@app.command("export")
def export_model(checkpoint: Optional[Path] = typer.Argument(None, help="checkpoint (.pt); default: the serving model"),
                 precision: str = typer.Option("fp32", help="fp32 | bf16 | int8"),
                 calibration: Optional[list[Path]] = typer.Option(
                     None, "--calibration", help="labelled folder (labels.csv) to calibrate int8 on; repeat for more"),
                 evaluation: Optional[list[Path]] = typer.Option(
                     None, "--evaluation", help="labelled folder for the agreement check; repeat for more"),
                 calibration_clips: int = typer.Option(300, help="at most this many calibration clips (seeded choice)"),
                 accuracy_control: Optional[float] = typer.Option(
                     None, "--accuracy-control", min=0, max=1,
                     help="int8: keep in fp32 the operations that move P(unsatisfactory) most, until its "
                          "mean difference from torch on half the calibration clips is at most this "
                          "(slow: tens of minutes)"),
                 config: Optional[Path] = ConfigOption) -> None:
    """Export a checkpoint to OpenVINO, check it judges as torch fp32 does, install it only if it does."""
    from angiogate.engines.exports import ExportError
    from angiogate.export.clips import clips_from_folders
    from angiogate.export.run import report, run_export
    from angiogate.modelstore.resolve import model_path

    cfg = _config(config)
    _logging("WARNING")
    checkpoint = checkpoint or model_path(cfg)
    if checkpoint is None:
        typer.echo("angiogate export: no serving model to export (give CHECKPOINT)", err=True)
        raise typer.Exit(2)
    last_stage = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last_stage[0] or done == total:
            typer.echo(f"{stage}: {done}/{total}", err=True)
            last_stage[0] = stage

    try:
        result = run_export(
            checkpoint, precision, cfg, calibration=clips_from_folders(calibration or []),
            evaluation=clips_from_folders(evaluation or []), calibration_limit=calibration_clips,
            threads=cfg.model.threads, progress=progress, max_mean_difference=accuracy_control,
            notes={"calibration": [str(d) for d in calibration or []],
                   "evaluation": [str(d) for d in evaluation or []]})
    except (ExportError, ValueError, OSError, ImportError) as exc:
        typer.echo(f"angiogate export: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report(result))
    if not result.installed:
        raise typer.Exit(1)


@app.command("check-config")
def check_config(config: Optional[Path] = ConfigOption) -> None:
    """Validate the configuration, say which file it came from, print the effective settings."""
    cfg = _config(config)
    typer.echo(_config_line(config), err=True)
    typer.echo(json.dumps(cfg.model_dump(mode="json") | {"database_url": cfg.database_url_for_log()}, indent=2))


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


@app.command()
def bench(quick: bool = typer.Option(False, "--quick", help="small, fast run: indicative figures only"),
          json_path: Optional[Path] = typer.Option(None, "--json", help="also write every figure to this JSON file"),
          config: Optional[Path] = ConfigOption,
          sections: Optional[str] = typer.Option(None, help="comma-separated: model,decode,ingest,latency,score "
                                                 "(default: all of these), training (opt-in: step speed-up and "
                                                 "fine-tuning on 24 clips, several minutes)"),
          workdir: Optional[Path] = typer.Option(None, help="where the temp folder goes (its disk is the "
                                                 "spool's disk for ingest); default: the system temp dir")) -> None:
    """Measure model, decode, ingest, verdict latency and `score` speed against the goals (loopback only)."""
    from rich.console import Console

    from angiogate.bench.report import render, write_json
    from angiogate.bench.run import FULL, QUICK, parse_sections, run_bench

    try:
        chosen = parse_sections(sections)
    except ValueError as exc:
        typer.echo(f"angiogate bench: {exc}", err=True)
        raise typer.Exit(2) from exc
    _config(config)  # a wrong config stops here, naming the key
    _logging("WARNING")
    # SIGTERM unwinds like Ctrl-C, so every child the bench started is stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    status = Console(stderr=True, log_path=False)
    try:
        result = run_bench(sections=chosen, settings=QUICK if quick else FULL, config_path=find_config(config)[0],
                           workdir=workdir, progress=lambda message: status.log(message))
    except KeyboardInterrupt:
        typer.echo("angiogate bench: interrupted; child processes stopped", err=True)
        raise typer.Exit(130)
    render(result)
    if json_path is not None:
        write_json(result, json_path)
        typer.echo(f"figures written to {json_path}", err=True)


if __name__ == "__main__":
    app()
