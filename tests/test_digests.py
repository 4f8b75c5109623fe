"""The remembered sha256 of model files (issue 16): reused while a file is unchanged, never after.

`angiogate score FILE` used to hash the checkpoint and every export's IR at
each start; `DigestCache` remembers them in the export folder by each file's
stamp (device, inode, size, mtime, ctime). These tests change a file the way
that fools an mtime-only cache (same size, mtime set back) and check that the
file is read again and, for an export, refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from angiogate.engines import digests, exports
from angiogate.engines.digests import CACHE_NAME, DigestCache

SETTLE_S = 0.2  # stands in for digests.SETTLED_S (2 s) so the tests wait less


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file `DigestCache` actually reads, in order."""
    read: list[Path] = []
    real = digests.file_digest

    def counting(path: Path) -> str:
        read.append(Path(path))
        return real(path)

    monkeypatch.setattr(digests, "file_digest", counting)
    monkeypatch.setattr(digests, "SETTLED_S", SETTLE_S)
    return read


def _settled_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    time.sleep(SETTLE_S + 0.1)  # older than SETTLED_S when hashed: it may be remembered
    return path


def _tamper_keeping_size_and_mtime(path: Path) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_digest_is_remembered_and_reused_by_the_next_start(tmp_path, hashed):
    model = _settled_file(tmp_path / "model.bin", b"weights" * 1000)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert DigestCache(tmp_path / "exports").digest(model) == expected
    assert hashed == [model]
    assert DigestCache(tmp_path / "exports").digest(model) == expected  # a new process, in effect
    assert hashed == [model]  # not read again
    remembered = json.loads((tmp_path / "exports" / CACHE_NAME).read_text())["files"]
    assert list(remembered) == [str(model)]


def test_a_file_changed_with_its_size_and_mtime_kept_is_read_again(tmp_path, hashed):
    model = _settled_file(tmp_path / "model.bin", b"weights" * 1000)
    old = DigestCache(tmp_path).digest(model)
    _tamper_keeping_size_and_mtime(model)
    new = DigestCache(tmp_path).digest(model)
    assert hashed == [model, model]
    assert new != old and new == hashlib.sha256(model.read_bytes()).hexdigest()


def test_a_file_changed_just_now_is_not_remembered(tmp_path, hashed):
    """A change within the same clock tick as the hash would keep the stamp: too fresh to trust later."""
    model = tmp_path / "model.bin"
    model.write_bytes(b"fresh" * 1000)
    cache = DigestCache(tmp_path)
    assert cache.digest(model) == cache.digest(model)  # one object hashes a file once
    assert DigestCache(tmp_path).digest(model)
    assert hashed == [model, model]
    assert not (tmp_path / CACHE_NAME).exists()


def test_an_unwritable_or_garbled_cache_only_costs_hashing(tmp_path, hashed):
    model = _settled_file(tmp_path / "model.bin", b"weights" * 1000)
    (tmp_path / CACHE_NAME).write_text("{not json")
    assert DigestCache(tmp_path).digest(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    assert DigestCache(None).digest(model) == DigestCache(tmp_path / "missing" / "deeper").digest(model)


@pytest.fixture
def exported(tiny_checkpoint, tmp_path) -> tuple[Path, Path]:
    """A checkpoint with its fp32 OpenVINO export beside it, and an export_dir for the cache."""
    checkpoint = tmp_path / "model" / "tiny.pt"
    checkpoint.parent.mkdir()
    shutil.copyfile(tiny_checkpoint, checkpoint)
    exports.ensure_fp32(checkpoint, None)
    return checkpoint, tmp_path / "export_dir"


def test_a_tampered_export_is_refused_though_its_digest_was_remembered(exported, hashed):
    checkpoint, export_dir = exported
    time.sleep(SETTLE_S + 0.1)
    found = exports.find_exports(checkpoint, export_dir)["fp32"]
    assert found.passed
    assert set(hashed) == {checkpoint, found.xml, found.xml.with_suffix(".bin")}
    hashed.clear()
    assert exports.find_exports(checkpoint, export_dir)["fp32"].passed
    assert hashed == []  # the next start reads no model file whole

    _tamper_keeping_size_and_mtime(found.xml.with_suffix(".bin"))
    again = exports.find_exports(checkpoint, export_dir)["fp32"]
    assert not again.passed and "do not match" in again.problem
    assert hashed == [found.xml.with_suffix(".bin")]
