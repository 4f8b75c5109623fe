"""The gate's spool pruner: applies the retention policy every `spool.prune_interval_s`.

A thread of the running gate (`angiogate spool prune` does the same on demand).
A pass that fails (the verdict log away, a file that cannot be removed) is
logged and tried again at the next interval; the thread itself never stops,
so /health/ready counts it among the workers.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from angiogate.config import SpoolSettings
from angiogate.store.retention import prune
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)


class SpoolPruner(threading.Thread):
    def __init__(self, engine: Engine, spool: Spool, settings: SpoolSettings, gate_name: str,
                 stop_event: threading.Event):
        super().__init__(name="spool-pruner", daemon=True)
        self.engine, self.spool, self.settings = engine, spool, settings
        self.by = f"gate {gate_name}"
        self.stop_event = stop_event

    def run(self) -> None:
        while True:
            try:
                prune(self.engine, self.spool, self.settings, by=self.by)
            except Exception as exc:  # the next pass tries again; the thread must outlive it
                log.error("spool retention pass failed (%s: %s); next pass in %.0f s", type(exc).__name__,
                          exc, self.settings.prune_interval_s)
                log.debug("detail", exc_info=True)
            if self.stop_event.wait(self.settings.prune_interval_s):
                return
