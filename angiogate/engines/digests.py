"""sha256 of model files, remembered so a start re-hashes only files that changed.

Exports are keyed by the checkpoint's sha256 and verified against the IR
digests their sidecars record; hashing a 12 MB checkpoint and its IRs took
most of the time `angiogate score FILE` spent opening the engine. A
`DigestCache` keeps each digest with the file's stamp in
`<model.export_dir>/sha256.cache` (JSON; not named *.json, as the model
watcher takes a new *.json there for a new export) and trusts it only while
the stamp is unchanged.

The stamp is (device, inode, size, mtime_ns, ctime_ns), git's index
compromise. ctime is what makes it safe against an edited file: writing
bytes and setting mtime back (`touch -d`, `os.utime`) still moves ctime to
now, and no system call sets ctime. What it cannot see is a change made
within one tick of the clock that stamps files, right after the hash (the
"racy" case); so a digest is remembered only for a file whose mtime and
ctime were at least `SETTLED_S` old when hashing began, and whose stamp did
not move while it was read. Anyone who can write the cache file could forge
it, but the sidecars holding the expected digests sit in the same writable
folders, so the cache widens no trust.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from angiogate.engines.info import file_digest

log = logging.getLogger(__name__)

CACHE_NAME = "sha256.cache"
CACHE_FORMAT = "angiogate-sha256-cache/1"
# Files stamped more recently than this are hashed but not remembered: a change in
# the same clock tick would leave the stamp as it was (2 s: FAT's mtime granularity).
SETTLED_S = 2.0


def stamp(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a remembered digest to hold."""
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class DigestCache:
    """sha256 of files, remembered in `folder` (None: for this object's lifetime only)."""

    def __init__(self, folder: Path | None):
        self.path = Path(folder) / CACHE_NAME if folder is not None else None
        self._remembered: dict[str, dict] | None = None  # read from the file on first use
        self._hashed: dict[str, tuple[list[int], str]] = {}  # by this object, settled or not

    def digest(self, path: Path) -> str:
        """The sha256 (hex) of the file at `path`, hashed unless its stamp is unchanged since it was."""
        key = os.path.abspath(path)
        before = os.stat(key)
        current = stamp(before)
        if key in self._hashed and self._hashed[key][0] == current:
            return self._hashed[key][1]
        entry = self._entries().get(key)
        if isinstance(entry, dict) and entry.get("stamp") == current and isinstance(entry.get("sha256"), str):
            self._hashed[key] = (current, entry["sha256"])
            return entry["sha256"]
        started = time.time()
        digest = file_digest(Path(key))
        self._hashed[key] = (current, digest)
        settled = started - max(before.st_mtime_ns, before.st_ctime_ns) / 1e9 >= SETTLED_S
        if settled and stamp(os.stat(key)) == current:
            self._remember(key, current, digest)
        return digest

    def _entries(self) -> dict[str, dict]:
        if self._remembered is None:
            self._remembered = self._read()
        return self._remembered

    def _read(self) -> dict[str, dict]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: every file is hashed
        if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT or not isinstance(raw.get("files"), dict):
            return {}
        return raw["files"]

    def _remember(self, key: str, current: list[int], digest: str) -> None:
        """Add one digest to the file (merged with what others wrote meanwhile; files gone are dropped)."""
        self._entries()[key] = {"stamp": current, "sha256": digest}
        if self.path is None:
            return
        files = {**self._read(), key: {"stamp": current, "sha256": digest}}
        files = {name: entry for name, entry in files.items() if os.path.exists(name)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "files": files}, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only export folder: hashed again next time, no harm
            log.debug("could not remember the sha256 of %s in %s: %s", key, self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
