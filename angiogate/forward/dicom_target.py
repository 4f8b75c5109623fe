"""A DICOM peer as a forward target: C-STORE over one reused association (`sender.py`).

Its queue key is `AE@host:port`; a destination re-addressed under the same
AE title is recognised by `ae_title_of`. With `tls.enabled` the association
runs over DICOM TLS (the key stays the same: turning TLS on or off does not
re-address the queue).
"""

from __future__ import annotations

from pathlib import Path

from angiogate.config import Config, Destination
from angiogate.dicom.tls import client_tls
from angiogate.forward.sender import Sender, file_meta_uids, valid_uid
from angiogate.forward.target import Item
from angiogate.store.ledger import ForwardJob


def destination_key(destination: Destination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def owns(key: str) -> bool:
    return True  # the original kind: any key another kind does not own (targets.KINDS lists it last)


def ae_title_of(key: str) -> str:
    return key.partition("@")[0]


class DicomTarget:
    """One configured destination (`destinations[]`), reached as the gate's calling AE title."""

    def __init__(self, destination: Destination, config: Config):
        self.key = destination_key(destination)
        self.destination = destination
        self.sender = Sender(destination.ae_title, destination.host, destination.port,
                             calling_ae_title=config.calling_ae_title,
                             connect_timeout_s=config.forwarding.connect_timeout_s,
                             tls=client_tls(destination.tls, destination.host,
                                            f"destinations[{self.key}].tls"))

    def item(self, job: ForwardJob, path: Path) -> Item | str:
        sop_class, syntax = job.sop_class_uid, job.transfer_syntax_uid
        if not (valid_uid(sop_class) and valid_uid(syntax)):
            # The header was unreadable at intake (a released or fail-open error clip):
            # the file meta the SCP wrote from the association usually still names both.
            sop_class, syntax = file_meta_uids(path)
        if not (valid_uid(sop_class) and valid_uid(syntax)):
            return (f"cannot be sent over DICOM: its SOP Class UID ({sop_class or 'none'}) or transfer "
                    f"syntax ({syntax or 'none'}) is unknown or malformed in the header and the file meta")
        return Item(path, sop_class, syntax)

    def open_for(self, items: list[Item]) -> None:
        self.sender.open_for(items)

    def send(self, job: ForwardJob, item: Item) -> tuple[int, str]:
        return self.sender.send(item)

    def close(self) -> None:
        self.sender.close()
