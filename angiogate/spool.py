"""The spool: where received objects live on disk, written durably.

A received object arrives as a temporary file (pynetdicom writes it to the
spool's `incoming/` folder, on the same filesystem, so moving it is a rename,
not a copy). `Spool.keep` fsyncs it, names it from its SOP Instance UID and
content hash, renames it into `objects/` and fsyncs the folder: when it
returns, the object survives a crash or power loss.

File names never come from untrusted strings unchecked: a UID that is not a
well-formed DICOM UID (digits and dots, at most 64 characters) is replaced
by its hash, so `../../etc/x` cannot leave the spool.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.incoming = self.root / "incoming"
        self.objects = self.root / "objects"
        for folder in (self.incoming, self.objects):
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, relative_path: str) -> Path:
        resolved = (self.root / relative_path).resolve()
        if self.root not in resolved.parents:
            raise ValueError(f"spool path escapes the spool: {relative_path!r}")
        return resolved

    def keep(self, temp_path: Path, sop_instance_uid: str | None) -> Kept:
        """Durably move a received temp file into the spool; returns where it went.

        Identical content for the same UID maps to the same name, so a resend
        is idempotent; different content gets its own file.
        """
        temp_path = Path(temp_path)
        digest = hashlib.sha256()
        size = 0
        with open(temp_path, "rb+") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
            os.fsync(handle.fileno())
        sha = digest.hexdigest()
        name = safe_uid_name(sop_instance_uid)
        shard = hashlib.sha256(name.encode()).hexdigest()[:2]
        folder = self.objects / shard
        folder.mkdir(exist_ok=True)
        final = folder / f"{name}.{sha[:16]}.dcm"
        already_present = final.exists()
        os.replace(temp_path, final)
        fsync_dir(folder)
        return Kept(str(final.relative_to(self.root)), size, sha, already_present)

    def discard(self, relative_path: str) -> None:
        try:
            self.path(relative_path).unlink()
        except FileNotFoundError:
            pass
