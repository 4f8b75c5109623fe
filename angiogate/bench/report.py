"""The bench's output: one table, each figure beside its goal, and the JSON file.

The table is for a person; the JSON (everything the sections returned) is
what the README's performance table is made from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from angiogate.bench.goals import PAPER_MODEL_MS, VALIDATION_CLIPS


def write_json(result: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def _verdict(goal: dict | None) -> Text:
    if not goal:
        return Text("")
    return Text(goal["text"], style="green" if goal["status"] == "PASS" else "bold red")


def _ms(s: dict, unit: str = "ms") -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"median {s['median']:g} {unit} (min {s['min']:g}, max {s['max']:g}; n={s['n']})"


def machine_line(m: dict) -> str:
    flags = ", ".join(m.get("cpu_flags") or []) or "none of interest"
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "openvino", "dcmtk") if m.get(k))
    return (f"{m['cpu']}; {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); "
            f"AVX-512 {'yes' if m['avx512'] else 'no'}, AMX {'yes' if m['amx'] else 'no'} ({flags}); "
            f"RAM {m['ram_gib']} GiB; {versions}; load average at start {m['load_average_at_start']}, "
            f"nice {m['nice']}")


def _against_paper(paper_over: float | None) -> str:
    if not paper_over:
        return "-"
    if paper_over >= 1:
        return f"{paper_over:.2f}x faster"
    return f"{1 / paper_over:.2f}x slower"


def _rows_model(s: dict) -> list:
    base, serve = s["baseline"], s["serving"]
    versus = f"serving {_against_paper(s['paper_over_serving'])}; baseline {_against_paper(s['paper_over_baseline'])}"
    shape = "x".join(map(str, s["input_shape"]))
    return [
        (f"baseline: {base['engine']}, batch 1 ({shape})", _ms(base["ms"]), None),
        (f"serving: {serve['engine']} (model.engine: {serve.get('configured', '?')})", _ms(serve["ms"]), s["goal"]),
        ("baseline / serving", f"{s['baseline_over_serving']:g}x" if s["baseline_over_serving"] else "-", None),
        (f"vs the paper's {PAPER_MODEL_MS} ms", versus, None),
    ]


def _rows_decode(s: dict) -> list:
    rows = []
    for syntax in s["syntaxes"].values():
        rows.append((f"{syntax['transfer_syntax']} {s['clip_shape']} ({syntax['file_mb']} MB), "
                     f"{s['frames_sampled']} frames -> {s['model_input']}",
                     f"{_ms(syntax['total_ms'])}; decode {syntax['decode_ms']['median']:g} + "
                     f"preprocess {syntax['preprocess_ms']['median']:g} ms", None))
    return rows


def _rows_ingest(s: dict) -> list:
    scp, gate = s["storescp"], s["gate"]
    what = f"{s['clips']} clips x {s['clip_mb']} MB, one association, PDU {s['max_pdu_bytes']}"
    return [
        (f"storescu -> {scp['what']} [{what}]", _ms(scp["mb_per_s"], "MB/s"), None),
        (f"storescu -> {gate['what']}", _ms(gate["mb_per_s"], "MB/s"), None),
        ("gate / storescp", f"{s['gate_over_storescp']:g}x" if s["gate_over_storescp"] else "-", s["goal"]),
    ]


def _rows_latency(s: dict) -> list:
    lat, sus = s["latency"], s["sustained"]
    rates = ", ".join(f"{step['rate_hz']:g}" for step in sus["steps"])
    bound = " (lower bounds: " + str(lat["unjudged"]) + " not judged in time)" if lat["lower_bound"] else ""
    return [
        (f"C-STORE Success -> verdict committed, {lat['clips']} {s['transfer_syntax']} {s['clip']} clips at "
         f"1 clip/s (achieved {lat['achieved_hz']:g}); model ran on {lat['model_ran']}; gate {s['gate_model']}",
         f"p50 {lat['p50_s']:g} s, p95 {lat['p95_s']:g} s{bound}", lat["goal"]),
        (f"highest sustained rate (steps of {sus['step_s']:g} s at {rates} clips/s)",
         sus["text"], sus.get("goal")),
    ]


def _rows_score(s: dict) -> list:
    steady = s["clips_per_s_steady"]
    measured = (f"{steady:g} clips/s steady; " if steady else "") + \
        f"{s['clips_per_s_wall']:g} clips/s from wall time ({s['wall_s']:g} s incl. start-up ~{s['startup_s']:g} s)"
    decisions = ", ".join(f"{n} {d}" for d, n in sorted(s["decisions"].items()))
    rows = [
        (f"angiogate score, {s['clips']} JPEG Lossless clips ({s['clip_mb']} MB; {decisions})", measured, s["goal"]),
        (f"{VALIDATION_CLIPS:,} clips (the paper's validation set), extrapolated",
         f"{s['validation_min']:g} min", s["validation_goal"]),
    ]
    if start := s.get("quick_start"):
        rows.append((f"quick start: `angiogate score FILE`, whole process, x{start['runs']}",
                     f"median {start['median_s']:g} s ({', '.join(f'{w:g}' for w in start['wall_s'])})",
                     start["goal"]))
    if naive := s.get("naive"):
        rows.append((f"naive scorer over the same {naive['clips']} clips (paper's shape, torch fp32 eager, "
                     f"pydicom decode, one at a time) / `angiogate score`, whole processes",
                     f"{naive['ratio']:g}x ({naive['naive_wall_s']:g} s / {naive['score_wall_s']:g} s)",
                     naive["goal"]))
    return rows




def _auc_kept(judged: dict) -> str:
    auc, kept = judged["auc"], judged["kept_good"]
    return f"AUC {'n/a' if auc is None else f'{auc:.3f}'}, good kept {'n/a' if kept is None else f'{100 * kept:.0f}%'}"


def _rows_training(s: dict) -> list:
    speed, tuned = s["speed"], s["fine_tune"]
    shape = "x".join(map(str, speed["input_shape"]))
    precision = speed.get("precision", "fp32")
    fp32 = (f" (fast in fp32 {speed['fast_fp32_step_s']:g} s = {speed['speedup_fp32']:g}x; PyTorch's in "
            f"{precision.split()[0]} {speed['reference_mixed_step_s']:g} s)"
            if speed.get("reference_mixed_step_s") and precision != "fp32" else "")
    rows = [(f"training step {shape}: PyTorch depthwise backward fp32 / fast, {precision} (same process)",
             f"{speed['reference_step_s']:g} s / {speed['fast_step_s']:g} s = {speed['speedup']:g}x{fp32}; "
             f"epoch of 100 clips {speed['epoch_100_reference_s']:g} -> {speed['epoch_100_fast_s']:g} s",
             s["goal_speedup"]),
            (f"fine-tune {tuned['labelled_clips']} clips, {tuned['epochs_run']} epochs (whole retrain)",
             f"{tuned['fine_tune_s']:g} s", s["goal_fine_tune"])]
    look = f" ({tuned['look']})" if tuned.get("look") else ""
    for when in ("before", "after"):
        rows.append((f"{when} fine-tuning, on the site's{look} other {tuned['other_clips']} clips",
                     _auc_kept(tuned[when]), None))
    general = tuned.get("general")
    if general:
        rows.append((f"general phantom set ({general['clips']} clips, every kind), before -> after",
                     f"{_auc_kept(general['before'])} -> {_auc_kept(general['after'])}", None))
    return rows


_ROWS = {"model": _rows_model, "decode": _rows_decode, "ingest": _rows_ingest, "latency": _rows_latency,
         "score": _rows_score, "training": _rows_training}


def render(result: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=150)
    m = result["machine"]
    console.print(Text("angiogate bench" + (" --quick (indicative only)" if result["quick"] else ""), style="bold"))
    console.print(f"machine: {machine_line(m)}")
    busy = (m.get("load_average_at_start") or [0])[0] > 0.5 * (m.get("usable_cpus") or 1)
    if busy:
        console.print(Text("WARNING: the machine was busy when the bench started (load average above half the "
                           "CPUs): every figure is distorted; run it on an idle machine.", style="bold yellow"))
    serving = result.get("serving_model")
    if serving:
        style = "" if serving["installed"] else "bold yellow"
        console.print(Text(f"model: {serving['note']}", style=style))
        if serving.get("export"):
            console.print(f"model: {serving['export']}")
        if serving.get("recheck"):
            console.print(f"model: {serving['recheck']}")
    table = Table(show_lines=True)
    table.add_column("section")
    table.add_column("what")
    table.add_column("measured")
    table.add_column("goal")
    notes = []
    for name, section in result["sections"].items():
        if "error" in section:
            table.add_row(name, "", Text(f"ERROR: {section['error'][:400]}", style="bold red"), "")
            continue
        for i, (what, measured, goal) in enumerate(_ROWS[name](section)):
            table.add_row(name if i == 0 else "", what, measured, _verdict(goal))
        if name != "model" and section.get("note") and section["note"] not in notes:
            notes.append(section["note"])
        notes += [n for n in section.get("notes", []) if n not in notes]
        engine_notes = [section.get("engine_note"), section.get("serving", {}).get("engine_note")]
        if section.get("serving", {}).get("why"):  # which precision serves, and why
            engine_notes.append(f"{section['serving'].get('precision', '?')} serves: {section['serving']['why']}")
        notes += [f"{name}: {n}" for n in engine_notes if n]
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
    if "latency" in result["sections"] and "error" not in result["sections"]["latency"]:
        console.print("note: the judge is woken when intake records a clip; it polls every "
                      f"{result['sections']['latency']['poll_interval_s']:g} s (workers.poll_interval_s) "
                      "only for clips other gates sharing its verdict log received")
