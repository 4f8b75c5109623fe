"""The file a C-STORE is received into: what happens when the disk fills,
and when an object is larger than `max_object_bytes`.

pynetdicom (STORE_RECV_CHUNKED_DATASET) writes each incoming dataset with
`tempfile.NamedTemporaryFile`, from its network thread. On a full disk the
write raises there, the thread dies and the association is aborted: the
sender gets no Success, but not a status either. `ReceiveFile` stands in for
that temporary file: the first write error is kept, the partial file is
truncated to give the space back, the rest of the object is read off the
network and dropped, and the C-STORE handler answers 0xA700 (Out of
Resources), so the sender keeps the object and retries later.

The same file counts the bytes written to it: past `max_object_bytes` it
gives its space back and drops the rest the same way, with an
`ObjectTooLarge` error, so an oversized object never fills the disk and is
never held in memory; the C-STORE handler refuses it with 0xA700 too.

Below the spool's free-space watermark (store/free_space.py) the file is
refused when it is made: nothing of the object is written, and the handler
answers 0xA700 the same way.

It also hashes the object as it arrives (SHA-256 and length of every byte
written), so keeping it in the spool need not read the whole file back
before Success: for a 512x512x80 JPEG Lossless clip (7.5 MB) `Spool.keep`
took a median 80 ms (10 ms CPU) on a loaded 2-core machine, and 22 ms
(2 ms CPU) with the hash made during the receive (6.6 ms CPU there).

This replaces an attribute of pynetdicom's `dimse_messages` module; it is
checked against pynetdicom 3.0 (where the file is created there and only
`write`, `file.flush`, `name` and `close` are used).
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from typing import Callable

from pynetdicom import dimse_messages


class ObjectTooLarge(OSError):
    """The object being received passed `max_object_bytes`."""

    def __init__(self, limit: int):
        super().__init__(f"larger than max_object_bytes ({limit} bytes)")
        self.limit = limit


class ReceiveFile:
    def __init__(self, *args, refusal: Callable[[], OSError | None] | None = None,
                 max_bytes: int | None = None, **kwargs):
        self._inner = tempfile.NamedTemporaryFile(*args, **kwargs)
        self.name = self._inner.name
        self.file = self  # pynetdicom calls `.file.flush()`
        self.max_bytes = max_bytes  # None: no limit
        self.received = 0  # bytes written or dropped: the object's size so far
        # `refusal`: asked once, before the first byte; an error it returns refuses the object.
        self.error: OSError | None = refusal() if refusal is not None else None
        self._sha256 = hashlib.sha256()
        self._size = 0

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            try:
                self._inner.file.truncate(0)
            except OSError:
                pass

    def write(self, data) -> int:
        self.received += len(data)
        if self.error is None and self.max_bytes is not None and self.received > self.max_bytes:
            self._fail(ObjectTooLarge(self.max_bytes))
        if self.error is None:
            try:
                written = self._inner.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._sha256.update(data)  # releases the GIL for large chunks
                self._size += len(data)
                return written
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._inner.flush()
            except OSError as exc:
                self._fail(exc)

    def content(self) -> tuple[str, int] | None:
        """(SHA-256 hex, length) of every byte written; None after a write error."""
        return None if self.error is not None else (self._sha256.hexdigest(), self._size)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        try:
            self._inner.close()
        except OSError as exc:
            self._fail(exc)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def install(refusal: Callable[[], OSError | None] | None = None,
            max_object_bytes: int | None = None) -> None:
    """Make pynetdicom receive C-STORE datasets into ReceiveFile objects of at most
    `max_object_bytes`; `refusal` (the spool's `Watermark.refusal`) may refuse each
    one before it is written."""
    dimse_messages.NamedTemporaryFile = functools.partial(ReceiveFile, refusal=refusal,
                                                          max_bytes=max_object_bytes)


def receive_error(request) -> OSError | None:
    """The write error of the file this C-STORE request was received into, if any
    (ObjectTooLarge when it passed max_object_bytes)."""
    received = getattr(request, "_dataset_file", None)
    return getattr(received, "error", None)


def received_bytes(request) -> int | None:
    """How many bytes of this C-STORE request's object arrived (file meta included)."""
    return getattr(getattr(request, "_dataset_file", None), "received", None)


def received_content(request) -> tuple[str, int] | None:
    """(SHA-256 hex, length) of the file this C-STORE request was received into, if known."""
    received = getattr(request, "_dataset_file", None)
    return received.content() if isinstance(received, ReceiveFile) else None
