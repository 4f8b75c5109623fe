"""Fixtures for real test peers (see tests/peers.py and /work/shared/PEERS.md).

- samples_dir: the public sample DICOM files (/work/shared/samples).
- storescp:    a started DCMTK storescp (AE title STORESCP) writing to tmp_path.
- orthanc:     a started Orthanc (AE title ORTHANC) with its data in tmp_path.
- postgres:    one throwaway PostgreSQL cluster for the whole session, with a
               database `angiogate`; tests that stop it need not restart it,
               `postgres_url` does.
- postgres_url: SQLAlchemy URL of a fresh, uniquely named database on that
               cluster, dropped after the test.

Every peer is stopped by its PID in teardown, whether the test passed or not.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from peers import Orthanc, PostgresCluster, StoreSCP

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"sample DICOM files not found at {SAMPLES}")
    return SAMPLES


@pytest.fixture
def storescp(tmp_path):
    scp = StoreSCP(tmp_path / "storescp", aet="STORESCP")
    try:
        yield scp.start()
    finally:
        scp.stop()


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc", aet="ORTHANC")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster.create()
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres):
    if not postgres.running:  # an earlier test stopped or killed it
        postgres.start()
    name, url = postgres.fresh_db()
    try:
        yield url
    finally:
        if postgres.running:
            postgres.dropdb(name)
