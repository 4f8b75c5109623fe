"""The spool's free-space watermark: refuse new objects before the disk is full.

Below `spool.min_free_bytes` free on the spool's filesystem a C-STORE is
answered 0xA700 (Out of Resources) before any of its bytes are written
(receive/receive_file.py asks `Watermark.refuses` when the receive's file is
made), so a full disk never cuts a receive, the verdict log or the judge
short, and the modality keeps the object and retries. /health/ready fails
below the same watermark (web/health.py), so a load balancer sends senders
elsewhere exactly when this gate would refuse them.

One WARNING when an episode starts (not one per refused object) and one
INFO line when free space is back above the watermark.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class BelowWatermark(OSError):
    """A receive refused because the spool's filesystem is below the watermark."""

    def __init__(self, free: int, min_free_bytes: int):
        super().__init__(errno.ENOSPC, f"{free} bytes free on the spool's filesystem, below "
                                       f"spool.min_free_bytes {min_free_bytes}")


def free_bytes(path: Path) -> int:
    """Free bytes (for an unprivileged writer) on the filesystem holding `path`."""
    return shutil.disk_usage(path).free


class Watermark:
    def __init__(self, spool_dir: Path, min_free_bytes: int):
        self.spool_dir = Path(spool_dir)
        self.min_free_bytes = min_free_bytes
        self._low = False
        self._lock = threading.Lock()

    def refusal(self) -> BelowWatermark | None:
        """The reason to refuse an object now, or None when there is room (or the
        watermark is off). Free space that cannot be read is not a refusal: the
        write itself then says whether it fits."""
        if self.min_free_bytes <= 0:
            return None
        try:
            free = free_bytes(self.spool_dir)
        except OSError:
            return None
        low = free < self.min_free_bytes
        with self._lock:
            started, ended, self._low = low and not self._low, self._low and not low, low
        if started:
            log.warning("the spool %s has %d bytes free, below spool.min_free_bytes %d: C-STORE is answered "
                        "0xA700 (Out of Resources) until space is freed (`angiogate spool report`, "
                        "`angiogate spool prune`)", self.spool_dir, free, self.min_free_bytes)
        elif ended:
            log.info("the spool %s has %d bytes free again (spool.min_free_bytes %d): receiving",
                     self.spool_dir, free, self.min_free_bytes)
        return BelowWatermark(free, self.min_free_bytes) if low else None
