"""The file a C-STORE is received into, and what happens when the disk fills.

pynetdicom (STORE_RECV_CHUNKED_DATASET) writes each incoming dataset with
`tempfile.NamedTemporaryFile`, from its network thread. On a full disk the
write raises there, the thread dies and the association is aborted: the
sender gets no Success, but not a status either. `ReceiveFile` stands in for
that temporary file: the first write error is kept, the partial file is
truncated to give the space back, the rest of the object is read off the
network and dropped, and the C-STORE handler answers 0xA700 (Out of
Resources), so the sender keeps the object and retries later.

Below the spool's free-space watermark (store/free_space.py) the file is
refused when it is made: nothing of the object is written, and the handler
answers 0xA700 the same way.

This replaces an attribute of pynetdicom's `dimse_messages` module; it is
checked against pynetdicom 3.0 (where the file is created there and only
`write`, `file.flush`, `name` and `close` are used).
"""

from __future__ import annotations

import functools
import tempfile
from typing import Callable

from pynetdicom import dimse_messages


class ReceiveFile:
    def __init__(self, *args, refusal: Callable[[], OSError | None] | None = None, **kwargs):
        self._inner = tempfile.NamedTemporaryFile(*args, **kwargs)
        self.name = self._inner.name
        self.file = self  # pynetdicom calls `.file.flush()`
        # `refusal`: asked once, before the first byte; an error it returns refuses the object.
        self.error: OSError | None = refusal() if refusal is not None else None

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            try:
                self._inner.file.truncate(0)
            except OSError:
                pass

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self._inner.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._inner.flush()
            except OSError as exc:
                self._fail(exc)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        try:
            self._inner.close()
        except OSError as exc:
            self._fail(exc)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def install(refusal: Callable[[], OSError | None] | None = None) -> None:
    """Make pynetdicom receive C-STORE datasets into ReceiveFile objects; `refusal`
    (the spool's `Watermark.refusal`) may refuse each one before it is written."""
    dimse_messages.NamedTemporaryFile = functools.partial(ReceiveFile, refusal=refusal)


def receive_error(request) -> OSError | None:
    """The write error of the file this C-STORE request was received into, if any."""
    received = getattr(request, "_dataset_file", None)
    return getattr(received, "error", None)
