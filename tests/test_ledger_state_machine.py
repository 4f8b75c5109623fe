"""The verdict log and its workers as a state machine (issue 14): hypothesis
drives the real ledger (SQLite in tmp_path), the real spool and intake, and the
real judge and forward workers step by step in this process, through any order
of: an object received new, re-sent with the same or other bytes, a judge
claim or step, a forward claim or send (succeeding, refused, destination
down), a crash (workers dropped mid-claim, leases left behind), a clean stop,
a restart (what `Gate.start` does: clear_leases, reconcile_destinations, new
workers) with or without a configuration change (a destination added, removed
or re-addressed; none configured: the outbox).

After every step: every lease belongs to the running workers, and a clip's
count of claims without a verdict (judge_attempts, which the judge_crashed
guard reads) is no more than the crashes while this content was leased plus
the claim holding it now (it found that replacements inherited the count:
fixed in ledger.record_receipt). After
settling (destinations healthy, queues drained, failed clips released with
`release` as an operator would): every acknowledged object has a verdict for
its latest content (sha256), decided by that content, or `judge_crashed`;
every satisfactory one is `forwarded`, and each destination it was due at
(the ones configured when it was judged, as re-addressed, removed or released
since) holds its latest content; no row is leased, received or pending.

The judge decides by content (the first byte: even satisfactory, odd
unsatisfactory), so no model runs; DICOM destinations are a target whose
failures the machine controls (a real peer per step would be too slow), the
outbox is the real one. Runs derandomized (one fixed sequence of examples),
16 examples of 25 steps: 50 s for 20 on this 2-core machine at load 17.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import text

from angiogate.config import Destination, load_config
from angiogate.decisions import SATISFACTORY, UNSATISFACTORY
from angiogate.forward.dicom_target import ae_title_of, destination_key
from angiogate.forward.outbox_target import OutboxTarget
from angiogate.forward.target import Item, SendError
from angiogate.forward.worker import ForwardWorker, reconcile_destinations
from angiogate.judge.verdict import Judge, Judgement, PreparedClip
from angiogate.judge.worker import MAX_JUDGE_ATTEMPTS, JudgeWorker
from angiogate.receive.intake import SUCCESS, Intake
from angiogate.store.db import open_database
from angiogate.store.ledger import clear_leases, claim_forwards, release
from angiogate.store.spool import Spool

GATE = "gate"
UIDS = [f"1.2.826.0.1.3680043.10.1414.{n}" for n in range(1, 5)]
PEERS = {"PEERA": (1101, 1102), "PEERB": (1201, 1202)}  # AE title: the two addresses it may have
SETTLE_ROUNDS = 60


def content(uid: str, version: int) -> bytes:
    """An object's bytes: the version byte decides the verdict, the UID keeps objects apart."""
    return bytes([version]) + b" object " + uid.encode()


def decision_for(data: bytes) -> str:
    return SATISFACTORY if data[0] % 2 == 0 else UNSATISFACTORY


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentJudge(Judge):
    """Decides by the file's first byte; the worker's pipeline calls `prepare` in its threads."""

    def prepare(self, path, **kwargs):
        decision = decision_for(Path(path).read_bytes())
        return PreparedClip.finished(Judgement(decision, "content", [f"first byte {decision}"],
                                               model_version="content-test"))


class ControlledPeer:
    """A DICOM destination as a forward target: keeps what it is sent, fails when told."""

    def __init__(self, key: str, machine: "LedgerMachine"):
        self.key, self.machine = key, machine

    def item(self, job, path: Path):
        return Item(path, job.sop_class_uid or "", job.transfer_syntax_uid or "")

    def open_for(self, items) -> None:
        if self.machine.failure.get(self.key) == "down":
            raise SendError(f"{self.key} is down", connection=True)

    def send(self, job, item):
        if self.machine.failure.get(self.key) == "refuse":
            raise SendError("refused: 0xA700", status=0xA700)
        self.machine.delivered.setdefault(self.key, {}).setdefault(job.sop_instance_uid, []).append(
            sha256(item.path.read_bytes()))
        return 0x0000, item.transfer_syntax_uid

    def close(self) -> None:
        pass


def make_machine(base: Path):
    """The machine class for this test: each example works in its own folder under `base`,
    on a copy of one migrated verdict log (migrating each example's would take most of the time)."""
    runs = itertools.count()
    template = base / "template.sqlite3"
    open_database(f"sqlite:///{template}").dispose()

    class Machine(LedgerMachine):
        def __init__(self):
            work = base / f"run{next(runs)}"
            work.mkdir()
            shutil.copyfile(template, work / "log.sqlite3")
            super().__init__(work)

    return Machine


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, work: Path):
        super().__init__()
        self.work = work
        site = work / "site.yaml"
        site.write_text(yaml.safe_dump({
            "model": {"path": "none"}, "outbox_dir": str(work / "outbox"), "spool_dir": str(work / "spool"),
            "workers": {"poll_interval_s": 0.01, "lease_s": 3600, "decode_threads": 1, "judge_batch": 1},
            "policies": {"mode": "enforce", "non_cine": "hold", "on_error": "hold"},
            "forwarding": {"retry_base_s": 0.001, "retry_cap_s": 0.001, "max_attempts": 2},
        }))
        self.config = load_config(site)
        self.engine = open_database(f"sqlite:///{work / 'log.sqlite3'}")
        self.spool = Spool(work / "spool", gate_id=GATE)
        self.outbox = OutboxTarget(work / "outbox")
        self.destinations: dict[str, int] = {"PEERA": PEERS["PEERA"][0]}  # AE title: port, as configured now
        self.failure: dict[str, str] = {}       # destination key: "refuse" | "down"
        self.delivered: dict[str, dict[str, list[str]]] = {}  # peer key: uid: shas in order
        self.latest: dict[str, str] = {}        # uid: sha256 of the last acknowledged bytes
        self.versions: dict[str, int] = {}
        self.due: dict[str, set[str]] = {}      # satisfactory uid: destination keys it is due at
        self.held_jobs: dict[str, list] = {}    # key: a claimed, unsent batch of the running worker
        self.received = 0
        self.crashes_while_leased: Counter[tuple[str, str]] = Counter()  # (uid, sha256): crashes
        self.runs = 0
        self._start()

    # ------------------------------------------------------------ the gate's pieces

    def keys(self) -> list[str]:
        if not self.destinations:
            return [self.outbox.key]
        return [destination_key(Destination(ae_title=ae, host="127.0.0.1", port=port))
                for ae, port in sorted(self.destinations.items())]

    def _target(self, key: str):
        return self.outbox if key == self.outbox.key else ControlledPeer(key, self)

    def _start(self) -> None:
        """What Gate.start does before the SCP listens, in its order."""
        self.runs += 1
        self.owner = f"{GATE}/{self.runs}"
        clear_leases(self.engine, GATE)
        keys = self.keys()
        self._expect_reconcile(keys)
        reconcile_destinations(self.engine, keys)
        self.stop = threading.Event()
        self.judge_worker = JudgeWorker(self.config, self.engine, self.spool, ContentJudge(self.config, None), keys,
                                 self.owner, self.stop)
        self.forwarders = {key: ForwardWorker(key, self.config, self.engine, self.spool, self.owner, self.stop,
                                              self._target(key)) for key in keys}
        self.intake = Intake(self.engine, self.spool)
        self.held_jobs = {}

    def _crash(self) -> None:
        """The process dies: in-memory work is gone, its leases stay in the log."""
        for r in self.sql(f"SELECT sop_instance_uid, file_sha256 FROM verdicts WHERE status = 'received' "
                          f"AND lease_owner = '{self.owner}'"):
            self.crashes_while_leased[(r["sop_instance_uid"], r["file_sha256"])] += 1
        self.judge_worker.pipeline.close()
        self.held_jobs = {}

    def _expect_reconcile(self, keys: list[str]) -> None:
        """The model of reconcile_destinations: a due destination no longer configured is
        followed to its re-addressed key if the forward is still pending, kept if it was
        sent, else dropped (abandoned or failed: `release` at settle sends to the keys
        configured then)."""
        rows = {(r["sop_instance_uid"], r["destination"]): r["status"]
                for r in self.sql("SELECT sop_instance_uid, destination, status FROM forwards")}
        for uid, due in self.due.items():
            for old in sorted(due - set(keys)):
                status = rows.get((uid, old))
                if status == "sent":
                    continue
                due.discard(old)
                same = [k for k in keys if ae_title_of(k) == ae_title_of(old) and k != self.outbox.key]
                if status == "pending" and len(same) == 1 and old != self.outbox.key:
                    due.add(same[0])

    def sql(self, query: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(query))]

    def _judge_step(self) -> None:
        before = {r["sop_instance_uid"] for r in self.sql("SELECT sop_instance_uid FROM verdicts "
                                                          "WHERE status = 'received'")}
        self.judge_worker.step()
        for r in self.sql("SELECT sop_instance_uid, decision FROM verdicts WHERE status = 'judged'"):
            if r["sop_instance_uid"] in before:
                if r["decision"] == SATISFACTORY:
                    self.due[r["sop_instance_uid"]] = set(self.judge_worker.destinations)
                else:
                    self.due.pop(r["sop_instance_uid"], None)

    def _send(self, key: str) -> None:
        jobs = self.held_jobs.pop(key, None) or claim_forwards(self.engine, key, self.owner,
                                                               self.config.workers.lease_s, 16)
        if jobs:
            self.forwarders[key].send_batch(jobs)

    # ------------------------------------------------------------ rules

    @initialize(versions=st.lists(st.integers(0, 5), min_size=len(UIDS), max_size=len(UIDS)))
    def receive_some(self, versions):
        """Every example starts with objects (rules disabled for an example may include `receive`)."""
        for n, version in enumerate(versions):
            self.receive(n, version, same=False)

    @rule(n=st.integers(0, len(UIDS) - 1), version=st.integers(0, 5), same=st.booleans())
    def receive(self, n, version, same):
        """A new object, or one re-sent with the same bytes (`same`) or with other bytes."""
        uid = UIDS[n]
        if uid in self.versions and same:
            version = self.versions[uid]
        elif uid in self.versions and version == self.versions[uid]:
            version += 1
        data = content(uid, version)
        self.received += 1
        temp = self.spool.incoming / f"receive-{self.received}.tmp"
        temp.write_bytes(data)
        status = self.intake.accept(temp, affected_sop_instance_uid=uid, calling_ae_title="MODALITY",
                                    source_address="127.0.0.1")
        assert status == SUCCESS
        if self.latest.get(uid) != sha256(data):
            self.due.pop(uid, None)  # judged anew
        self.latest[uid] = sha256(data)
        self.versions[uid] = version

    @rule(claim_only=st.booleans())
    def judge(self, claim_only):
        """The judge worker claims what its pipeline has room for (and starts preparing
        it), or also judges and records one batch."""
        if claim_only:
            self.judge_worker._claim()
        else:
            self._judge_step()

    @rule(data=st.data(), claim_only=st.booleans())
    def forward(self, data, claim_only):
        """A forward worker claims a batch (and holds it), or sends the batch it holds or a new one."""
        key = data.draw(st.sampled_from(sorted(self.forwarders)))
        if not claim_only:
            self._send(key)
        elif key not in self.held_jobs:  # the worker claims again only after sending what it holds
            self.held_jobs[key] = claim_forwards(self.engine, key, self.owner, self.config.workers.lease_s, 16)

    @rule(ae=st.sampled_from(sorted(PEERS)), how=st.sampled_from(["refuse", "down", None]))
    def destination_health(self, ae, how):
        """A peer starts refusing objects (0xA700, charged), goes down (no association,
        uncharged), or is healthy again; under either of its addresses."""
        for port in PEERS[ae]:
            key = destination_key(Destination(ae_title=ae, host="127.0.0.1", port=port))
            if how is None:
                self.failure.pop(key, None)
            else:
                self.failure[key] = how

    @rule(stop=st.sampled_from(["clean", "crash", "crash mid-send"]),
          change=st.sampled_from(["none", "add", "remove", "readdress", "outbox"]),
          ae=st.sampled_from(sorted(PEERS)), data=st.data())
    def restart(self, stop, change, ae, data):
        """The gate stops (cleanly; or dies, leaving leases; or dies after a peer took an
        object but before the log recorded it), then starts, perhaps with a new configuration."""
        if stop == "clean":
            self.stop.set()
            for key, jobs in self.held_jobs.items():  # a batch in hand is given back, uncharged
                self.forwarders[key].send_batch(jobs)
            self.held_jobs = {}
            self.judge_worker._shut_down()  # what the judge's thread does last: release what it holds
        else:
            if stop == "crash mid-send":
                self._deliver_unrecorded(data.draw(st.sampled_from(sorted(self.forwarders))))
            self._crash()
        if change == "add" and ae not in self.destinations:
            self.destinations[ae] = PEERS[ae][0]
        elif change == "remove":
            self.destinations.pop(ae, None)
        elif change == "readdress" and ae in self.destinations:
            ports = PEERS[ae]
            self.destinations[ae] = ports[1] if self.destinations[ae] == ports[0] else ports[0]
        elif change == "outbox":
            self.destinations.clear()
        self._start()

    def _deliver_unrecorded(self, key: str) -> None:
        jobs = self.held_jobs.get(key) or claim_forwards(self.engine, key, self.owner,
                                                         self.config.workers.lease_s, 16)
        if not jobs:
            return
        worker = self.forwarders[key]
        item = worker._item(jobs[0])
        if isinstance(item, Item):
            try:
                worker.target.open_for([item])
                worker.target.send(jobs[0], item)
            except SendError:
                pass

    # ------------------------------------------------------------ invariants

    @invariant()
    def leases_belong_to_the_running_workers(self):
        for table in ("verdicts", "forwards"):
            owners = {r["lease_owner"] for r in self.sql(f"SELECT DISTINCT lease_owner FROM {table}")}
            assert owners <= {None, self.owner}, (table, owners, self.owner)

    @invariant()
    def claims_are_counted_against_the_content_that_crashed(self):
        """A clip's count of claims without a verdict (what the judge_crashed guard reads) grows
        only by crashes while this very content was leased, plus the claim that holds it now."""
        for r in self.sql("SELECT sop_instance_uid, file_sha256, judge_attempts, lease_owner FROM verdicts "
                          "WHERE status = 'received'"):
            crashes = self.crashes_while_leased[(r["sop_instance_uid"], r["file_sha256"])]
            assert r["judge_attempts"] <= crashes + (r["lease_owner"] is not None), (r, crashes)

    def _settle_and_check(self) -> None:
        self.failure.clear()
        for key in list(self.held_jobs):
            self._send(key)
        for _ in range(SETTLE_ROUNDS):
            if self.sql("SELECT id FROM verdicts WHERE status = 'received'"):
                self._judge_step()
                continue
            if self.sql("SELECT id FROM forwards WHERE status = 'pending'"):
                for key in sorted(self.forwarders):
                    self._send(key)
                self.stop.wait(0.002)  # retries are due 1 ms after a failure
                continue
            failed = [r["sop_instance_uid"] for r in self.sql(
                "SELECT sop_instance_uid FROM verdicts WHERE forward_status = 'failed'")]
            if not failed:
                break
            outcomes = release(self.engine, failed, self.keys(), "state machine")
            assert set(outcomes.values()) == {"released"}, outcomes
            for uid in failed:
                self.due.setdefault(uid, set()).update(self.keys())
        else:
            pytest.fail(f"not settled after {SETTLE_ROUNDS} rounds")
        self._check_settled()

    def _check_settled(self) -> None:
        verdicts = {r["sop_instance_uid"]: r for r in self.sql("SELECT * FROM verdicts")}
        assert set(verdicts) == set(self.latest)
        for uid, sha in self.latest.items():
            v = verdicts[uid]
            assert v["status"] == "judged" and v["file_sha256"] == sha and v["lease_owner"] is None, v
            data = (self.spool.root / v["file_path"]).read_bytes()
            assert sha256(data) == sha
            if v["reason_code"] == "judge_crashed":  # only after crashing the gate as often, this content
                assert self.crashes_while_leased[(uid, sha)] >= MAX_JUDGE_ATTEMPTS, v
                assert v["decision"] == "error" and v["forward_status"] == "held", v
                continue
            assert v["decision"] == decision_for(data), v
            if v["decision"] != SATISFACTORY:
                assert v["forward_status"] == "held" and uid not in self.due, v
                continue
            assert v["forward_status"] == "forwarded", v
            rows = {r["destination"]: r for r in self.sql(
                f"SELECT * FROM forwards WHERE sop_instance_uid = '{uid}' AND status != 'superseded'")}
            assert self.due[uid] <= set(rows), (uid, self.due[uid], rows)
            for key, row in rows.items():
                assert row["status"] == "sent" and row["lease_owner"] is None, row
                if key == self.outbox.key:
                    assert sha256((self.work / "outbox" / f"{uid}.dcm").read_bytes()) == sha
                else:
                    assert self.delivered[key][uid][-1] == sha, (key, uid)
        assert not self.sql("SELECT id FROM forwards WHERE status = 'pending' OR lease_owner IS NOT NULL")

    def teardown(self):
        try:
            self._settle_and_check()
        finally:
            self.stop.set()
            self.judge_worker.pipeline.close()
            self.engine.dispose()
            shutil.rmtree(self.work, ignore_errors=True)


def test_ledger_and_workers_keep_every_acknowledged_object(tmp_path):
    run_state_machine_as_test(make_machine(tmp_path), settings=settings(
        max_examples=16, stateful_step_count=25, derandomize=True, database=None, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
