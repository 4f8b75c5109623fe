"""The chaos scenario: clips pushed by senders to one or more gates while the
faults of a plan (faults.py) land, then the wait until the gates settle.

Everything it starts is a child process stopped by its PID: the gates
(tests/gate.py), the downstream storescps and a throwaway PostgreSQL
(database.py). Gates, storescps and PostgreSQL are started and restarted from
the main thread only: children get PR_SET_PDEATHSIG, which fires when the
*thread* that forked them ends. Senders are threads running DCMTK storescu,
one file per invocation, each always to the same gate, as a modality has one
destination; a store that got no Success is pushed again later, as a
modality retries.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from angiogate.store.schema import utcnow
from chaos.clips import content_digest, make_clips, reencoded
from chaos.database import ChaosDatabase
from chaos.faults import REMOVAL_REASON, Kill, Outage, Plan, Removal, plan
from chaos.gates import DrivenGate
from chaos.report import facts_from, figures
from gate import GateProcess
from peers import StoreSCP, store_results, storescu

AEC = "ANGIOGATE"


@dataclass
class Push:
    uid: str
    path: str
    digest: str
    then: "Push | None" = None  # the re-send with other bytes, queued once this one is acknowledged


class Scenario:
    def __init__(self, work_dir: Path, *, clips: int, senders: int, gates: int = 1, kills: int = 3,
                 resends: int = 0, outage_s: float = 0.0, remove_at: int | None = None,
                 database: str = "sqlite", database_url: str | None = None, model: str = "none",
                 timeout: float = 900, seed: int = 0, pace_s: float = 0.0, log=print):
        if gates > 1 and database == "sqlite":
            raise ValueError("several gates need --database postgresql (SQLite is for one gate)")
        if not 0 <= resends <= clips:
            raise ValueError("--resend-other-bytes must be within 0..--clips")
        self.work_dir = Path(work_dir)
        self.n_clips, self.n_senders, self.n_gates = clips, senders, gates
        self.n_kills, self.n_resends, self.outage_s, self.remove_at = kills, resends, outage_s, remove_at
        self.model, self.seed, self.log, self.pace_s = model, seed, log, pace_s
        self.rng = random.Random(seed)
        self.database = ChaosDatabase(database, database_url)
        self.start_time = time.monotonic()
        self.deadline = self.start_time + timeout
        self.lock = threading.Lock()
        self.attempts: dict[str, list[list]] = {}  # uid -> [[content digest, acknowledged?], ...] in order
        self.acked_stores = 0
        self.storescu_runs = 0
        self.failures = Counter()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.gates: list[GateProcess] = []
        self.driven: list[DrivenGate] = []
        self._rolling: list[DrivenGate] = []  # gates still to restart for the new configuration
        self._rolling_sent = False            # the first of them was sent SIGTERM
        self._restarting: list[tuple[Kill, DrivenGate]] = []
        self.downstreams: dict[str, StoreSCP] = {}  # destination key -> storescp
        self.destinations: list[dict] = []
        self.plan = Plan()
        self.released: set[str] = set()
        self.push_s = 0.0
        self.spool_dir = self.work_dir / "spool"  # shared by every gate (deploy/README.md)
        self._digests: dict[str, tuple[str, str] | None] = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start_time

    # ------------------------------------------------------------ set-up
    def _pushes(self) -> list[Push]:
        t0 = time.monotonic()
        rows = make_clips(self.work_dir / "clips", self.n_clips, self.seed)
        pushes = [Push(r["sop_instance_uid"], r["path"], content_digest(Path(r["path"]))[1]) for r in rows]
        for n, push in enumerate(self.rng.sample(pushes, self.n_resends)):
            other = reencoded(Path(push.path), self.work_dir / "resends" / f"{n:05d}.dcm")
            push.then = Push(push.uid, str(other), content_digest(other)[1])
            assert push.then.digest != push.digest
        self.log(f"[chaos] {len(pushes)} clips and {self.n_resends} re-encoded re-sends made in "
                 f"{time.monotonic() - t0:.1f} s")
        return pushes

    def _destination(self, name: str) -> dict:
        scp = StoreSCP(self.work_dir / f"downstream-{name.lower()}", aet=name).start()
        key = f"{name}@127.0.0.1:{scp.port}"
        self.downstreams[key] = scp
        return {"ae_title": name, "host": "127.0.0.1", "port": scp.port}

    def _start_peers(self) -> None:
        self.database.start()
        self.destinations = [self._destination("PACS_A")]
        if self.remove_at is not None:  # the second one is removed mid-run
            self.destinations.append(self._destination("PACS_B"))
        for i in range(self.n_gates):
            gate_id = f"gate-{chr(ord('a') + i)}"
            gate = GateProcess(self.work_dir / gate_id, {
                "gate_id": gate_id, "spool_dir": str(self.spool_dir), "model": {"path": self.model},
                "destinations": list(self.destinations), **self.database.settings()})
            self.gates.append(gate.start(timeout=min(120.0, self.remaining())))
            self.driven.append(DrivenGate(gate, self.log))
            self.log(f"[chaos] {gate_id} pid {gate.proc.pid} on port {gate.port}")
        self.log(f"[chaos] verdict log: {self.database.describe()}; downstreams "
                 + ", ".join(f"{k} (pid {s.proc.pid})" for k, s in self.downstreams.items()))

    # ------------------------------------------------------------ senders
    def _store(self, path: str, port: int) -> str:
        try:
            out = storescu([path], port, aec=AEC, aet="CHAOSSCU", timeout=min(30.0, max(self.remaining() - 3, 1)))
            results = store_results(out)
            return results[-1][1] if results else "never attempted (association failed)"
        except subprocess.TimeoutExpired:
            return "storescu timed out"

    def _sender(self, index: int, pushes: list[Push]) -> None:
        gate = self.gates[index % len(self.gates)]
        rng = random.Random(self.seed * 1000 + index)
        queue = list(pushes)
        while queue and not self.stop.is_set() and self.remaining() > 5:
            push = queue.pop(0)
            with self.lock:
                attempt = [push.digest, False]
                self.attempts.setdefault(push.uid, []).append(attempt)
                self.storescu_runs += 1
            status = self._store(push.path, gate.port)
            if status == "Success" or status.startswith("Warning"):
                with self.lock:
                    attempt[1] = True
                    self.acked_stores += 1
                if push.then is not None:  # re-sent later, among this sender's other clips
                    queue.insert(rng.randint(min(3, len(queue)), len(queue)), push.then)
                if self.pace_s:  # a modality sends a run, then the next one a little later
                    time.sleep(rng.uniform(0, 2 * self.pace_s))
            else:
                with self.lock:
                    self.failures[status.split(":")[0]] += 1
                queue.append(push)  # a modality retries later
                time.sleep(0.2 + rng.random() * 0.3)

    def pushing(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    # ------------------------------------------------------------ faults
    def _due(self, fault) -> bool:
        if fault.fired or not (self.acked_stores >= fault.at_ack or not self.pushing()):
            return False
        if isinstance(fault, Kill):  # a gate is killed while it runs, not while it restarts
            return self._gate(fault.gate).ready()
        if isinstance(fault, Removal):
            return all(d.ready() for d in self.driven)
        return True

    def _gate(self, gate_id: str) -> DrivenGate:
        return next(d for d in self.driven if d.id == gate_id)

    def _fire(self, fault) -> None:
        with self.lock:
            acked = self.acked_stores
        fault.record(acked, self.elapsed(), self.pushing())
        if isinstance(fault, Kill):
            driven = self._gate(fault.gate)
            driven.kill(restart_in_s=self.rng.uniform(0, 1.0))
            self._restarting.append((fault, driven))
            self.log(f"[chaos] SIGKILL {fault.gate} at {fault.landed_s} s, {acked} stores acknowledged "
                     f"(planned at {fault.at_ack}){'' if fault.during_pushes else ', AFTER the pushes ended'}")
        elif isinstance(fault, Outage):
            for scp in self.downstreams.values():
                scp.stop()
            self._outage_end = time.monotonic() + min(fault.seconds, max(self.remaining() - 60, 0))
            self.log(f"[chaos] downstreams down for {fault.seconds:.0f} s from {fault.landed_s} s, "
                     f"{acked} stores acknowledged")
        elif isinstance(fault, Removal):
            fault.started_utc = utcnow()
            kept = [d for d in self.destinations if d["ae_title"] != "PACS_B"]
            for gate in self.gates:
                gate.settings["destinations"] = kept
                gate.config_path.write_text(yaml.safe_dump(gate.settings))
            self._rolling, self._rolling_sent = list(self.driven), False  # one at a time, as a site would
            self.log(f"[chaos] {fault.destination} removed from the configuration at {fault.landed_s} s "
                     f"({acked} stores acknowledged); restarting the gates with it, one at a time")

    def _service_gates(self) -> None:
        for driven in self.driven:
            driven.service()
        for kill, driven in list(self._restarting):
            if driven.ready():
                kill.restart_s = driven.last_start_s
                self._restarting.remove((kill, driven))
        if not self._rolling:
            return
        if not self._rolling_sent:  # the next gate's turn, once it runs (not while a kill's restart)
            if self._rolling[0].ready():
                self._rolling[0].restart()
                self._rolling_sent = True
        elif self._rolling[0].ready():
            self._rolling.pop(0)
            self._rolling_sent = False
            if not self._rolling:
                self.plan.removal.done_utc = utcnow()
                self.log(f"[chaos] every gate runs without {self.plan.removal.destination} "
                         f"({self.elapsed():.1f} s)")

    def _end_outage(self, outage: Outage) -> None:
        for scp in self.downstreams.values():
            scp._want_port = scp.port
            scp.start()
        outage.ended_s = round(self.elapsed(), 1)
        self._outage_end = None
        self.log(f"[chaos] downstreams back on their ports at {outage.ended_s} s; "
                 f"forward queue peaked at {outage.queue_peak} pending")

    def _pending_forwards(self) -> int | None:
        try:
            return self.gates[0].query("SELECT COUNT(*) AS n FROM forwards WHERE status = 'pending'")[0]["n"]
        except Exception:
            return None  # the database is busy or the gate restarting

    def _push_with_faults(self, pushes: list[Push]) -> None:
        shares = [pushes[i::self.n_senders] for i in range(self.n_senders)]
        self.threads = [threading.Thread(target=self._sender, args=(i, s), daemon=True, name=f"sender{i}")
                        for i, s in enumerate(shares)]
        t_push = time.monotonic()
        for t in self.threads:
            t.start()
        self._outage_end = None
        last_sample = 0.0
        while self.remaining() > 10:
            self._service_gates()
            for fault in self.plan.all():
                if self._due(fault):
                    self._fire(fault)
            if self._outage_end is not None:
                if time.monotonic() - last_sample >= 1.0:
                    last_sample = time.monotonic()
                    pending = self._pending_forwards()
                    if pending is not None:
                        self.plan.outage.queue_peak = max(self.plan.outage.queue_peak, pending)
                if time.monotonic() >= self._outage_end:
                    self._end_outage(self.plan.outage)
            if (not self.pushing() and self._outage_end is None and all(f.fired for f in self.plan.all())
                    and not self._rolling and all(d.ready() for d in self.driven)):
                break
            if not self.pushing() and self.push_s == 0.0:
                self.push_s = time.monotonic() - t_push
            time.sleep(0.05)
        if self._outage_end is not None:  # out of time: bring the downstreams back for the count
            self._end_outage(self.plan.outage)
        self.stop.set()
        for t in self.threads:
            t.join(max(self.remaining(), 0.1))
        self.push_s = self.push_s or time.monotonic() - t_push
        acked = sum(1 for a in self.attempts.values() if any(ok for _, ok in a))
        self.log(f"[chaos] pushes done in {self.push_s:.1f} s: {acked}/{self.n_clips} clips acknowledged, "
                 f"{self.acked_stores} stores acknowledged, {self.storescu_runs} storescu runs, "
                 f"failures {dict(self.failures)}")

    # ------------------------------------------------------------ settling
    def expected(self) -> dict[str, set[str]]:
        """Acknowledged UID -> the content digests its verdict may be for: the last
        acknowledged one, and any pushed after it without an answer (the gate may
        have kept those bytes before the kill that cut the answer off)."""
        out = {}
        for uid, tries in self.attempts.items():
            last = max((i for i, (_, ok) in enumerate(tries) if ok), default=None)
            if last is not None:
                out[uid] = {digest for digest, _ in tries[last:]}
        return out

    def spool_digest(self, file_path: str) -> tuple[str, str] | None:
        if file_path not in self._digests:  # spool objects are named by content: never rewritten
            self._digests[file_path] = content_digest(self.spool_dir / file_path)
        return self._digests[file_path]

    def _releasable(self, verdicts: list[dict], forwards: list[dict]) -> list[str]:
        """Clips `failed` only because their destination was removed: an operator releases them."""
        failed_for_other = {f["verdict_id"] for f in forwards
                            if f["status"] == "failed" and REMOVAL_REASON not in (f["last_error"] or "")}
        return [v["sop_instance_uid"] for v in verdicts
                if v["forward_status"] == "failed" and v["id"] not in failed_for_other]

    def _release(self, uids: list[str]) -> None:
        gate = self.gates[0]
        out = subprocess.run([sys.executable, "-m", "angiogate", "release", *uids, "--config",
                              str(gate.config_path), "--wait", "0", "--by", "chaos"],
                             cwd=gate.work_dir, capture_output=True, text=True, timeout=120)
        done = {line.split(":")[0] for line in out.stdout.splitlines() if line.endswith(": released")}
        self.released |= done
        self.log(f"[chaos] `angiogate release` of {len(uids)} clip(s) failed for the removed destination: "
                 f"{len(done)} released")

    def _settle(self) -> bool:
        for driven in self.driven:
            driven.wait_ready(timeout=min(120.0, max(self.remaining(), 1)))
        expected = self.expected()
        while self.remaining() > 0:
            try:
                verdicts = self.gates[0].verdicts()
                forwards = self.gates[0].query("SELECT * FROM forwards")
            except Exception:
                time.sleep(1.0)
                continue
            releasable = self._releasable(verdicts, forwards)
            if releasable:
                self._release(releasable)
                time.sleep(1.0)
                continue
            by_uid = {v["sop_instance_uid"]: v for v in verdicts}
            judged = all(uid in by_uid and by_uid[uid]["status"] == "judged"
                         and (self.spool_digest(by_uid[uid]["file_path"]) or ("", ""))[1] in digests
                         for uid, digests in expected.items())
            busy = any(v["forward_status"] in ("waiting", "pending") for v in verdicts) or any(
                f["status"] == "pending" for f in forwards)
            if judged and not busy:
                return True
            time.sleep(1.0)
        busy = [(v["sop_instance_uid"][-12:], v["status"], v["forward_status"],
                 sorted((f["destination"].split("@")[0], f["status"]) for f in forwards if f["verdict_id"] == v["id"]))
                for v in verdicts if v["status"] != "judged" or v["forward_status"] in ("waiting", "pending")]
        self.log(f"[chaos] not settled: {len(busy)} row(s) busy, e.g. {busy[:10]}")
        return False

    # ------------------------------------------------------------ the run
    def run(self) -> dict:
        pushes = self._pushes()
        self._start_peers()
        removed = next((k for k in self.downstreams if k.startswith("PACS_B@")), None)
        self.plan = plan(self.rng, stores=self.n_clips + self.n_resends,
                         gates=[g.settings["gate_id"] for g in self.gates], kills=self.n_kills,
                         outage_s=self.outage_s, remove_at=self.remove_at, removed=removed)
        self._push_with_faults(pushes)
        t_settle = time.monotonic()
        settled = self._settle()
        self.log(f"[chaos] {'settled' if settled else 'NOT settled'} {time.monotonic() - t_settle:.1f} s "
                 f"after the pushes")
        return figures(facts_from(self, settled))

    def close(self) -> None:
        self.stop.set()
        for gate in self.gates:
            gate.kill()
            if gate._engine is not None:
                gate._engine.dispose()
        for scp in self.downstreams.values():
            scp.stop()
        self.database.close()
