"""Verdict latency after C-STORE, and the highest clip rate the gate sustains.

A real gate (`angiogate serve`, the serving model) receives clips from a
pynetdicom SCU in this process over one association, each sent with a new
SOP Instance UID at a fixed pace. The SCU streams each clip from a file, as
a modality sends what it stored, a fresh UID of the same length written
over the last one in place: encoding a pydicom dataset for every send cost
the SCU about 32 ms of CPU per 7.5 MB clip, four times DCMTK storescu's
7-8 ms, on the two cores the gate is measured on. A clip's latency runs
from the moment its C-STORE Success response arrives to its verdict's
`decided_at` in the gate's SQLite log (naive UTC, stamped in the
transaction that commits the verdict). One clip is sent and judged first,
untimed, so the model's first call is not counted.

Sustained rate: clips are sent at 1, 2, 4, ... clips/s for a fixed time
each (then one step between the last rate that held and the first that did
not). Below the gate's capacity the judge queue (rows not yet judged,
including clips being judged) stays at a few clips; above it, it grows by
(rate - capacity) clips every second. So a rate holds when the sender kept
it, the queue at the step's end is at most max(2, rate) clips (about a
second of work), and over the step's second half it grew by at most one
clip or 5% of the clips sent, whichever is more (the first half lets the
pipeline fill). The queue drains between steps; how fast it drains after an
overloaded step, with nothing arriving, is the judge's capacity.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom

from angiogate.bench.gate import BenchGate
from angiogate.bench.goals import check
from angiogate.bench.model import engine_note
from angiogate.bench.phantoms import CAVEAT, new_uid
from angiogate.bench.stats import percentile, summary
from angiogate.config import Config

NETWORK_TIMEOUT_S = 60
UID_LENGTH = 44  # every UID the sender writes has this length, so a new one overwrites the last
SYNTAX_NAMES = {"1.2.840.10008.1.2.1": "Explicit VR LE", "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1"}


class Sender:
    """One association to the gate; sends clips with fresh UIDs, returns the response time.

    Each clip is written once to `folder` with a new SOP Instance UID; a send
    writes a fresh UID of the same length over it (file meta and dataset) and
    streams the file's bytes as the forwarder does (`forward.sender.store_file`)."""

    def __init__(self, port: int, ae_title: str, clips: list[Path], folder: Path):
        from pynetdicom import AE

        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[tuple[Path, list[int]]] = []  # (file, where its UID is written)
        contexts = set()
        for k, clip in enumerate(clips):
            dataset = pydicom.dcmread(clip)
            uid = new_uid(UID_LENGTH)
            dataset.SOPInstanceUID = uid
            dataset.file_meta.MediaStorageSOPInstanceUID = uid
            path = folder / f"{k:03d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            self.files.append((path, _offsets(path.read_bytes(), uid.encode())))
            contexts.add((str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)))
        ae = AE(ae_title="BENCH_SCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT_S
        ae.connection_timeout = 10
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, [syntax])
        self.assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if not self.assoc.is_established:
            raise RuntimeError(f"the gate on 127.0.0.1:{port} did not accept the association")
        self.sent = 0

    def send_next(self) -> tuple[str, float, float]:
        """(uid, wall time of the Success response as a POSIX timestamp, round trip s)."""
        from angiogate.forward.sender import store_file

        path, offsets = self.files[self.sent % len(self.files)]
        uid = new_uid(UID_LENGTH)
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset in offsets:
                os.pwrite(fd, uid.encode(), offset)
        finally:
            os.close(fd)
        started = time.perf_counter()
        status = store_file(self.assoc, path)
        round_trip = time.perf_counter() - started
        answered = time.time()
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise RuntimeError(f"C-STORE of {uid} answered {code!r} (association "
                               f"{'open' if self.assoc.is_established else 'closed'})")
        self.sent += 1
        return uid, answered, round_trip

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def _offsets(data: bytes, uid: bytes) -> list[int]:
    """Where `uid` is written in a file's bytes: its file meta and its dataset."""
    offsets, at = [], data.find(uid)
    while at >= 0:
        offsets.append(at)
        at = data.find(uid, at + 1)
    if len(offsets) != 2:
        raise RuntimeError(f"the SOP Instance UID is written {len(offsets)} times, not twice (meta, dataset)")
    return offsets


@dataclass
class Paced:
    rate_hz: float
    uids: list[str] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    round_trips: list[float] = field(default_factory=list)
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (s since start, queue length)
    elapsed_s: float = 0.0

    @property
    def achieved_hz(self) -> float:
        return len(self.uids) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def send_paced(sender: Sender, gate: BenchGate, *, rate_hz: float, count: int) -> Paced:
    """Send `count` clips, the i-th no earlier than i / rate_hz s after the first.

    The queue length is sampled about once a second between sends."""
    paced = Paced(rate_hz)
    start = time.monotonic()
    last_sample = -math.inf
    for i in range(count):
        delay = start + i / rate_hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        uid, answered, round_trip = sender.send_next()
        paced.uids.append(uid)
        paced.answered.append(answered)
        paced.round_trips.append(round_trip)
        now = time.monotonic()
        if now - last_sample >= 0.9:
            paced.backlog.append((round(now - start, 2), gate.backlog()))
            last_sample = now
    # A step lasts count / rate s (when the sender keeps the pace), counted from the first send.
    delay = start + count / rate_hz - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    paced.elapsed_s = time.monotonic() - start
    paced.backlog.append((round(paced.elapsed_s, 2), gate.backlog()))
    return paced


def _wait_judged(gate: BenchGate, uids: list[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    found: dict = {}
    while time.monotonic() < deadline:
        found = gate.decided(uids)
        if len(found) == len(uids):
            break
        if not gate.alive():
            raise RuntimeError(f"the gate exited while judging:\n{gate.log_tail()}")
        time.sleep(0.2)
    return found


def _wait_drained(gate: BenchGate, timeout_s: float) -> float | None:
    """Seconds until the judge queue is empty, or None after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if gate.backlog() == 0:
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def queue_growth(samples: list[tuple[float, int]], step_s: float) -> int:
    """How much the queue grew over the step's second half (last sample minus the one nearest half-time)."""
    middle = min(samples, key=lambda sample: abs(sample[0] - step_s / 2))
    return samples[-1][1] - middle[1]


def _utc(posix: float) -> datetime:
    return datetime.fromtimestamp(posix, timezone.utc).replace(tzinfo=None)


def measure_latency(sender: Sender, gate: BenchGate, *, clips: int, rate_hz: float, wait_s: float) -> dict:
    paced = send_paced(sender, gate, rate_hz=rate_hz, count=clips)
    found = _wait_judged(gate, paced.uids, wait_s)
    waited_until = time.time()
    latencies, model_ran = [], 0
    for uid, answered in zip(paced.uids, paced.answered):
        if uid in found:
            decided_at, score = found[uid]
            latencies.append((decided_at - _utc(answered)).total_seconds())
            model_ran += score is not None
        else:  # not judged within the wait: at least this late
            latencies.append(waited_until - answered)
    unjudged = len(paced.uids) - len(found)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "clips": clips, "rate_hz": rate_hz, "achieved_hz": round(paced.achieved_hz, 3),
        "p50_s": round(p50, 3), "p95_s": round(p95, 3), "latency_s": summary(latencies, 3),
        "unjudged": unjudged, "lower_bound": unjudged > 0, "model_ran": model_ran,
        "c_store_round_trip_s": summary(paced.round_trips, 3),
        "queue_samples": paced.backlog,
        "goal": check("latency_p95_s", p95),
    }


def sustain_step(sender: Sender, gate: BenchGate, *, rate_hz: float, step_s: float, drain_s: float) -> dict:
    count = max(2, round(rate_hz * step_s))
    judged_before = gate.judged_count()
    paced = send_paced(sender, gate, rate_hz=rate_hz, count=count)
    queue_end = paced.backlog[-1][1]
    judged = gate.judged_count() - judged_before
    allowed = max(2, math.ceil(rate_hz))
    growth = queue_growth(paced.backlog, paced.elapsed_s)
    growth_allowed = max(1, math.ceil(0.05 * count))
    kept_pace = paced.achieved_hz >= 0.9 * rate_hz
    holds = kept_pace and queue_end <= allowed and growth <= growth_allowed
    drain_s_taken = _wait_drained(gate, drain_s)
    return {
        "rate_hz": rate_hz, "clips": count, "achieved_hz": round(paced.achieved_hz, 3),
        "seconds": round(paced.elapsed_s, 2), "queue_at_end": queue_end, "queue_allowed": allowed,
        "queue_growth_second_half": growth, "queue_growth_allowed": growth_allowed,
        "queue_samples": paced.backlog, "judged_during_step": judged,
        "judged_hz": round(judged / paced.elapsed_s, 3), "sender_kept_pace": kept_pace,
        "holds": holds, "drained_after": drain_s_taken is not None,
        "drain_s": None if drain_s_taken is None else round(drain_s_taken, 2),
        # With nothing arriving, the queue empties at the judge's full speed.
        "drain_hz": (round(queue_end / drain_s_taken, 3)
                     if drain_s_taken and queue_end >= 3 else None),
    }


def find_sustained(sender: Sender, gate: BenchGate, *, ladder: tuple[float, ...], step_s: float,
                   drain_s: float, bisect: bool, progress=None) -> dict:
    steps = []
    last_hold = first_fail = None
    for rate in ladder:
        step = sustain_step(sender, gate, rate_hz=rate, step_s=step_s, drain_s=drain_s)
        steps.append(step)
        if progress:
            progress(f"sustained: {rate:g} clips/s {'holds' if step['holds'] else 'does not hold'}")
        if step["holds"]:
            last_hold = rate
        else:
            first_fail = rate
        if not step["holds"] or not step["drained_after"]:
            break
    if bisect and last_hold is not None and first_fail is not None and steps[-1]["drained_after"]:
        middle = (last_hold + first_fail) / 2
        if middle - last_hold >= 0.25:
            step = sustain_step(sender, gate, rate_hz=middle, step_s=step_s, drain_s=drain_s)
            steps.append(step)
            if step["holds"]:
                last_hold = middle
    drains = [s["drain_hz"] for s in steps if s["drain_hz"]]
    capacity = max(drains) if drains else None
    # A step holds with the sender 10% behind: say what was sent and judged at the highest one.
    held = next((s for s in reversed(steps) if s["holds"] and s["rate_hz"] == last_hold), None)
    return {
        "ladder": list(ladder), "step_s": step_s, "steps": steps,
        "highest_sustained_hz": last_hold,
        "judge_capacity_hz": capacity,
        "goal": check("sustained_hz", last_hold or 0.0),
        "text": (f"{last_hold:g} clips/s (sent {held['achieved_hz']:.1f}/s, judged {held['judged_hz']:.1f}/s)"
                 if held is not None else f"below {ladder[0]:g} clips/s")
                + (f"; the judge queue drained at {capacity:.2f} clips/s after overload" if capacity else ""),
    }


def run(config: Config, workdir: Path, model, clips: list[Path], *, latency_clips: int, ladder: tuple[float, ...],
        step_s: float, drain_s: float, bisect: bool, progress=None) -> dict:
    gate = BenchGate(Path(workdir) / "gate", config, model_path=model.path)
    sender = None
    try:
        gate.start()
        banner = gate.model_banner() or "model: (the gate printed no model line)"
        sender = Sender(gate.port, gate.ae_title, clips, Path(workdir) / "send")
        warm = send_paced(sender, gate, rate_hz=1.0, count=1)  # the model's first call is slow: not counted
        _wait_judged(gate, warm.uids, drain_s)
        if progress:
            progress(f"latency: {latency_clips} clips at 1 clip/s")
        latency = measure_latency(sender, gate, clips=latency_clips, rate_hz=1.0, wait_s=drain_s)
        _wait_drained(gate, drain_s)
        sustained = find_sustained(sender, gate, ladder=ladder, step_s=step_s, drain_s=drain_s, bisect=bisect,
                                   progress=progress)
    finally:
        if sender is not None:
            try:
                sender.close()
            except Exception:  # the gate may be gone already; it is stopped next either way
                pass
        gate.stop()
    header = pydicom.dcmread(clips[0], stop_before_pixels=True)
    return {
        "clip": f"{header.Rows}x{header.Columns}x{header.NumberOfFrames}",
        "transfer_syntax": SYNTAX_NAMES.get(str(header.file_meta.TransferSyntaxUID),
                                            str(header.file_meta.TransferSyntaxUID)),
        "clip_mb": round(sum(p.stat().st_size for p in clips) / len(clips) / 1e6, 2),
        "model": model.note, "gate_model": banner, "poll_interval_s": config.workers.poll_interval_s,
        "engine_note": engine_note(config, banner.rpartition(" on ")[2]),
        "latency": latency, "sustained": sustained, "note": CAVEAT,
    }
