"""Crash chaos for angiogate (issue 4, point 1): a bounded fault script.

    python tests/chaos/run.py --clips 200 --senders 4 --kills 3 --timeout 900

Loopback only. Generates small phantom clips (unique SOP Instance UIDs),
starts a DCMTK storescp as the downstream and `angiogate serve` (rules only,
SQLite, forwarding to storescp) as a child, and runs `--senders` threads that
push their share with DCMTK storescu, one file per invocation. While pushes
run, the gate is SIGKILLed `--kills` times at random moments and restarted on
the same port, spool and database. A file whose store got no Success (refused
association, aborted, timed out) is retried later, as a modality would, until
the deadline. Then the script waits until the gate has settled and prints

    pushed / acknowledged / judged / forwarded / lost (+ duplicates downstream)

lost = acknowledged objects without exactly one judged verdict row
     + satisfactory acknowledged objects that never reached the downstream.
Extra copies at the downstream (an at-least-once forward interrupted by a
kill) are reported separately as `duplicates`, not as lost.

Exit status 0 only if lost == 0 (and every acknowledged object was judged).
Everything the script starts is a child stopped by its PID; a watchdog ends
the script (and its children) if it overruns --timeout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from angiogate.children.process import live  # noqa: E402
from gate import GateProcess  # noqa: E402
from peers import StoreSCP, store_results, storescu  # noqa: E402

AEC = "ANGIOGATE"


def _sop_uid(path: Path) -> str | None:
    import pydicom
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)
    except Exception:
        return None


def make_clips(out_dir: Path, n: int, seed: int) -> list[dict]:
    """`n` small phantom clips (size 128, both syntaxes) with UIDs unique to `seed`."""
    from angiogate.synth import generate
    from angiogate.synth.kinds import KINDS

    per_kind = max(1, math.ceil(n / len(KINDS)))
    rows = generate(out_dir, per_kind=per_kind, seed=seed, size=128,
                    syntaxes=("explicit", "jpeg-lossless"), min_seconds=2.0, max_seconds=4.0,
                    min_frames=20, max_frames=60)[:n]
    for r in rows:
        r["path"] = str(out_dir / r["file"])
    return rows


class Chaos:
    def __init__(self, work_dir: Path, *, clips: int, senders: int, kills: int, timeout: float,
                 seed: int, log=print, outage_s: float = 0.0):
        self.work_dir = Path(work_dir)
        self.clips, self.senders, self.kills, self.timeout = clips, senders, kills, timeout
        self.seed = seed
        self.log = log
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.acked: set[str] = set()           # SOP Instance UIDs a sender saw Success for
        self.attempts = Counter()              # storescu invocations per UID
        self.failures = Counter()              # status texts of failed attempts
        self.stop = threading.Event()
        self.kill_times: list[float] = []
        self.start_time = time.monotonic()
        self.deadline = self.start_time + timeout
        self.gate: GateProcess | None = None
        self.downstream: StoreSCP | None = None
        self.gate_lock = threading.Lock()
        self.outage_s = outage_s
        self.queue_peak = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------ senders
    def _sender(self, files: list[tuple[str, str]]) -> None:
        queue = list(files)
        while queue and not self.stop.is_set() and self.remaining() > 5:
            path, uid = queue.pop(0)
            with self.lock:
                self.attempts[uid] += 1
            try:
                out = storescu([path], self.gate.port, aec=AEC, aet="CHAOSSCU",
                               timeout=min(30.0, max(self.remaining() - 3, 1)))
                results = store_results(out)
                status = results[-1][1] if results else "never attempted (association failed)"
            except subprocess.TimeoutExpired:
                status = "storescu timed out"
            if status == "Success" or status.startswith("Warning"):
                with self.lock:
                    self.acked.add(uid)
            else:
                with self.lock:
                    self.failures[status.split(":")[0]] += 1
                queue.append((path, uid))  # a modality retries later
                time.sleep(0.2 + self.rng.random() * 0.3)

    # ------------------------------------------------------------ killer
    def _killer(self) -> None:
        # kill when a random share of the clips has been acknowledged, so the
        # kills land while pushes run (and judging/forwarding is under way)
        marks = sorted(self.rng.uniform(0.1, 0.85) for _ in range(self.kills))
        for mark in marks:
            while not self.stop.is_set() and self.remaining() > 30:
                with self.lock:
                    done = len(self.acked)
                if done >= mark * self.clips:
                    break
                if not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("sender")):
                    break  # pushes finished early: kill during judging/forwarding instead
                time.sleep(0.05)
            if self.stop.is_set() or self.remaining() <= 30:
                return
            time.sleep(self.rng.uniform(0, 0.5))
            with self.gate_lock:
                self.gate.kill()
                self.kill_times.append(time.monotonic() - self.start_time)
                self.log(f"[chaos] SIGKILL #{len(self.kill_times)} at "
                         f"{self.kill_times[-1]:.1f} s ({len(self.acked)} acknowledged)")
                time.sleep(self.rng.uniform(0, 1.0))
                self.gate.start(timeout=min(90.0, max(self.remaining() - 5, 1)))
                self.log(f"[chaos] gate restarted (pid {self.gate.proc.pid})")

    # ------------------------------------------------------------ run
    def run(self) -> dict:
        clips_dir = self.work_dir / "clips"
        t0 = time.monotonic()
        rows = make_clips(clips_dir, self.clips, self.seed)
        self.log(f"[chaos] {len(rows)} clips generated in {time.monotonic() - t0:.1f} s")
        self.downstream = StoreSCP(self.work_dir / "downstream", aet="STORESCP").start()
        self.gate = GateProcess(self.work_dir / "gate", {
            "model": {"path": "none"},
            "destinations": [{"ae_title": "STORESCP", "host": "127.0.0.1",
                              "port": self.downstream.port}],
        }).start(timeout=min(90.0, self.remaining()))
        self.log(f"[chaos] gate pid {self.gate.proc.pid} on port {self.gate.port}, "
                 f"storescp pid {self.downstream.proc.pid} on port {self.downstream.port}")

        files = [(r["path"], r["sop_instance_uid"]) for r in rows]
        shares = [files[i::self.senders] for i in range(self.senders)]
        threads = [threading.Thread(target=self._sender, args=(s,), daemon=True, name=f"sender{i}")
                   for i, s in enumerate(shares)]
        t_push = time.monotonic()
        for t in threads:
            t.start()
        # Kills and restarts run in this (main) thread: angiogate.children.process.spawn gives children
        # PR_SET_PDEATHSIG, which fires when the *thread* that forked them ends, so a
        # gate restarted from a short-lived thread would be killed when that thread ends.
        self._killer()
        if self.outage_s > 0:
            self._downstream_outage()
        for t in threads:
            t.join(max(self.remaining(), 0.1))
        push_s = time.monotonic() - t_push
        self.stop.set()
        self.log(f"[chaos] pushes done in {push_s:.1f} s: {len(self.acked)}/{len(rows)} acknowledged, "
                 f"{sum(self.attempts.values())} storescu runs, failures {dict(self.failures)}")
        with self.gate_lock:
            if self.gate.proc is None or self.gate.proc.poll() is not None:  # make sure it runs
                self.gate.start(timeout=min(90.0, max(self.remaining(), 1)))

        settled = self._wait_settled()
        return self._figures(rows, push_s, settled)

    def _downstream_outage(self) -> None:
        """Stop the downstream for `outage_s` while work flows; restart it on its port."""
        port = self.downstream.port
        self.downstream.stop()
        self.log(f"[chaos] downstream down for {self.outage_s:.0f} s")
        end = time.monotonic() + min(self.outage_s, max(self.remaining() - 60, 0))
        while time.monotonic() < end:
            try:
                pending = self.gate.query("SELECT COUNT(*) AS n FROM forwards WHERE status = 'pending'")[0]["n"]
                self.queue_peak = max(self.queue_peak, pending)
            except Exception:
                pass  # the gate may be restarting
            time.sleep(1.0)
        self.downstream._want_port = port
        self.downstream.start()
        self.log(f"[chaos] downstream back on port {port}; forward queue peaked at {self.queue_peak} pending")

    def _wait_settled(self) -> bool:
        while self.remaining() > 0:
            try:
                rows = self.gate.verdicts()
            except Exception:
                rows = []
            uids = {r["sop_instance_uid"] for r in rows if r["status"] == "judged"}
            busy = [r for r in rows if r["status"] != "judged"
                    or r["forward_status"] in ("waiting", "pending")]
            if self.acked <= uids and not busy:
                return True
            time.sleep(0.5)
        return False

    def _figures(self, clip_rows: list[dict], push_s: float, settled: bool) -> dict:
        rows = self.gate.verdicts()
        by_uid: dict[str, list[dict]] = {}
        for r in rows:
            by_uid.setdefault(r["sop_instance_uid"], []).append(r)
        received = Counter(u for u in map(_sop_uid, self.downstream.received_files()) if u)
        acked = self.acked
        judged = {u for u in acked if len(by_uid.get(u, [])) == 1 and by_uid[u][0]["status"] == "judged"}
        no_verdict = sorted(acked - judged)
        satisfactory = {u for u in judged if by_uid[u][0]["decision"] == "satisfactory"}
        forwarded = {u for u in satisfactory if received[u] >= 1}
        missing_downstream = sorted(satisfactory - forwarded)
        duplicates = {u: n for u, n in received.items() if n > 1}
        not_satisfactory_sent = sorted(u for u in received
                                       if u in by_uid and by_uid[u][0]["decision"] != "satisfactory")
        decisions = Counter(by_uid[u][0]["decision"] for u in judged)
        lost = len(no_verdict) + len(missing_downstream)
        return {
            "pushed": len(clip_rows),
            "acknowledged": len(acked),
            "judged": len(judged),
            "satisfactory": len(satisfactory),
            "forwarded": len(forwarded),
            "lost": lost,
            "duplicates_downstream": len(duplicates),
            "not_acknowledged": len(clip_rows) - len(acked),
            "verdict_rows": len(rows),
            "rows_not_acknowledged": len(set(by_uid) - acked),
            "received_count_gt1": sum(1 for r in rows if (r.get("received_count") or 1) > 1),
            "decisions": dict(decisions),
            "held_but_forwarded": len(not_satisfactory_sent),
            "kills": len(self.kill_times),
            "kill_times_s": [round(t, 1) for t in self.kill_times],
            "storescu_runs": sum(self.attempts.values()),
            "store_failures": dict(self.failures),
            "push_seconds": round(push_s, 1),
            "total_seconds": round(time.monotonic() - self.start_time, 1),
            "settled": settled,
            "lost_uids": no_verdict + missing_downstream,
        }

    def close(self) -> None:
        self.stop.set()
        if self.gate is not None:
            self.gate.kill()
            if self.gate._engine is not None:
                self.gate._engine.dispose()
        if self.downstream is not None:
            self.downstream.stop()


def run_chaos(work_dir: Path, *, clips: int = 200, senders: int = 4, kills: int = 3,
              timeout: float = 900, seed: int | None = None, log=print, outage_s: float = 0.0) -> dict:
    """Run the scenario in `work_dir`; return the figures (see module doc)."""
    seed = int(time.time()) % 100000 if seed is None else seed
    chaos = Chaos(work_dir, clips=clips, senders=senders, kills=kills, timeout=timeout,
                  seed=seed, log=log, outage_s=outage_s)
    try:
        figures = chaos.run()
        figures["seed"] = seed
        return figures
    finally:
        chaos.close()


def _watchdog(seconds: float) -> None:
    """Last resort: end this process (children die with it: PR_SET_PDEATHSIG + atexit)."""
    def fire():
        time.sleep(seconds)
        print(f"[chaos] watchdog: still running after {seconds:.0f} s, stopping", file=sys.stderr,
              flush=True)
        for proc in live():  # our own children, by PID
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(3)
    threading.Thread(target=fire, daemon=True).start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900, help="hard bound in seconds, all included")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--downstream-outage", type=float, default=0.0, metavar="SECONDS",
                   help="after the kills, stop the downstream this long, then bring it back")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep everything here (default: a temporary folder, deleted afterwards)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = p.parse_args(argv)
    _watchdog(args.timeout + 20)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="angiogate-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # the scenario itself stops 15 s early to leave time to count and clean up
        f = run_chaos(work, clips=args.clips, senders=args.senders, kills=args.kills,
                      timeout=max(args.timeout - 15, 30), seed=args.seed,
                      log=lambda m: print(m, flush=True), outage_s=args.downstream_outage)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"pushed {f['pushed']} / acknowledged {f['acknowledged']} / judged {f['judged']} / "
          f"forwarded {f['forwarded']} (of {f['satisfactory']} satisfactory) / lost {f['lost']}")
    print(f"duplicates at downstream {f['duplicates_downstream']}; never acknowledged "
          f"{f['not_acknowledged']}; kills {f['kills']} at {f['kill_times_s']} s; "
          f"{f['storescu_runs']} storescu runs, failures {f['store_failures']}; "
          f"decisions {f['decisions']}; settled {f['settled']}; {f['total_seconds']} s; seed {f['seed']}")
    if f["lost_uids"]:
        print("lost: " + ", ".join(f["lost_uids"][:20]))
    if args.json:
        print(json.dumps(f))
    return 0 if f["lost"] == 0 and f["settled"] and f["kills"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
