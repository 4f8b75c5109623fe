"""What the chaos run shows: facts gathered once the run ends, figures from them.

Definitions (each acknowledged clip is counted by its SOP Instance UID):

- judged: its verdict row is `judged`, the spool file it names holds the
  content last acknowledged to the sender (or bytes pushed after that whose
  answer a kill cut off), and the row's file_sha256 is that file's sha256.
- forwarded (per destination): satisfactory (or otherwise forwarded by
  policy) clips whose latest content is at that downstream.
- duplicates (per destination): extra copies of the same content at one
  downstream (an at-least-once forward cut short by a kill sends again);
  copies of content a re-send replaced are `superseded_copies`; neither is lost.
- stuck: acknowledged but not settled by the deadline: unjudged; a forward
  still pending; a lease (verdict or forward) not expired whose owner is no
  living gate run.
- lost: acknowledged without a verdict for its latest content, or to be
  forwarded and its latest content missing at a destination configured for
  it: every destination configured at the end, and the removed one if the
  clip was judged before the removal began, unless its forward there was
  abandoned for the removal (`failed`, then released: counted apart).

Exit 0 only if stuck == 0, lost == 0 and every planned fault landed, each
kill while the senders were still pushing.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime

from angiogate.engines.info import file_digest as file_sha256
from chaos.clips import content_digest
from chaos.faults import REMOVAL_REASON


def as_datetime(value) -> datetime | None:
    """A timestamp column as read through a plain SQL query (SQLite gives text)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def facts_from(scenario, settled: bool) -> dict:
    """Everything the figures need, read from the scenario, the verdict log, the spool
    and the downstream folders."""
    gate = scenario.gates[0]
    verdicts = gate.verdicts()
    forwards = gate.query("SELECT * FROM forwards")
    if gate.database_url.startswith("postgresql"):
        db_now = gate.query("SELECT CAST(timezone('UTC', CURRENT_TIMESTAMP) AS timestamp) AS now")[0]["now"]
    else:
        from angiogate.store.schema import utcnow
        db_now = utcnow()
    events = Counter({r["kind"]: r["n"] for r in gate.query("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")})
    spool = {}
    for v in verdicts:
        path = scenario.spool_dir / v["file_path"]
        spool[v["file_path"]] = {"digest": scenario.spool_digest(v["file_path"]),
                                 "sha256": file_sha256(path) if path.is_file() else None}
    downstream = {key: [content_digest(p) for p in scp.received_files()]
                  for key, scp in scenario.downstreams.items()}
    removal = scenario.plan.removal
    with scenario.lock:
        attempts = {uid: [list(a) for a in tries] for uid, tries in scenario.attempts.items()}
    return {
        "pushed": scenario.n_clips, "resends_planned": scenario.n_resends,
        "attempts": attempts, "expected": scenario.expected(),
        "acked_stores": scenario.acked_stores, "storescu_runs": scenario.storescu_runs,
        "store_failures": dict(scenario.failures),
        "verdicts": verdicts, "forwards": forwards, "db_now": db_now, "events": dict(events), "spool": spool,
        "downstream": downstream,
        "kept": [k for k in scenario.downstreams if removal is None or k != removal.destination],
        "removal": removal, "plan": scenario.plan, "released": sorted(scenario.released),
        "living": [f"{g.settings['gate_id']}/{g.proc.pid}." for g in scenario.gates if g.child.alive()],
        "gates": len(scenario.gates), "database": scenario.database.describe(), "model": scenario.model,
        "push_seconds": round(scenario.push_s, 1), "total_seconds": round(scenario.elapsed(), 1),
        "settled": settled, "seed": scenario.seed,
    }


def figures(f: dict) -> dict:
    by_uid = {v["sop_instance_uid"]: v for v in f["verdicts"]}
    forwards_of = defaultdict(list)
    for fw in f["forwards"]:
        forwards_of[fw["verdict_id"]].append(fw)

    # verdicts: one for the latest content of every acknowledged clip
    latest, no_verdict, unjudged = {}, [], []
    for uid, digests in f["expected"].items():
        v = by_uid.get(uid)
        if v is not None and v["status"] != "judged":
            unjudged.append(uid)
            continue
        kept = f["spool"].get(v["file_path"]) if v is not None else None
        if (kept is None or kept["digest"] is None or kept["digest"][0] != uid or kept["digest"][1] not in digests
                or kept["sha256"] != v["file_sha256"]):
            no_verdict.append(uid)
            continue
        latest[uid] = kept["digest"][1]

    # what reached each downstream
    copies = {key: Counter(d for d in files if d is not None) for key, files in f["downstream"].items()}
    last_copy = {key: {d[0]: d[1] for d in files if d is not None} for key, files in f["downstream"].items()}
    at = defaultdict(lambda: defaultdict(set))  # destination -> uid -> digests there
    for key, counter in copies.items():
        for uid, digest in counter:
            at[key][uid].add(digest)
    duplicates = {key: sum(n - 1 for n in c.values()) for key, c in copies.items()}
    superseded_copies = {key: sum(n for (uid, d), n in c.items() if uid in latest and d != latest[uid])
                         for key, c in copies.items()}
    stale_last = {key: sum(1 for uid, d in last.items() if uid in latest and d != latest[uid]
                           and latest[uid] in at[key][uid]) for key, last in last_copy.items()}

    # deliveries owed
    removal = f["removal"]
    removed = removal.destination if removal is not None else None
    forwarded = {key: 0 for key in f["downstream"]}
    undelivered, abandoned, decisions, held_but_forwarded = [], [], Counter(), []
    for uid, digest in latest.items():
        v = by_uid[uid]
        decisions[v["decision"]] += 1
        if v["forward_status"] == "held":
            if any(digest in at[key][uid] for key in at):
                held_but_forwarded.append(uid)
            if v["decision"] != "satisfactory":
                continue
        owed = list(f["kept"])
        if removed is not None:
            row = next((fw for fw in forwards_of[v["id"]] if fw["destination"] == removed), None)
            if row is not None and REMOVAL_REASON in (row["last_error"] or "") and row["status"] != "sent":
                abandoned.append(uid)
            elif row is not None and row["status"] in ("sent", "pending", "failed"):
                owed.append(removed)
            elif as_datetime(v["decided_at"]) < removal.started_utc:
                owed.append(removed)  # judged while the destination was configured, never queued for it
        for key in owed:
            if digest in at[key][uid]:
                forwarded[key] = forwarded.get(key, 0) + 1
            else:
                undelivered.append((uid, key))
        for key in set(at) - set(owed):
            if digest in at[key][uid]:
                forwarded[key] = forwarded.get(key, 0) + 1

    # stuck
    now = as_datetime(f["db_now"])
    orphan_leases = 0
    for row in f["verdicts"] + f["forwards"]:
        owner, until = row["lease_owner"], as_datetime(row["lease_until"])
        if owner and until is not None and until > now and not any(owner.startswith(p) for p in f["living"]):
            orphan_leases += 1
    pending_forwards = sum(1 for fw in f["forwards"] if fw["status"] == "pending")
    # a verdict that still says waiting or pending when no forward of it is pending
    pending_ids = {fw["verdict_id"] for fw in f["forwards"] if fw["status"] == "pending"}
    unsettled = sum(1 for v in f["verdicts"] if v["status"] == "judged"
                    and v["forward_status"] in ("waiting", "pending") and v["id"] not in pending_ids)
    failed_forwards = sum(1 for fw in f["forwards"] if fw["status"] == "failed")
    stuck = len(unjudged) + pending_forwards + orphan_leases + unsettled
    lost_uids = sorted(set(no_verdict) | {uid for uid, _ in undelivered})

    plan = f["plan"]
    kills = [{"gate": k.gate, "planned_at": k.at_ack, "acknowledged_at_kill": k.landed_ack,
              "seconds": k.landed_s, "during_pushes": k.during_pushes, "restart_s": k.restart_s}
             for k in plan.kills]
    outage = plan.outage
    acknowledged = sum(1 for tries in f["attempts"].values() if any(ok for _, ok in tries))
    resends_acked = sum(1 for tries in f["attempts"].values() if len({d for d, ok in tries if ok}) > 1)
    faults_ok = all(x.fired for x in plan.all()) and all(k.during_pushes for k in plan.kills)
    return {
        "pushed": f["pushed"], "acknowledged": acknowledged, "not_acknowledged": f["pushed"] - acknowledged,
        "resends_planned": f["resends_planned"], "resends_acknowledged": resends_acked,
        "stores_acknowledged": f["acked_stores"], "storescu_runs": f["storescu_runs"],
        "store_failures": f["store_failures"],
        "judged": len(latest), "decisions": dict(decisions),
        "to_forward": sum(1 for uid in latest if by_uid[uid]["forward_status"] != "held"
                          or by_uid[uid]["decision"] == "satisfactory"),
        "forwarded": forwarded,
        "duplicates": duplicates, "duplicates_total": sum(duplicates.values()),
        "superseded_copies": superseded_copies, "stale_last_copy": stale_last,
        "downstream_copies": {key: sum(c.values()) for key, c in copies.items()},
        "held_but_forwarded": len(held_but_forwarded),
        "removed_destination": removed, "abandoned_by_removal": len(abandoned),
        "released": len(f["released"]), "failed_forwards": failed_forwards,
        "stuck": stuck, "stuck_unjudged": len(unjudged), "stuck_pending_forwards": pending_forwards,
        "stuck_orphan_leases": orphan_leases, "stuck_verdicts_pending_without_forward": unsettled,
        "lost": len(lost_uids), "lost_no_verdict": len(no_verdict), "lost_undelivered": len(undelivered),
        "lost_uids": lost_uids[:50],
        "kills": kills, "kills_after_pushes": sum(1 for k in plan.kills if k.during_pushes is False),
        "outage": None if outage is None else {"seconds": outage.seconds, "started_s": outage.landed_s,
                                               "acknowledged_at_start": outage.landed_ack,
                                               "ended_s": outage.ended_s, "queue_peak": outage.queue_peak},
        "removal": None if removal is None else {"acknowledged_at": removal.landed_ack,
                                                 "seconds": removal.landed_s,
                                                 "during_pushes": removal.during_pushes},
        "faults_landed": faults_ok,
        "events": f["events"],
        "gates": f["gates"], "database": f["database"], "model": f["model"],
        "push_seconds": f["push_seconds"], "total_seconds": f["total_seconds"], "settled": f["settled"],
        "seed": f["seed"],
        "ok": stuck == 0 and not lost_uids and faults_ok,
    }


def summary(r: dict) -> str:
    """The human lines; `json.dumps(r)` is the machine one."""
    fwd = ", ".join(f"{k.split('@')[0]} {n}" for k, n in r["forwarded"].items())
    dup = ", ".join(f"{k.split('@')[0]} {n}" for k, n in r["duplicates"].items())
    kills = "; ".join(f"{k['gate']} at {k['acknowledged_at_kill']} acknowledged ({k['seconds']} s"
                      f"{'' if k['during_pushes'] else ', AFTER pushes'})" for k in r["kills"])
    lines = [
        f"pushed {r['pushed']} clips + {r['resends_planned']} re-sends with other bytes; acknowledged "
        f"{r['acknowledged']} clips ({r['resends_acknowledged']} re-sends); judged {r['judged']}; "
        f"forwarded {fwd}; stuck {r['stuck']}; lost {r['lost']}",
        f"duplicates at downstream: {dup} (superseded copies {r['superseded_copies']}, "
        f"old content last {r['stale_last_copy']}); held but forwarded {r['held_but_forwarded']}",
        f"kills: {kills or 'none'}",
        f"outage: {r['outage']}; removal of {r['removed_destination']}: {r['removal']}, "
        f"{r['abandoned_by_removal']} abandoned, {r['released']} released",
        f"stuck: unjudged {r['stuck_unjudged']}, pending forwards {r['stuck_pending_forwards']}, "
        f"orphan leases {r['stuck_orphan_leases']}, verdicts pending without a pending forward "
        f"{r['stuck_verdicts_pending_without_forward']}; lost: no verdict for latest content "
        f"{r['lost_no_verdict']}, undelivered {r['lost_undelivered']}",
        f"decisions {r['decisions']}; {r['storescu_runs']} storescu runs, failures {r['store_failures']}; "
        f"{r['gates']} gate(s) on {r['database']}, model {r['model']}; pushes {r['push_seconds']} s, "
        f"total {r['total_seconds']} s; settled {r['settled']}; seed {r['seed']}",
    ]
    if r["lost_uids"]:
        lines.append("lost: " + ", ".join(r["lost_uids"][:20]))
    lines.append(json.dumps(r, default=str, sort_keys=True))
    return "\n".join(lines)
