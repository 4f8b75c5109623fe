"""Smoke tests of the peer fixtures themselves (tests/peers.py, conftest.py)."""
from __future__ import annotations

import io

import pydicom
import pytest
import sqlalchemy as sa

from peers import StoreSCP, count_successes, echoscu, failed_files, storescu

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

# the catheter clip's UIDs (999.999...) are not conformant; pydicom warns lazily
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
read = pydicom.dcmread


def test_storescu_into_storescp_keeps_pixel_data(storescp, samples_dir):
    sent = [samples_dir / "XA1_UNC.dcm", samples_dir / "XA1_JPLL.dcm"]
    result = storescu(sent, storescp.port, aec=storescp.aet)

    assert result.returncode == 0, result.stderr
    assert count_successes(result) == 2
    assert failed_files(result, sent) == []
    received = {str(ds.file_meta.TransferSyntaxUID): ds
                for ds in map(read, storescp.received_files())}
    assert len(storescp.received_files()) == 2
    for path in sent:
        original = read(path)
        copy = received[str(original.file_meta.TransferSyntaxUID)]
        assert copy.SOPInstanceUID == original.SOPInstanceUID
        assert copy.PixelData == original.PixelData


def test_echoscu_against_storescp(storescp):
    assert echoscu(storescp.port, aec=storescp.aet).returncode == 0
    storescp.stop()
    assert echoscu(storescp.port, aec=storescp.aet, timeout=15).returncode != 0


def test_refusing_storescp_fails_every_file(tmp_path, samples_dir):
    scp = StoreSCP(tmp_path / "refusing", extra_args=["--refuse"]).start()
    try:
        sent = [samples_dir / "XA1_UNC.dcm"]
        result = storescu(sent, scp.port, aec=scp.aet, timeout=20)
        assert result.returncode != 0
        assert "Association Rejected" in result.stderr
        assert count_successes(result) == 0
        assert failed_files(result, sent) == [str(sent[0])]
        assert scp.received_files() == []
    finally:
        scp.stop()


def test_storescu_into_orthanc_keeps_transfer_syntax(orthanc, samples_dir):
    sent = sorted(samples_dir.glob("*.dcm"))
    result = storescu(sent, orthanc.dicom_port, aec=orthanc.aet)

    assert count_successes(result) == len(sent), result.stderr
    assert failed_files(result, sent) == []
    uids = {str(read(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent}
    assert orthanc.sop_instance_uids() == set(uids)
    assert len(orthanc.instances()) == len(sent)
    for uid, path in uids.items():
        oid = orthanc.find_by_sop(uid)
        assert oid is not None
        original = read(path, stop_before_pixels=True)
        assert orthanc.transfer_syntax(oid) == original.file_meta.TransferSyntaxUID
    jpll = read(samples_dir / "XA1_JPLL.dcm")
    oid = orthanc.find_by_sop(jpll.SOPInstanceUID)
    assert orthanc.transfer_syntax(oid) == JPEG_LOSSLESS_SV1
    stored = read(io.BytesIO(orthanc.instance_file(oid)))
    assert stored.PixelData == jpll.PixelData
    assert orthanc.find_by_sop("1.2.3.4.5.6.7.8.9") is None


def test_postgres_url_connects(postgres_url):
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_postgres_stop_and_start_keeps_data(postgres, postgres_url):
    engine = sa.create_engine(postgres_url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (42)"))
        postgres.stop()
        assert not postgres.running
        with pytest.raises(sa.exc.OperationalError):
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        postgres.start()
        with engine.connect() as conn:
            assert conn.execute(sa.text("select x from t")).scalar_one() == 42
    finally:
        engine.dispose()


def test_free_port_stays_out_of_the_ephemeral_range_and_skips_held_ports():
    """Ports for test servers come from below the range the kernel gives client
    sockets (a storescu's source port cannot steal one between pick and bind),
    are never handed out twice, and a port someone holds is passed over."""
    import socket

    from angiogate.children.process import _ephemeral_range, free_port

    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(p < low for p in ports)
    held = socket.socket()
    try:
        nxt = free_port()
        held.bind(("127.0.0.1", nxt + 1))
        held.listen()
        assert free_port() != nxt + 1
    finally:
        held.close()
