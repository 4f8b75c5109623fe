"""Fixtures for real test peers (see tests/peers.py and /work/shared/PEERS.md).

- (autouse) tempfile.tempdir is restored after every test.
- samples_dir: the public sample DICOM files (/work/shared/samples).
- storescp:    a started DCMTK storescp (AE title STORESCP) writing to tmp_path.
- orthanc:     a started Orthanc (AE title ORTHANC) with its data in tmp_path.
- postgres:    one throwaway PostgreSQL cluster for the whole session, with a
               database `angiogate`; tests that stop it need not restart it,
               `postgres_url` does.
- postgres_url: SQLAlchemy URL of a fresh, uniquely named database on that
               cluster, dropped after the test.

Every peer is stopped by its PID in teardown, whether the test passed or not.
A peer or the samples missing fails the test (peers.missing decides; set
ANGIOGATE_TESTS_ALLOW_MISSING_PEERS=1 to skip instead).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from peers import Orthanc, PostgresCluster, StoreSCP, need

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


@pytest.fixture(autouse=True)
def _tempfile_tempdir_restored():
    """A gate's SCP started in this process points tempfile.tempdir at its spool (a gate
    process runs one SCP for life); put it back, or later tests make temporary files in
    a tmp_path that its own test's teardown removed."""
    saved = tempfile.tempdir
    yield
    tempfile.tempdir = saved


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    need(SAMPLES.is_dir(), f"sample DICOM files not found at {SAMPLES}")
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


# ------------------------------------------------------------ the gate itself

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained X3D-S checkpoint small enough to judge clips quickly.

    Its scores carry no meaning (about 0.5 for everything); tests steer
    decisions with `model.threshold` (0.99: the model passes everything, 0.0:
    it holds everything) and with header rules.
    """
    import torch

    from angiogate.engines.model import ModelInfo, build_network, save_checkpoint

    torch.manual_seed(0)
    info = ModelInfo(arch="x3d_s", num_frames=8, crop_size=64, mean=0.45, std=0.225,
                     threshold=0.5, version="x3d_s-untrained-test")
    network = build_network("x3d_s", num_frames=8, crop_size=64, num_outputs=info.num_outputs)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", network, info)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One small phantom clip of every kind, in both syntaxes the synth writes."""
    from angiogate.synth import generate

    outdir = tmp_path_factory.mktemp("phantoms")
    rows = generate(outdir, per_kind=1, seed=7, size=128, frame_rates=(7.5, 15.0, 30.0),
                    syntaxes=("explicit", "jpeg-lossless"))
    return outdir, rows


@pytest.fixture
def gate_factory(tmp_path):
    """Make GateProcess instances that are killed at teardown whatever happens."""
    from gate import GateProcess

    made: list[GateProcess] = []

    def make(settings: dict | None = None, *, name: str = "gate", port: int | None = None) -> GateProcess:
        gate = GateProcess(tmp_path / name, settings, port=port)
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.kill()
        if gate._engine is not None:
            gate._engine.dispose()
