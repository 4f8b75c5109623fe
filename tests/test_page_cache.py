"""Kept objects leave the page cache once their last reader is done (store/spool.py,
`Spool.drop_cached`): the judge for a clip it holds, the forwarder after trying one.

Which pages of a file are cached is asked of the kernel with mincore(2) on a
mapping of the file, which reads nothing in (a read with RWF_NOWAIT would
start readahead).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from angiogate.children.process import free_port
from angiogate.config import load_config
from angiogate.store.db import open_database
from angiogate.store.ledger import claim_for_judging, record_judgement, record_receipt
from angiogate.store.spool import Spool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise: Linux")

OBJECT_BYTES = 2 * 1024 * 1024


def cached_fraction(path: Path) -> float:
    """The share of `path`'s pages in the page cache."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = ctypes.create_string_buffer(pages)
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path}")
            return sum(byte & 1 for byte in vector.raw) / pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def cached(path: Path) -> bool:
    """Most of `path` is in the page cache (all of it after a write; none after a drop)."""
    return cached_fraction(path) > 0.5


@pytest.fixture
def droppable(tmp_path):
    """Skip where the kernel keeps pages whatever it is told (tmpfs keeps its files there)."""
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(OBJECT_BYTES))
    fd = os.open(probe, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if cached_fraction(probe) > 0:
        pytest.skip("this filesystem keeps file pages cached after POSIX_FADV_DONTNEED")


@pytest.fixture
def kept(tmp_path, droppable):
    """A SQLite verdict log and a spool holding one received object (not DICOM: an error verdict)."""
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"workers": {"poll_interval_s": 0.05, "lease_s": 60},
                                    "model": {"path": "none"}, "outbox_dir": str(tmp_path / "outbox")}))
    config = load_config(site)
    engine = open_database(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "tmpreceived.dcm"
    temp.write_bytes(b"not DICOM at all" + os.urandom(OBJECT_BYTES))
    object_ = spool.keep(temp, "1.2.3.4")
    record_receipt(engine, sop_instance_uid="1.2.3.4", header=None, file_path=object_.relative_path,
                   file_size=object_.size, file_sha256=object_.sha256, calling_ae_title="T",
                   source_address="127.0.0.1")
    stop = threading.Event()
    yield config, engine, spool, spool.path(object_.relative_path), stop
    stop.set()
    engine.dispose()


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _column(engine, sql: str):
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_drop_cached_leaves_the_bytes_and_forgets_the_pages(kept):
    _, _, spool, path, _ = kept
    before = path.read_bytes()
    assert cached_fraction(path) == 1.0  # just written and read
    spool.drop_cached(str(path.relative_to(spool.root)))
    assert cached_fraction(path) == 0.0
    assert path.read_bytes() == before


def test_drop_cached_of_a_missing_or_escaping_path_is_a_no_op(kept):
    _, _, spool, _, _ = kept
    spool.drop_cached("objects/00/gone.dcm")
    spool.drop_cached("../../etc/passwd")


def _judge_once(config, engine, spool, stop) -> None:
    """A real judge worker judges the one kept clip and stops."""
    import angiogate.judge.worker as jw
    from angiogate.judge.verdict import Judge

    worker = jw.JudgeWorker(config, engine, spool, Judge(config, None), ["outbox:x"], "gate:1", stop)
    worker.start()
    _wait_for(lambda: _column(engine, "SELECT status FROM verdicts") == "judged", 10, "the clip to be judged")
    stop.set()
    worker.join(10)


def test_the_judge_drops_a_clip_it_holds_once_recorded(kept):
    config, engine, spool, path, stop = kept
    assert config.policies.on_error == "hold" and cached(path)
    _judge_once(config, engine, spool, stop)
    assert _column(engine, "SELECT forward_status FROM verdicts") == "held"
    assert not cached(path)


def test_the_judge_leaves_a_clip_it_forwards_to_the_forwarder(kept):
    config, engine, spool, path, stop = kept
    config = config.model_copy(update={"policies": config.policies.model_copy(update={"on_error": "forward"})})
    _judge_once(config, engine, spool, stop)
    assert _column(engine, "SELECT forward_status FROM verdicts") == "pending"
    assert cached(path)


def _queue_forward(engine, destination: str) -> None:
    [row] = claim_for_judging(engine, "judge", 60)
    assert record_judgement(engine, row.id, "judge", decision="error", values={}, forward_to=[destination])


def test_the_forwarder_drops_an_object_it_delivered(kept):
    import angiogate.forward.worker as fw
    from angiogate.forward.outbox_target import outbox_key

    config, engine, spool, path, stop = kept
    key = outbox_key(config.outbox_dir)
    _queue_forward(engine, key)
    assert cached(path)
    worker = fw.ForwardWorker(key, config, engine, spool, "gate:1", stop)
    worker.start()
    _wait_for(lambda: _column(engine, "SELECT status FROM forwards") == "sent", 10, "the forward")
    stop.set()
    worker.join(10)
    assert not cached(path)


def test_the_forwarder_drops_an_object_its_destination_refused(kept):
    """The bench's destination refuses every association: the object waits for a retry
    outside the page cache."""
    import angiogate.forward.worker as fw
    from angiogate.config import Destination
    from angiogate.forward.dicom_target import destination_key
    from sqlalchemy import text

    config, engine, spool, path, stop = kept
    port = free_port()  # a port nobody listens on: connections are refused
    destination = Destination(ae_title="NOBODY", host="127.0.0.1", port=port)
    key = destination_key(destination)
    with engine.begin() as conn:  # what the header of an XA clip would have recorded
        conn.execute(text("UPDATE verdicts SET sop_class_uid = '1.2.840.10008.5.1.4.1.1.12.1', "
                          "transfer_syntax_uid = '1.2.840.10008.1.2.1'"))
    _queue_forward(engine, key)
    worker = fw.ForwardWorker(key, config, engine, spool, "gate:1", stop, target=destination)
    assert cached(path)
    worker.start()
    _wait_for(lambda: (_column(engine, "SELECT last_error FROM forwards") or "") != "", 20, "the failed attempt")
    stop.set()
    worker.join(20)
    assert _column(engine, "SELECT status FROM forwards") == "pending"  # to be retried
    assert "unreachable" in _column(engine, "SELECT last_error FROM forwards")
    assert not cached(path)
