"""Ingest MB/s: DCMTK storescu into the gate against storescu into DCMTK storescp.

The same files (uncompressed clips) go in one association each time, to
each receiver on loopback; MB/s is their bytes (10^6) over storescu's wall
time. The gate answers Success only after the object is fsync'd in its spool
and its row committed (SQLite, WAL, synchronous=FULL), so both are included;
storescp writes without fsync. Both receivers accept the same maximum PDU
(the gate's `max_pdu_bytes`, capped to the 131072 bytes storescp takes: the
gate's own default, 1 MiB, would make the comparison unequal). With several repetitions the order alternates
and the clips get new SOP Instance UIDs each time, so the gate always sees
new objects; the median repetition counts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from angiogate.bench.gate import BenchGate
from angiogate.bench.goals import check
from angiogate.bench.phantoms import renew_uids
from angiogate.bench.stats import summary
from angiogate.children import dcmtk
from angiogate.children.process import tail
from angiogate.config import Config


def _wait_drained(gate: BenchGate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gate.backlog() == 0:
            return True
        time.sleep(0.5)
    return False


def run(config: Config, workdir: Path, clips: list[Path], *, repeats: int, timeout_s: float = 600,
        progress=None) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(p.stat().st_size for p in clips)
    runs: dict[str, list[float]] = {"storescp": [], "gate": []}
    notes = []
    storescp = dcmtk.StoreSCP(workdir / "storescp", max_pdu_bytes=config.max_pdu_bytes, verbose=False)
    gate = BenchGate(workdir / "gate", config.model_copy(update={"max_pdu_bytes": storescp.max_pdu_bytes}),
                     model_path=None)
    try:
        storescp.start(timeout=20)
        gate.start()
        for rep in range(repeats):
            if rep > 0:
                renew_uids(clips)
            order = ["storescp", "gate"] if rep % 2 == 0 else ["gate", "storescp"]
            for target in order:
                if target == "storescp":
                    port, aec = storescp.port, storescp.aet
                else:
                    port, aec = gate.port, gate.ae_title
                wall_s, ok = dcmtk.push(clips, port, aec=aec, timeout_s=timeout_s,
                                        log=workdir / f"storescu-{target}.log")
                if ok != len(clips):
                    detail = gate.log_tail() if target == "gate" else tail(storescp.log)
                    raise RuntimeError(f"storescu into {target}: {ok} of {len(clips)} objects answered "
                                       f"Success\n{detail}")
                runs[target].append(total_bytes / 1e6 / wall_s)
                if target == "storescp":
                    shutil.rmtree(storescp.out_dir, ignore_errors=True)
                    storescp.out_dir.mkdir()
                elif not _wait_drained(gate, timeout_s):  # its rules-only judging must not overlap the next push
                    notes.append("the gate's judge queue had not drained before the next push")
            if progress:
                progress(f"ingest: repetition {rep + 1}/{repeats}")
    finally:
        gate.stop()
        storescp.stop()
    scp, ours = summary(runs["storescp"], 1), summary(runs["gate"], 1)
    ratio = round(ours["median"] / scp["median"], 3) if scp["median"] else None
    return {
        "clips": len(clips), "bytes": total_bytes, "clip_mb": round(total_bytes / len(clips) / 1e6, 2),
        "repeats": repeats, "max_pdu_bytes": storescp.max_pdu_bytes,
        "storescp": {"mb_per_s": scp, "runs": [round(r, 1) for r in runs["storescp"]],
                     "what": f"DCMTK {dcmtk.dcmtk_version()} storescp (+xa +uf; no fsync)"},
        "gate": {"mb_per_s": ours, "runs": [round(r, 1) for r in runs["gate"]],
                 "what": "angiogate serve (fsync + SQLite row before Success; model: none, rules-only "
                         "judging runs alongside; forwarding to a closed port, tried once)"},
        "gate_over_storescp": ratio,
        "goal": check("ingest_ratio", ratio),
        "notes": notes,
    }
