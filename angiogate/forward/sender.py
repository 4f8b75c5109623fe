"""C-STORE SCU toward one destination, reusing its association.

Each object is offered in the syntax it was received in; a second context
per SOP class offers uncompressed syntaxes so a peer that accepts no
compressed syntax still gets the object (decompressed by pydicom, the only
case where the gate transcodes). Files in their own syntax are streamed from
disk unchanged (pynetdicom's STORE_SEND_CHUNKED_DATASET), so the pixel data
the peer receives is byte-identical to what the gate received.

With `tls` (a destination's `tls` block, angiogate/dicom/tls.py) the
association runs over TLS; a failed handshake, or a client certificate the
peer refuses, is a SendError naming OpenSSL's reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.presentation import build_context

from angiogate.dicom.contexts import UNCOMPRESSED
from angiogate.dicom.identity import gate_ae
from angiogate.dicom.tls import ClientTls
from angiogate.forward.target import ContextsRefused, Item, SendError

log = logging.getLogger(__name__)

# DIMSE statuses a peer may answer that still mean "stored".
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128


def valid_uid(value: str | None) -> bool:
    """A well-formed UID that a presentation context can carry."""
    return bool(value) and UID(value).is_valid


def file_meta_uids(path: Path) -> tuple[str | None, str | None]:
    """(SOP Class UID, Transfer Syntax UID) from a Part-10 file's meta header, or Nones."""
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return None, None
    sop_class, syntax = meta.get("MediaStorageSOPClassUID"), meta.get("TransferSyntaxUID")
    return (str(sop_class) if sop_class else None), (str(syntax) if syntax else None)


class Sender:
    def __init__(self, ae_title: str, host: str, port: int, *, calling_ae_title: str,
                 connect_timeout_s: float = 10, dimse_timeout_s: float = 120, tls: ClientTls | None = None):
        self.ae_title, self.host, self.port = ae_title, host, port
        self.tls = tls
        self.ae = gate_ae(calling_ae_title)
        self.ae.acse_timeout = connect_timeout_s
        self.ae.connection_timeout = connect_timeout_s
        self.ae.dimse_timeout = dimse_timeout_s
        self.ae.network_timeout = dimse_timeout_s
        self.assoc = None
        self._proposed: set[tuple[str, str]] = set()

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def _contexts_for(self, items: list[Item]) -> list:
        contexts, seen = [], set()
        for item in items:
            for syntaxes in ([item.transfer_syntax_uid], UNCOMPRESSED):
                key = (item.sop_class_uid, tuple(syntaxes))
                if key in seen or len(contexts) >= MAX_CONTEXTS:
                    continue
                seen.add(key)
                contexts.append(build_context(item.sop_class_uid, list(syntaxes)))
        return contexts

    def _accepted(self, sop_class_uid: str, syntaxes) -> str | None:
        for cx in self.assoc.accepted_contexts:
            if cx.abstract_syntax == sop_class_uid and cx.transfer_syntax[0] in syntaxes:
                return cx.transfer_syntax[0]
        return None

    def open_for(self, items: list[Item]) -> None:
        """Make sure the association can carry every item; re-associate if not."""
        needed = {(i.sop_class_uid, i.transfer_syntax_uid) for i in items}
        if self.assoc is not None and self.assoc.is_established and needed <= self._proposed:
            return
        self.close()
        if self.tls is not None:
            self.tls.forget()
        assoc = self.ae.associate(self.host, self.port, contexts=self._contexts_for(items),
                                  ae_title=self.ae_title, tls_args=self.tls.tls_args if self.tls else None)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:  # acknowledged, then aborted by us
                offered = sorted({f"{i.sop_class_uid} in {i.transfer_syntax_uid}" for i in items})
                raise ContextsRefused(f"{self} accepted the association but none of the presentation contexts "
                                      f"proposed for {'; '.join(offered)} (nor uncompressed)")
            tls_failure = self.tls.failure() if self.tls is not None else None
            if tls_failure is not None:
                raise SendError(f"association with {self} failed: TLS with {self.tls.server_hostname}: "
                                f"{tls_failure}", connection=True)
            raise SendError(f"association with {self} failed (rejected, aborted or unreachable)",
                            connection=True)
        self.assoc = assoc
        self._proposed = needed

    def send(self, item: Item) -> tuple[int, str]:
        """Store one object; returns (status, transfer syntax used). Raises SendError."""
        self.open_for([item])
        syntax = self._accepted(item.sop_class_uid, [item.transfer_syntax_uid])
        if syntax is not None:
            status = store_file(self.assoc, item.path)
        else:
            syntax = self._accepted(item.sop_class_uid, UNCOMPRESSED)
            if syntax is None:
                raise SendError(f"{self} accepts SOP class {item.sop_class_uid} in neither "
                                f"{item.transfer_syntax_uid} nor an uncompressed syntax")
            try:
                dataset = dcmread(item.path)
                if dataset.file_meta.TransferSyntaxUID.is_compressed:
                    # Same object, another encoding: it keeps its SOP Instance UID.
                    dataset.decompress(generate_instance_uid=False)
            except Exception as exc:
                raise SendError(f"{self} needs an uncompressed copy and decompression failed: {exc}") from exc
            status = self.assoc.send_c_store(dataset)
        if not status or "Status" not in status:
            self.close()
            raise SendError(f"no response from {self} (association aborted or timed out)", connection=True)
        code = int(status.Status)
        if code != 0x0000 and code not in WARNING_STATUSES:
            raise SendError(f"{self} answered failure status 0x{code:04X}", status=code)
        return code, str(syntax)

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            finally:
                self.assoc = None
                self._proposed = set()


def echo(ae_title: str, host: str, port: int, *, calling_ae_title: str, timeout_s: float = 10) -> int:
    """C-ECHO a peer; returns its status (raises SendError if no association)."""
    from pynetdicom.sop_class import Verification

    ae = gate_ae(calling_ae_title)
    ae.acse_timeout = ae.connection_timeout = ae.dimse_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise SendError(f"association with {ae_title}@{host}:{port} failed", connection=True)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise SendError(f"no C-ECHO response from {ae_title}@{host}:{port}", connection=True)
    return int(status.Status)


def store_file(assoc, path: Path):
    """C-STORE the DICOM file at `path` as it is on disk, streamed in chunks (pynetdicom's
    STORE_SEND_CHUNKED_DATASET, which applies to sends from a path only); returns the status."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    return assoc.send_c_store(path)
