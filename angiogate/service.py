"""The running gate: wires receive, judge, record and forward together.

`Gate.start()` opens (and migrates) the verdict log, frees leases left by a
previous run, starts the judge worker, one forward worker per destination
(or the local outbox), and last the SCP, so nothing is accepted before it
can be kept. `Gate.stop()` stops the SCP first, then the workers; work they
leave unfinished stays queued in the database for the next start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

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
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, config: Config):
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()
        self.server = None
        self.workers: list[threading.Thread] = []

    def start(self) -> None:
        config = self.config
        log.info("verdict log: %s", config.database_url_for_log())
        self.engine = open_database(config.database_url_with_password())
        clear_leases(self.engine)
        targets = forward_targets(config)
        reconcile_destinations(self.engine, targets)
        self.spool = Spool(config.spool_dir)
        self.judge = Judge(config, load_engine(config))
        if config.model.path != "none":
            self.workers.append(ModelWatcher(config, self.judge, self.stop_event))
        self.workers.append(JudgeWorker(config, self.engine, self.spool, self.judge, targets,
                                        self.owner, self.stop_event))
        if not config.destinations:
            log.info("no destinations configured: satisfactory clips go to the outbox %s", config.outbox_dir)
        for target in configured_targets(config):
            self.workers.append(ForwardWorker(target.key, config, self.engine, self.spool,
                                              self.owner, self.stop_event, target))
        for worker in self.workers:
            worker.start()
        self.server = start_scp(config, Intake(self.engine, self.spool))

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.stop_event.set()
        for worker in self.workers:
            worker.join(timeout=30)
        self.engine.dispose()
