"""The issue's performance goals, and the verdict of a measured figure against one.

A goal is a bound: `lower` (the figure must be at most the goal, e.g. ms) or
`higher` (at least the goal, e.g. MB/s). A miss says by how much, relative
to the goal, so the report reads "MISS: 31.2 ms vs 25 ms goal, 25% over".
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_MODEL_MS = 59.83           # the paper's X3D-S inference time per clip
VALIDATION_CLIPS = 20_388        # the paper's validation set
VALIDATION_BUDGET_MIN = 35.0     # ... to be scored in under this many minutes
GATE_VALIDATION_MIN = 30.0       # ... or received and judged through the network path
GATE_RATE_HZ = 12.0              # the sustained gate rate that does it (28.3 min)


@dataclass(frozen=True)
class Goal:
    key: str
    value: float
    unit: str
    better: str  # "lower" or "higher"
    text: str


GOALS = {
    "model_ms": Goal("model_ms", 25.0, "ms", "lower", "serving model <= 25 ms/clip (batch 1)"),
    "ingest_ratio": Goal("ingest_ratio", 0.5, "x", "higher",
                         "gate >= 0.5 x DCMTK storescp MB/s (fsync and database row included)"),
    "latency_p95_s": Goal("latency_p95_s", 1.0, "s", "lower", "verdict p95 <= 1 s at 1 clip/s"),
    "sustained_hz": Goal("sustained_hz", GATE_RATE_HZ, "clips/s", "higher",
                         f"the gate sustains >= {GATE_RATE_HZ:g} clips/s of JPEG Lossless 512x512x80 on "
                         f"two cores ({VALIDATION_CLIPS:,} clips in < {GATE_VALIDATION_MIN:g} min)"),
    "score_clips_per_s": Goal("score_clips_per_s", 10.0, "clips/s", "higher",
                              "`angiogate score` >= 10 clips/s on 512x512x80 JPEG Lossless"),
    "quick_start_s": Goal("quick_start_s", 1.5, "s", "lower",
                          "`angiogate score FILE` answers <= 1.5 s after process start (OpenVINO serving)"),
    "score_vs_naive": Goal("score_vs_naive", 6.0, "x", "higher",
                           "`angiogate score` over the clips >= 6x the naive scorer (paper's shape, torch fp32 "
                           "eager, pydicom decode, one clip at a time), both timed as whole processes"),
    "fine_tune_s": Goal("fine_tune_s", 180.0, "s", "lower",
                        "fine-tuning the bundled model on 24 clips, 8 epochs, in < 3 min (2-core CPU)"),
    "train_speedup": Goal("train_speedup", 2.0, "x", "higher",
                          "training step (epoch) >= 2x as fast as PyTorch's depthwise backward"),
    "validation_min": Goal("validation_min", VALIDATION_BUDGET_MIN, "min", "lower",
                           f"{VALIDATION_CLIPS:,} clips in < {VALIDATION_BUDGET_MIN:g} min"),
}


def _fmt(value: float, unit: str) -> str:
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{text} {unit}" if unit != "x" else f"{text}x"


def verdict(value: float | None, goal: Goal) -> dict:
    """PASS or MISS of `value` against `goal`, with the shortfall in percent of the goal.

    None (the figure could not be measured) is a MISS that says so.
    """
    if value is None:
        return {"goal": goal.value, "unit": goal.unit, "better": goal.better, "status": "MISS",
                "off_by_pct": None, "text": f"MISS: not measured ({goal.text})"}
    if goal.better == "lower":
        passed = value <= goal.value
        off = (value - goal.value) / goal.value * 100
        word = "over"
    else:
        passed = value >= goal.value
        off = (goal.value - value) / goal.value * 100
        word = "short"
    shown = f"{_fmt(value, goal.unit)} vs {_fmt(goal.value, goal.unit)} goal"
    if passed:
        text = f"PASS: {shown}"
    else:
        text = f"MISS: {shown}, {off:.0f}% {word}"
    return {"goal": goal.value, "unit": goal.unit, "better": goal.better,
            "status": "PASS" if passed else "MISS", "off_by_pct": None if passed else round(off, 1),
            "text": text}


def check(key: str, value: float | None) -> dict:
    return verdict(value, GOALS[key])
