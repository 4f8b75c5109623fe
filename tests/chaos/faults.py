"""The faults the chaos script injects, planned by count, not by clock.

Every fault fires when the senders' acknowledged stores reach its mark (the
k-th Success out of all the stores planned, re-sends included), so a kill
planned inside the push window lands inside it however fast or slow the
machine is. Each records where it landed: the stores acknowledged at that
moment, the seconds since the start, and whether any sender was still
pushing. Only the outage's length is a clock time (the downstream is down
for that many seconds).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

# How angiogate.store.ledger.abandon_forwards words a forward it gave up for the removal.
REMOVAL_REASON = "is no longer in the configuration"


@dataclass
class Fault:
    at_ack: int                       # fire once this many stores were acknowledged
    landed_ack: int | None = None     # acknowledged stores when it fired
    landed_s: float | None = None     # seconds since the start
    during_pushes: bool | None = None  # a sender was still pushing when it fired

    @property
    def fired(self) -> bool:
        return self.landed_ack is not None

    def record(self, acked: int, seconds: float, pushing: bool) -> None:
        self.landed_ack, self.landed_s, self.during_pushes = acked, round(seconds, 1), pushing


@dataclass
class Kill(Fault):
    """SIGKILL gate `gate`, restart it on the same port, spool and database."""
    gate: str = ""
    restart_s: float | None = None    # how long the restart took


@dataclass
class Outage(Fault):
    """Every downstream storescp stopped for `seconds`, then restarted on its port."""
    seconds: float = 0.0
    ended_s: float | None = None
    queue_peak: int = 0               # pending forwards, most seen while it was down


@dataclass
class Removal(Fault):
    """`destination` removed from every gate's configuration; each gate restarted with it."""
    destination: str = ""
    started_utc: datetime | None = None  # before the first gate was restarted
    done_utc: datetime | None = None     # after the last one was


@dataclass
class Plan:
    kills: list[Kill] = field(default_factory=list)
    outage: Outage | None = None
    removal: Removal | None = None

    def all(self) -> list[Fault]:
        faults: list[Fault] = list(self.kills)
        faults += [f for f in (self.outage, self.removal) if f is not None]
        return sorted(faults, key=lambda f: f.at_ack)


def plan(rng: random.Random, *, stores: int, gates: list[str], kills: int, outage_s: float,
         remove_at: int | None, removed: str | None) -> Plan:
    """Kill marks drawn in 10..85 % of the `stores` planned, distinct, `kills` per gate;
    the outage starts at a mark drawn in 20..50 %; the removal at `remove_at`."""
    low, high = max(1, int(stores * 0.10)), max(2, int(stores * 0.85))
    wanted = kills * len(gates)
    if wanted > high - low + 1:
        raise ValueError(f"{wanted} kills do not fit in {stores} stores; push more clips")
    marks = sorted(rng.sample(range(low, high + 1), wanted))
    owners = [g for g in gates for _ in range(kills)]
    rng.shuffle(owners)
    result = Plan(kills=[Kill(at_ack=m, gate=g) for m, g in zip(marks, owners)])
    if outage_s > 0:
        result.outage = Outage(at_ack=rng.randint(max(1, int(stores * 0.2)), max(1, int(stores * 0.5))),
                               seconds=outage_s)
    if remove_at is not None:
        if not 0 < remove_at < stores:
            raise ValueError(f"--remove-destination-at must be within 1..{stores - 1}")
        result.removal = Removal(at_ack=remove_at, destination=removed or "")
    return result
