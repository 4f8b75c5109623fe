"""Chaos for angiogate (issues 4 and 14): a bounded fault script, loopback only.

    python tests/chaos/run.py --clips 1000 --senders 8 --gates 2 --database postgresql \\
        --kills 3 --resend-other-bytes 100 --outage-s 300 --remove-destination-at 500 --timeout 5400

Generates small phantom clips (unique SOP Instance UIDs), starts DCMTK
storescps as the downstreams, the verdict log (SQLite, or PostgreSQL: a
throwaway cluster, or `--database-url`) and `--gates` gates (`angiogate
serve` children, each its own port and gate_id, one shared spool as
deploy/README.md describes); `--senders` threads push their share with DCMTK
storescu, one file per invocation, sender i always to gate i mod --gates.
A store without Success is pushed again later, as a modality retries.

Faults, planned by the count of acknowledged stores, not by the clock
(faults.py): each gate SIGKILLed `--kills` times inside the push window and
restarted on the same port, spool and database; `--resend-other-bytes N`
clips pushed again, once acknowledged, re-encoded in the other syntax (same
SOP Instance UID, other bytes); `--outage-s S`: every downstream stopped for
S seconds, then restarted on its port; `--remove-destination-at K`: a second
destination, removed from every gate's configuration once K stores were
acknowledged, each gate restarted with it; the clips whose forwards it
abandons are released with `angiogate release`, as an operator would.

Then the script waits until the gates have settled and reports (report.py
defines each figure): pushed, acknowledged, judged, forwarded per
destination, duplicates at each downstream, stuck and lost, where each kill
landed, and one JSON line of the same figures. Exit status 0 only if
stuck == 0, lost == 0 and every fault landed, each kill during the pushes.
Everything the script starts is a child stopped by its PID; a watchdog ends
the script (and its children) if it overruns --timeout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from angiogate.children.process import live  # noqa: E402
from chaos.report import summary  # noqa: E402
from chaos.scenario import Scenario  # noqa: E402


def run_chaos(work_dir: Path, *, clips: int = 200, senders: int = 4, gates: int = 1, kills: int = 3,
              resends: int = 0, outage_s: float = 0.0, remove_at: int | None = None,
              database: str = "sqlite", database_url: str | None = None, model: str = "none",
              timeout: float = 900, seed: int | None = None, pace_s: float = 0.0, log=print) -> dict:
    """Run the scenario in `work_dir`; return the figures (report.py)."""
    seed = int(time.time()) % 100000 if seed is None else seed
    scenario = Scenario(work_dir, clips=clips, senders=senders, gates=gates, kills=kills, resends=resends,
                        outage_s=outage_s, remove_at=remove_at, database=database, database_url=database_url,
                        model=model, timeout=timeout, seed=seed, pace_s=pace_s, log=log)
    try:
        return scenario.run()
    finally:
        scenario.close()


def _watchdog(seconds: float) -> None:
    """Last resort: end this process (children die with it: PR_SET_PDEATHSIG + atexit)."""
    def fire():
        time.sleep(seconds)
        print(f"[chaos] watchdog: still running after {seconds:.0f} s, stopping", file=sys.stderr, flush=True)
        for proc in live():  # our own children, by PID
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(3)
    threading.Thread(target=fire, daemon=True).start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--gates", type=int, default=1, help="gates sharing the verdict log (2+: PostgreSQL)")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                   help="postgresql: a throwaway cluster started here, unless --database-url is given")
    p.add_argument("--database-url", default=None, help="a PostgreSQL SQLAlchemy URL to use instead")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs per gate, during the pushes")
    p.add_argument("--resend-other-bytes", type=int, default=0, metavar="N",
                   help="clips re-sent, once acknowledged, with the same UID and other bytes")
    p.add_argument("--outage-s", "--downstream-outage", type=float, default=0.0, metavar="SECONDS",
                   help="the downstreams stopped this long mid-run, then restarted on their ports")
    p.add_argument("--remove-destination-at", type=int, default=None, metavar="K",
                   help="configure two destinations; remove one once K stores were acknowledged")
    p.add_argument("--model", default="none",
                   help="the gates' model.path: none (rules only), bundled, auto, or a checkpoint")
    p.add_argument("--pace-s", type=float, default=0.0, metavar="SECONDS",
                   help="each sender pauses 0..2x this after each acknowledged store (default: none)")
    p.add_argument("--timeout", type=float, default=900, help="hard bound in seconds, all included")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep everything here (default: a temporary folder, deleted afterwards)")
    args = p.parse_args(argv)
    if args.database_url and args.database != "postgresql":
        p.error("--database-url needs --database postgresql")
    _watchdog(args.timeout + 20)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="angiogate-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # the scenario itself stops 15 s early to leave time to count and clean up
        r = run_chaos(work, clips=args.clips, senders=args.senders, gates=args.gates, kills=args.kills,
                      resends=args.resend_other_bytes, outage_s=args.outage_s,
                      remove_at=args.remove_destination_at, database=args.database,
                      database_url=args.database_url, model=args.model,
                      timeout=max(args.timeout - 15, 30), seed=args.seed, pace_s=args.pace_s,
                      log=lambda m: print(m, flush=True))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(r), flush=True)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
