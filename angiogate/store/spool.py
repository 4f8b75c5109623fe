"""The spool: where received objects live on disk, written durably.

A received object arrives as a temporary file (pynetdicom writes it to the
spool's `incoming/` folder, on the same filesystem, so moving it is a rename,
not a copy). `Spool.keep` fsyncs it, names it from its SOP Instance UID and
content hash, renames it into `objects/` and fsyncs the folder: when it
returns, the object survives a crash or power loss.

File names never come from untrusted strings unchecked: a UID that is not a
well-formed DICOM UID (digits and dots, at most 64 characters) is replaced
by its hash, so `../../etc/x` cannot leave the spool.

Kept objects are read soon after they arrive, by the judge (a few frames)
and by each forwarder (all of it), and rarely again. `Spool.drop_cached`,
called by the last of those readers, lets the kernel forget their pages
(they are on disk since `keep`), so the next receive reuses them instead of
growing the page cache by 7.5 MB a clip. On a VM that hands free memory back
to its host (free page reporting, as on the 2-core bench VM) a page the
guest has not used lately costs a host fault when touched: writing a clip
into such pages took 16-20 ms of CPU, into recycled ones 3-4 ms.

A receive that never completes (disk full mid-transfer, sender gone, gate
killed) leaves its temp file in `incoming/`; the sender got no Success for
it. `Spool.sweep_incoming` removes such leftovers so their space comes back
by itself. Retention (store/retention.py) removes kept objects with
`remove_stale`, never anything in `incoming/`.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
FOLDER_MODE = 0o750  # the gate's user and group only (the process umask may narrow it further)
FILE_MODE = 0o640

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# pynetdicom's chunked receive: NamedTemporaryFile(suffix=".dcm") in tempfile.tempdir
_RECEIVE_TEMP = re.compile(r"^tmp[A-Za-z0-9_]+\.dcm$")


def safe_uid_name(uid: str | None) -> str:
    """A file-name-safe stand-in for a (possibly hostile) UID string."""
    text = (uid or "").strip()
    if _UID.match(text) and len(text) <= 64:
        return text
    return "x" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Kept:
    relative_path: str
    size: int
    sha256: str
    already_present: bool  # identical bytes were already kept (a resend)


class Spool:
    def __init__(self, root: Path, gate_id: str | None = None):
        """`gate_id`: receives go to `incoming/<gate_id>/`, so gates sharing one spool
        never sweep each other's receives in progress (None: `incoming/` itself)."""
        self.root = Path(root).resolve()
        self.incoming = self.root / "incoming" / gate_id if gate_id else self.root / "incoming"
        self.objects = self.root / "objects"
        for folder in (self.root, self.root / "incoming", self.incoming, self.objects):
            folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)

    def path(self, relative_path: str) -> Path:
        resolved = (self.root / relative_path).resolve()
        if self.root not in resolved.parents:
            raise ValueError(f"spool path escapes the spool: {relative_path!r}")
        return resolved

    def keep(self, temp_path: Path, sop_instance_uid: str | None,
             content: tuple[str, int] | None = None) -> Kept:
        """Durably move a received temp file into the spool; returns where it went.

        Identical content for the same UID maps to the same name, so a resend
        is idempotent; different content gets its own file. `content`: the
        file's (SHA-256 hex, length) if the receiver hashed it while writing;
        then the file is not read again (unless its length on disk differs).
        """
        temp_path = Path(temp_path)
        with open(temp_path, "rb+") as handle:
            if content is None or os.fstat(handle.fileno()).st_size != content[1]:
                content = _hash(handle)
            os.fchmod(handle.fileno(), FILE_MODE)  # the receive's temp file is 0600
            os.fsync(handle.fileno())
        sha, size = content
        name = safe_uid_name(sop_instance_uid)
        shard = hashlib.sha256(name.encode()).hexdigest()[:2]
        folder = self.objects / shard
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        final = folder / f"{name}.{sha[:16]}.dcm"
        already_present = final.exists()
        os.replace(temp_path, final)
        try:
            fsync_dir(folder)
        except OSError:
            # Not durably kept, and the caller answers a failure: leave no orphan behind.
            if not already_present:
                final.unlink(missing_ok=True)
            raise
        return Kept(str(final.relative_to(self.root)), size, sha, already_present)

    def drop_cached(self, relative_path: str) -> None:
        """Drop a kept object's pages from the page cache (its bytes stay on disk).

        For the last reader of an object, when it is done with it for now: a
        later read comes from disk. Clean pages only (`keep` fsyncs before it
        returns), so nothing is written. Best effort: a file that is gone or a
        system without posix_fadvise is left as it is."""
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self.path(relative_path), os.O_RDONLY)
        except (OSError, ValueError):
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def discard(self, relative_path: str) -> None:
        try:
            self.path(relative_path).unlink()
        except FileNotFoundError:
            pass

    def kept_files(self):
        """(relative path, size, mtime) of every file under `objects/` (never `incoming/`)."""
        for shard in sorted(os.scandir(self.objects), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_file(follow_symlinks=False):
                    yield f"objects/{shard.name}/{entry.name}", st.st_size, st.st_mtime

    def remove_stale(self, relative_path: str, min_age_s: float) -> int | None:
        """Remove a kept file unless it was written less than `min_age_s` ago; the
        bytes freed, or None when it was gone or is kept.

        Names are UID plus content hash, so a resend of identical bytes is kept
        under the same name, possibly while retention decides to remove the old
        copy. The file is first renamed aside (atomic); if what was moved is
        young, it is that resend and is put back. Nothing a receive just kept is
        ever lost to a prune."""
        path = self.path(relative_path)
        aside = path.with_name(f".pruning-{path.name}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        size, mtime = aside.stat().st_size, aside.stat().st_mtime
        if time.time() - mtime < min_age_s:
            try:
                os.link(aside, path)
            except FileExistsError:  # kept again meanwhile: the same bytes are there
                pass
            aside.unlink()
            fsync_dir(path.parent)
            return None
        aside.unlink()
        fsync_dir(path.parent)
        return size

    def sweep_incoming(self, min_age_s: float = 0.0) -> list[str]:
        """Delete temp files of receives that ended without being kept; their names.

        A receive in progress holds its temp file open in this process from
        its first byte until the C-STORE handler has returned (pynetdicom
        closes it after the handler), so a temp file that no descriptor of
        this process holds open is a leftover: of a receive aborted midway
        (its sender got no Success) or of an earlier run of the gate. An
        aborted receive's file object can stay open inside an unreachable
        pynetdicom association until the garbage collector frees it, which is
        why a collection runs first (only when a candidate is older than
        `min_age_s`: files being written are younger). Only files named like
        pynetdicom's temp files are touched. Without /proc (not Linux) only
        files older than a day are removed.
        """
        now = time.time()
        candidates = []
        try:
            entries = list(os.scandir(self.incoming))
        except OSError as exc:
            log.warning("cannot list %s: %s", self.incoming, exc)
            return []
        for entry in entries:
            if not _RECEIVE_TEMP.match(entry.name):
                continue
            try:
                old_enough = now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s
                if entry.is_file(follow_symlinks=False) and old_enough:
                    candidates.append(Path(entry.path))
            except OSError:
                continue
        if not candidates:
            return []
        gc.collect()
        open_now = _open_files()
        removed = []
        for path in candidates:
            if open_now is None:
                try:
                    if now - path.stat().st_mtime < 86400:
                        continue
                except OSError:
                    continue
            elif str(path) in open_now:
                continue
            try:
                path.unlink()
            except FileNotFoundError:  # kept or discarded meanwhile
                continue
            except OSError as exc:
                log.warning("cannot remove the leftover %s: %s", path, exc)
                continue
            removed.append(path.name)
        if removed:
            log.warning("removed %d leftover temp file(s) of receives that were never acknowledged from %s",
                        len(removed), self.incoming)
        return removed


def _hash(handle) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _open_files() -> set[str] | None:
    """Paths this process holds open (Linux /proc), or None if that cannot be known."""
    fd_dir = "/proc/self/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    paths = set()
    for fd in fds:
        try:
            paths.add(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
    return paths
