"""Database connection and migrations for the verdict log.

`open_database` returns an Engine on SQLite or PostgreSQL with the settings
durability needs (SQLite: WAL with synchronous=FULL, so a committed row
survives a crash; a busy timeout so the SCP's threads and the workers share
one file) and brings the schema to the newest Alembic revision.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

MIGRATIONS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 10  # PostgreSQL, unless the URL sets ?connect_timeout=


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An Engine for `url` (password already filled in by the caller)."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            # Created here, 0640, rather than by SQLite (0644 less the umask); its WAL and
            # shared-memory files take the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o640))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A database host that does not answer must fail a C-STORE with 0xA700 in
    # seconds, not hang the sender for the OS's TCP connect timeout (minutes).
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args)


def is_outage(exc: Exception) -> bool:
    """True when a database error says the database is away or busy (connection
    lost, server stopped, pool exhausted, SQLite locked): the same write may
    succeed later and is worth retrying. An IntegrityError or DataError never
    is: retrying it forever stalls whoever waits on it."""
    if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` on `engine`."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def open_database(url: str) -> Engine:
    """Connect and migrate; the gate's one entry to the verdict log."""
    engine = make_engine(url)
    upgrade(engine)
    return engine
