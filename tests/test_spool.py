"""Unit tests of angiogate/store/spool.py: UID-safe names and durable, idempotent keeping."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from angiogate.store.spool import Kept, Spool, safe_uid_name

HOSTILE_UIDS = [
    "../../etc/x",
    "a/b",
    "",
    "1" * 65,
    "1.2.3\x00",
    "\x00",
    "/etc/passwd",
    "1.2.840/../../../x",
    "..",
    ".",
    "1.2.3.",
    "1..2",
    "1.2.3\n../x",
    "\ud800",  # a lone surrogate, as a broken decoder could hand over
]


def is_hashed_name(name: str) -> bool:
    return len(name) == 41 and name[0] == "x" and all(c in "0123456789abcdef" for c in name[1:])


# --- safe_uid_name -----------------------------------------------------------

@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.12.1", "1", "0.0", "2.25." + "9" * 59,
                                 "1.3.6.1.4.1.5962.1.1.20.1.1.20040826185059.5457"])
def test_valid_uids_are_kept(uid):
    assert len(uid) <= 64
    assert safe_uid_name(uid) == uid


def test_surrounding_whitespace_is_stripped():
    assert safe_uid_name(" 1.2.3 ") == "1.2.3"


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_hostile_uids_are_hashed(uid):
    name = safe_uid_name(uid)
    assert is_hashed_name(name), name
    assert "/" not in name and "\x00" not in name and ".." not in name


def test_none_is_hashed():
    assert is_hashed_name(safe_uid_name(None))


def test_sixty_four_digits_kept_sixty_five_hashed():
    assert safe_uid_name("1" * 64) == "1" * 64
    assert is_hashed_name(safe_uid_name("1" * 65))


def test_hashed_names_are_deterministic_and_distinct():
    names = [safe_uid_name(uid) for uid in HOSTILE_UIDS]
    assert names == [safe_uid_name(uid) for uid in HOSTILE_UIDS]
    assert len(set(names)) == len(names)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_property_names_are_always_file_name_safe(uid):
    name = safe_uid_name(uid)
    assert 1 <= len(name) <= 64
    assert all(c in "0123456789.abcdefx" for c in name)
    assert name not in (".", "..")
    assert not name.startswith(".")


# --- Spool.keep ----------------------------------------------------------------

@pytest.fixture
def spool(tmp_path) -> Spool:
    return Spool(tmp_path / "spool")


def received(spool: Spool, content: bytes, name: str = "tmp-1") -> Path:
    path = spool.incoming / name
    path.write_bytes(content)
    return path


def test_spool_creates_its_folders(tmp_path):
    spool = Spool(tmp_path / "new" / "spool")
    assert spool.incoming.is_dir()
    assert spool.objects.is_dir()
    assert spool.root == (tmp_path / "new" / "spool").resolve()


def test_keep_moves_the_file_under_objects(spool):
    content = b"DICM" + os.urandom(5000)
    temp = received(spool, content)
    kept = spool.keep(temp, "1.2.840.113619.2.55.3.1")
    assert isinstance(kept, Kept)
    assert not temp.exists()
    final = spool.root / kept.relative_path
    assert final.read_bytes() == content
    assert Path(kept.relative_path).parts[0] == "objects"
    assert not Path(kept.relative_path).is_absolute()
    assert final.name.startswith("1.2.840.113619.2.55.3.1.")
    assert final.suffix == ".dcm"
    assert kept.size == len(content)
    assert kept.sha256 == hashlib.sha256(content).hexdigest()
    assert kept.already_present is False
    assert spool.path(kept.relative_path) == final


@pytest.mark.parametrize("uid", HOSTILE_UIDS + [None])
def test_keep_stays_inside_the_spool_for_hostile_uids(spool, tmp_path, uid):
    temp = received(spool, b"payload")
    kept = spool.keep(temp, uid)
    final = (spool.root / kept.relative_path).resolve()
    assert spool.objects in final.parents
    assert final.parent.parent == spool.objects  # objects/<shard>/<name>
    assert final.read_bytes() == b"payload"
    assert ".." not in Path(kept.relative_path).parts
    # Nothing was written outside the spool.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


def test_identical_content_twice_is_the_same_object(spool):
    first = spool.keep(received(spool, b"same bytes", "tmp-1"), "1.2.3.4")
    second_temp = received(spool, b"same bytes", "tmp-2")
    second = spool.keep(second_temp, "1.2.3.4")
    assert second.relative_path == first.relative_path
    assert second.already_present is True
    assert first.already_present is False
    assert second.sha256 == first.sha256
    assert not second_temp.exists()
    kept_files = [p for p in spool.objects.rglob("*") if p.is_file()]
    assert kept_files == [spool.root / first.relative_path]
    assert list(spool.incoming.iterdir()) == []


def test_different_content_same_uid_gets_its_own_file(spool):
    first = spool.keep(received(spool, b"version one", "tmp-1"), "1.2.3.4")
    second = spool.keep(received(spool, b"version two", "tmp-2"), "1.2.3.4")
    assert second.relative_path != first.relative_path
    assert second.already_present is False
    assert (spool.root / first.relative_path).read_bytes() == b"version one"
    assert (spool.root / second.relative_path).read_bytes() == b"version two"


def test_same_content_different_uids_are_different_objects(spool):
    first = spool.keep(received(spool, b"bytes", "tmp-1"), "1.2.3.4")
    second = spool.keep(received(spool, b"bytes", "tmp-2"), "1.2.3.5")
    assert first.relative_path != second.relative_path
    assert not second.already_present


def test_keep_of_empty_and_large_files(spool):
    empty = spool.keep(received(spool, b"", "tmp-0"), "1.2.3.1")
    assert empty.size == 0
    assert empty.sha256 == hashlib.sha256(b"").hexdigest()
    big = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB read chunks
    kept = spool.keep(received(spool, big, "tmp-big"), "1.2.3.2")
    assert kept.size == len(big)
    assert kept.sha256 == hashlib.sha256(big).hexdigest()


def test_keep_of_missing_temp_file_raises(spool):
    with pytest.raises(FileNotFoundError):
        spool.keep(spool.incoming / "never-written", "1.2.3")


# --- Spool.path and discard --------------------------------------------------------

@pytest.mark.parametrize("relative", ["../outside.dcm", "objects/../../outside.dcm", "../spool-other/x",
                                      "/etc/passwd", "", ".", "objects/ab/../../.."])
def test_path_refuses_escapes(spool, relative):
    with pytest.raises(ValueError, match="escapes"):
        spool.path(relative)


def test_path_refuses_symlink_out_of_the_spool(spool, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (spool.objects / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        spool.path("objects/evil/x.dcm")


def test_path_accepts_paths_inside(spool):
    assert spool.path("objects/ab/1.2.3.dcm") == spool.root / "objects" / "ab" / "1.2.3.dcm"
    assert spool.path("objects/ab/../cd/x") == spool.root / "objects" / "cd" / "x"


def test_discard_removes_and_tolerates_absence(spool):
    kept = spool.keep(received(spool, b"to drop"), "1.2.3")
    spool.discard(kept.relative_path)
    assert not (spool.root / kept.relative_path).exists()
    spool.discard(kept.relative_path)  # already gone: no error


def test_discard_refuses_escapes(spool, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(ValueError):
        spool.discard("../victim.txt")
    assert victim.read_text() == "keep me"
