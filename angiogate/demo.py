"""`angiogate serve --demo`: a newcomer's first run, over real DICOM.

Renders one small phantom clip of every kind, pushes them with C-STORE to
the gate's own SCP (exactly as a modality would), waits until they are
judged and prints where each went and how to query the verdict log.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from angiogate.dicom.header import read_header
from angiogate.forward.sender import Sender
from angiogate.forward.target import Item
from angiogate.store.schema import FWD_PENDING, FWD_WAITING, Verdict


def push_phantoms(folder: Path, *, ae_title: str, port: int, size: int = 512) -> list[str]:
    """Write phantoms into `folder` and C-STORE them to the gate; returns their UIDs.

    512x512, the matrix of cath-lab runs and of the bundled model's training
    phantoms (about 10 s to render the ten). At 256 px the bundled model held
    one of the two satisfactory demo clips: it has never seen that matrix.
    """
    from angiogate.synth import generate

    rows = generate(folder, per_kind=1, seed=2026, size=size)
    sender = Sender(ae_title, "127.0.0.1", port, calling_ae_title="DEMO_MODALITY")
    items = []
    for row in rows:
        path = folder / row["file"]
        header = read_header(path)
        items.append(Item(path, header.sop_class_uid, header.transfer_syntax_uid))
    try:
        sender.open_for(items)
        for item in items:
            sender.send(item)
    finally:
        sender.close()
    return [row["sop_instance_uid"] for row in rows]


def wait_and_summarise(engine: Engine, uids: list[str], timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    rows = []
    while time.monotonic() < deadline:
        with Session(engine) as session:
            rows = session.execute(select(Verdict.decision, Verdict.forward_status)
                                   .where(Verdict.sop_instance_uid.in_(uids))).all()
        if len(rows) == len(uids) and all(f not in (FWD_PENDING, FWD_WAITING) for _, f in rows):
            break
        time.sleep(0.5)
    decisions = Counter(d for d, _ in rows)
    forwarded = sum(1 for _, f in rows if f == "forwarded")
    return (f"demo: {len(uids)} phantom clips pushed; {len(rows)} judged "
            f"({', '.join(f'{n} {d}' for d, n in sorted(decisions.items()))}); "
            f"{forwarded} forwarded, {len(rows) - forwarded} held")
