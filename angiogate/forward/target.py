"""What a forward target is: the protocol the forward worker talks to.

A target is one place satisfactory clips go, named in the verdict log by
its queue key (`forwards.destination`). The worker gives it `Item`s (a
spooled file with its SOP class and transfer syntax) and records what it
answers; a target raises `SendError` for a failure the worker retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from angiogate.store.ledger import ForwardJob


@dataclass(frozen=True)
class Item:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


class SendError(RuntimeError):
    """Sending failed; `status` is the peer's DIMSE status if it answered."""

    def __init__(self, message: str, status: int | None = None, connection: bool = False):
        super().__init__(message)
        self.status = status
        self.connection = connection


class ContextsRefused(SendError):
    """The peer answered the association but took none of the presentation contexts proposed for
    the objects (a SOP class or syntax it does not support): the peer is up, the objects are
    what it refuses. Each is tried alone and charged, so one never stalls the rest."""


class Target(Protocol):
    key: str  # the queue key, e.g. "AE@host:port" or "outbox:/var/outbox"

    def item(self, job: "ForwardJob", path: Path) -> Item | str:
        """What to send for `job` (its spooled file is `path`), or why it can never be sent."""

    def open_for(self, items: list[Item]) -> None:
        """Be ready to send `items` (an association, say); raises SendError if it cannot."""

    def send(self, job: "ForwardJob", item: Item) -> tuple[int, str]:
        """Deliver one item: (DIMSE status, transfer syntax delivered). Raises SendError."""

    def close(self) -> None:
        """Let go of whatever `open_for` holds (after idling, and at the end)."""
