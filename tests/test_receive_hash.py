"""A received object is hashed while it arrives, and the spool trusts that hash.

`ReceiveFile` (angiogate/receive/receive_file.py) hashes every byte
pynetdicom writes, so `Spool.keep` fsyncs and renames without reading the
file back; the verdict log's `file_sha256` and `file_size` must still be
those of the kept file, byte for byte, through the real SCP.
"""
from __future__ import annotations

import hashlib

from angiogate.receive.receive_file import ReceiveFile
from angiogate.store.spool import Spool
from peers import count_successes, storescu


def test_receive_file_hashes_what_it_writes_and_keep_uses_it(tmp_path):
    spool = Spool(tmp_path / "spool")
    received = ReceiveFile(delete=False, mode="wb", suffix=".dcm", dir=spool.incoming)
    chunks = [b"\x00" * 128, b"DICM", bytes(range(256)) * 700, b"tail"]
    for chunk in chunks:
        received.write(chunk)
        received.file.flush()
    received.close()
    data = b"".join(chunks)
    assert received.content() == (hashlib.sha256(data).hexdigest(), len(data))

    # The receiver's hash is taken as it is: the file is not read a second time.
    trusted = ("f" * 64, len(data))
    kept = spool.keep(received.name, "1.2.3.4", trusted)
    assert (kept.sha256, kept.size) == trusted


def test_keep_reads_the_file_when_the_length_disagrees(tmp_path):
    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "tmpabc.dcm"
    temp.write_bytes(b"twelve bytes")
    kept = spool.keep(temp, "1.2.3.5", ("f" * 64, 11))
    assert (kept.sha256, kept.size) == (hashlib.sha256(b"twelve bytes").hexdigest(), 12)


def test_the_log_holds_the_kept_files_hash_through_the_real_scp(gate_factory, phantoms):
    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows][:4]
    gate = gate_factory({"model": {"path": "none"}}).start()
    result = storescu(files, gate.port, aec="ANGIOGATE", timeout=120)
    assert count_successes(result) == len(files), result.stderr[-4000:]
    verdicts = gate.wait_settled(len(files))
    for row in verdicts:
        kept = (gate.spool_dir / row["file_path"]).read_bytes()
        assert (row["file_sha256"], row["file_size"]) == (hashlib.sha256(kept).hexdigest(), len(kept))
