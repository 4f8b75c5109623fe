"""The local outbox as a forward target: each clip copied, fsync'd and renamed into a folder.

Used when no destination is configured. Its queue key is `outbox:<folder>`;
the file is copied as it is (no DICOM, so its SOP class and syntax need not
be known).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from angiogate.forward.target import Item
from angiogate.store.ledger import ForwardJob
from angiogate.store.spool import FILE_MODE, FOLDER_MODE, fsync_dir, safe_uid_name

PREFIX = "outbox:"


def outbox_key(outbox_dir: Path) -> str:
    return f"{PREFIX}{outbox_dir}"


def owns(key: str) -> bool:
    return key.startswith(PREFIX)


def ae_title_of(key: str) -> None:
    return None  # the outbox has no AE title: a moved outbox is the one outbox


class OutboxTarget:
    def __init__(self, outbox_dir: Path):
        self.folder = Path(outbox_dir)
        self.key = outbox_key(outbox_dir)

    def item(self, job: ForwardJob, path: Path) -> Item | str:
        return Item(path, job.sop_class_uid or "", job.transfer_syntax_uid or "")

    def open_for(self, items: list[Item]) -> None:
        pass

    def send(self, job: ForwardJob, item: Item) -> tuple[int, str]:
        self.folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        final = self.folder / f"{safe_uid_name(job.sop_instance_uid)}.dcm"
        temp = final.with_suffix(".part")
        shutil.copyfile(item.path, temp)
        with open(temp, "rb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(temp, final)
        fsync_dir(self.folder)
        return 0x0000, item.transfer_syntax_uid

    def close(self) -> None:
        pass
