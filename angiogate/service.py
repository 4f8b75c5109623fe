"""The running gate: wires receive, judge, record and forward together.

`Gate.start()` opens (and migrates) the verdict log, frees leases left by a
previous run, starts the judge worker, one forward worker per destination
(or the local outbox) and the spool pruner, then the SCP, so nothing is accepted before it
can be kept, and last the review web app (`web.enabled`). `Gate.stop()`
stops the web app and the SCP first, then the workers; work they leave
unfinished stays queued in the database for the next start.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from angiogate.config import Config
from angiogate.forward.targets import configured_targets, forward_targets
from angiogate.forward.worker import ForwardWorker, reconcile_destinations
from angiogate.judge.verdict import Judge
from angiogate.judge.worker import JudgeWorker
from angiogate.modelstore.resolve import load_engine
from angiogate.modelstore.watch import ModelWatcher
from angiogate.receive.intake import Intake
from angiogate.receive.scp import start_scp
from angiogate.store.db import open_database
from angiogate.store.ledger import clear_leases
from angiogate.store.pruner import SpoolPruner
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, config: Config):
        self.config = config
        # The lease owner: this gate's stable name, then what tells this run from the earlier
        # ones (clear_leases frees the earlier runs' leases, never another gate's).
        self.gate_name = config.gate_name()
        self.owner = f"{self.gate_name}/{os.getpid()}.{int(time.time())}"
        self.stop_event = threading.Event()
        self.server = None
        self.web = None
        self.workers: list[threading.Thread] = []
        self.arrived = threading.Event()  # intake -> judge: something new to judge (and: stop)

    def start(self) -> None:
        config = self.config
        # Before anything is created: no file or folder of the gate is readable by others.
        os.umask(config.umask)
        log.info("verdict log: %s", config.database_url_for_log())
        self.engine = open_database(config.database_url_with_password())
        clear_leases(self.engine, self.gate_name)
        targets = forward_targets(config)
        reconcile_destinations(self.engine, targets)
        self.spool = Spool(config.spool_dir, gate_id=self.gate_name)
        self.judge = Judge(config, load_engine(config))
        if config.model.path != "none":
            self.workers.append(ModelWatcher(config, self.judge, self.stop_event))
        self.workers.append(JudgeWorker(config, self.engine, self.spool, self.judge, targets,
                                        self.owner, self.stop_event, self.arrived))
        if not config.destinations:
            log.info("no destinations configured: satisfactory clips go to the outbox %s", config.outbox_dir)
        for target in configured_targets(config):
            self.workers.append(ForwardWorker(target.key, config, self.engine, self.spool,
                                              self.owner, self.stop_event, target))
        if config.spool.prune_interval_s > 0:
            self.workers.append(SpoolPruner(self.engine, self.spool, config.spool, self.gate_name,
                                            self.stop_event))
        for worker in self.workers:
            worker.start()
        if config.web.enabled:  # before the SCP: a web port in use stops the start before any clip is taken
            self.web = self._start_web(targets)
        self.server = start_scp(config, Intake(self.engine, self.spool, on_recorded=self.arrived.set))

    def _start_web(self, targets: list[str]):
        from angiogate.web.app import create_app
        from angiogate.web.health import GateLink
        from angiogate.web.server import WebServer

        def workers() -> dict[str, bool]:
            alive = {worker.name: worker.is_alive() for worker in self.workers}
            # The SCP's acceptor thread (angiogate.dicom.security.start_server names it).
            alive["scp"] = self.server is not None and any(
                t.name == "angiogate-scp" and t.is_alive() for t in threading.enumerate())
            return alive

        def model() -> dict[str, str]:
            engine = self.judge.engine
            if engine is None:
                return {"version": "none (rules only)", "engine": "none"}
            return {"version": engine.version, "engine": engine.name}

        link = GateLink(workers=workers, model=model, spool_dir=self.spool.root, destinations=targets)
        return WebServer(create_app(self.config, self.engine, link), self.config.web.bind_address,
                         self.config.web.port).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        if self.server is not None:
            self.server.shutdown()
        self.stop_event.set()
        self.arrived.set()
        for worker in self.workers:
            worker.join(timeout=30)
        self.engine.dispose()
