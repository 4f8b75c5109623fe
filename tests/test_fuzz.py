"""Fuzzing (issue 4, point 4): mutated DICOM objects never crash the judge or the SCP.

(a) in-process, the code path of `angiogate score` (read_header, then
    Judge.judge; HeaderError becomes an `error` judgement): byte flips,
    truncations, inserted garbage and lying NumberOfFrames / Rows / Columns /
    BitsAllocated / TransferSyntaxUID values on small valid XA files. The
    judge never raises and always gives a decision with reasons.
    ANGIOGATE_FUZZ_EXAMPLES=10000 for the full run (default 300, CI size).
(b) through a running gate's SCP: a few hundred mutated files streamed raw
    (pynetdicom chunked send); the SCP survives, every acknowledged object
    has a judged verdict row, and whatever `score` calls an error the gate
    calls an error too, with a reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

from peers import StoreSCP, echoscu

EXAMPLES = int(os.environ.get("ANGIOGATE_FUZZ_EXAMPLES", "300"))
SCP_EXAMPLES = int(os.environ.get("ANGIOGATE_FUZZ_SCP_EXAMPLES", "300"))
DECISIONS = {"satisfactory", "unsatisfactory", "error", "not_applicable"}
SYNTAX_CHOICES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4", "", "x" * 64,
]


# ---------------------------------------------------------------- valid bases

def _base_files(folder: Path) -> list[Path]:
    """Small valid, satisfactory XA clips: 8-bit explicit, JPEG Lossless SV1, 16-bit implicit."""
    from angiogate.synth.dicom_writer import write_xa

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (30, 32, 32), dtype=np.uint8)
    made = []
    for syntax in ("explicit", "jpeg-lossless"):
        made.append(write_xa(folder / f"{syntax}.dcm", frames, frame_rate_hz=15.0, syntax=syntax,
                             patient_id="FUZZ", patient_name="Fuzz^Base",
                             study_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                             sop_instance_uid=generate_uid(), series_number=1, instance_number=1,
                             series_description="Coronary LCA"))
    ds = pydicom.dcmread(made[0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (frames.astype(np.uint16) * 16).tobytes()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / "implicit16.dcm"
    ds.save_as(path, enforce_file_format=True)
    made.append(Path(path))
    return [Path(p) for p in made]


# ---------------------------------------------------------------- mutations

FIELDS = {  # keyword: (tag, VR)
    "NumberOfFrames": (Tag(0x0028, 0x0008), "IS"),
    "Rows": (Tag(0x0028, 0x0010), "US"),
    "Columns": (Tag(0x0028, 0x0011), "US"),
    "BitsAllocated": (Tag(0x0028, 0x0100), "US"),
}

field_values = {
    "NumberOfFrames": st.one_of(st.integers(-5, 10**7).map(str),
                                st.sampled_from(["", "abc", "1.5", " 30", "-0", "999999999999", "30\\2"])),
    "Rows": st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 31, 33, 4096, 4097, 65535])),
    "Columns": st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 31, 33, 4096, 4097, 65535])),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 24, 32, 64, 255, 65535]),
}

byte_ops = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
)

mutations = st.fixed_dictionaries({
    "base": st.integers(0, 2),
    "fields": st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=3).flatmap(
        lambda d: st.fixed_dictionaries({k: field_values[k] for k in d})),
    "syntax": st.one_of(st.none(), st.sampled_from(SYNTAX_CHOICES)),
    "ops": st.lists(byte_ops, max_size=6),
})


def _split(data: bytes) -> int:
    """Offset where the dataset starts (after preamble + file meta)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return 144 + struct.unpack("<I", data[140:144])[0]


def _raw(tag, vr: str, value, implicit: bool) -> RawDataElement:
    if vr == "US":
        b = struct.pack("<H", value)
    else:
        b = str(value).encode("ascii", "replace")
        b += b" " * (len(b) % 2)
    return RawDataElement(tag, None if implicit else vr, len(b), b, 0, implicit, True)


def mutate(base: Path, m: dict, *, keep_meta: bool = False) -> bytes:
    """Apply mutation `m` to `base` (fresh SOP Instance and Study UIDs first).

    With keep_meta, byte operations only touch the dataset after the file
    meta, so the object can still be sent (pynetdicom reads the meta)."""
    ds = pydicom.dcmread(base)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    for keyword, value in m["fields"].items():
        tag, vr = FIELDS[keyword]
        ds._dict[tag] = _raw(tag, vr, value, implicit)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    start = _split(data)
    if m["syntax"] is not None:  # the meta lies about the syntax; dataset bytes unchanged
        meta = FileMetaDataset(ds.file_meta)
        meta.TransferSyntaxUID = m["syntax"]
        out = io.BytesIO()
        out.write(b"\0" * 128 + b"DICM")
        try:
            write_file_meta_info(out, meta, enforce_standard=True)
        except (AttributeError, ValueError):  # an empty syntax: write the meta as it is
            out = io.BytesIO()
            out.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(out, meta, enforce_standard=False)
        data = out.getvalue() + data[start:]
        start = len(out.getvalue())
    lo = start if keep_meta else 0
    for op, where, arg in m["ops"]:
        if len(data) <= lo:
            break
        pos = lo + int(where * (len(data) - lo))
        if op == "flip":
            data = data[:pos] + bytes([data[pos] ^ arg]) + data[pos + 1:]
        elif op == "truncate":
            data = data[:max(pos, lo + 1 if keep_meta else pos)]
        elif op == "insert":
            data = data[:pos] + arg + data[pos:]
        else:
            data = data[:pos] + data[pos + arg:]
    return data


def score_like_cli(judge, path: Path):
    """What `angiogate score` does for one file."""
    from angiogate.dicom.header import HeaderError, read_header
    from angiogate.judge.verdict import Judgement

    try:
        header = read_header(path)
    except HeaderError as exc:
        return Judgement("error", "unreadable", [str(exc)], model_version=judge.model_version)
    return judge.judge(path, header=header)


@pytest.fixture(scope="module")
def judge():
    from angiogate.config import load_config
    from angiogate.judge.verdict import Judge

    return Judge(load_config(model={"path": "none"}), None)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return _base_files(tmp_path_factory.mktemp("fuzz-bases"))


def test_bases_are_clean_clips(judge, bases):
    for b in bases:
        j = score_like_cli(judge, b)
        assert j.decision == "satisfactory", (b.name, j.reasons)


# ---------------------------------------------------------------- (a) in-process

class _Sandbox:
    """Judges files in a forked child, so a native abort (a decoder's C++
    exception, a segfault) is recorded as a crash instead of ending the run."""

    def __init__(self, judge, work: Path):
        import multiprocessing

        self.judge, self.work, self.ctx = judge, work, multiprocessing.get_context("fork")
        self.proc = None

    def _serve(self, conn) -> None:
        target = self.work / f"mutant-{os.getpid()}.dcm"
        while True:
            data = conn.recv_bytes()
            target.write_bytes(data)
            try:
                j = score_like_cli(self.judge, target)
                conn.send(("ok", j.decision, j.reasons))
            except Exception as exc:
                tb = traceback.extract_tb(exc.__traceback__)
                where = next((f"{f.filename.split('/work/main/')[-1]}:{f.lineno}" for f in reversed(tb)
                              if "/angiogate/" in f.filename), "?")
                conn.send(("raised", f"{type(exc).__name__} at {where}", str(exc)[:200]))

    def judge_bytes(self, data: bytes):
        if self.proc is None or not self.proc.is_alive():
            self.conn, child = self.ctx.Pipe()
            self.proc = self.ctx.Process(target=self._serve, args=(child,), daemon=True)
            self.proc.start()
        self.conn.send_bytes(data)
        if not self.conn.poll(120):
            self.close()
            return ("died", "judging hung for 120 s", "")
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            code = self.proc.exitcode
            self.proc = None
            return ("died", f"process killed by signal {-code}" if code and code < 0
                    else f"process exited with {code}", "")

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()  # our own child, by PID
            self.proc.join(5)
        self.proc = None


def test_fuzz_score_path_never_raises(judge, bases, tmp_path):
    counts = {"examples": 0}
    decisions: dict[str, int] = {}
    crashes: dict[str, tuple] = {}
    sandbox = _Sandbox(judge, tmp_path)
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(m=mutations)
    def run(m):
        data = mutate(bases[m["base"]], m)
        counts["examples"] += 1
        outcome = sandbox.judge_bytes(data)
        if outcome[0] != "ok":  # collected, not raised, so one run reports every distinct crash
            key = f"{outcome[0]}: {outcome[1]}"
            if key not in crashes:
                crashes[key] = (outcome[2], m, data)
            return
        _, decision, reasons = outcome
        decisions[decision] = decisions.get(decision, 0) + 1
        assert decision in DECISIONS, (m, decision)
        assert reasons and all(isinstance(r, str) and r for r in reasons), (m, reasons)

    try:
        run()
    finally:
        sandbox.close()
    took = time.monotonic() - started
    print(f"\nfuzz (score path): {counts['examples']} mutated objects in {took:.1f} s, decisions {decisions}, "
          f"{len(crashes)} distinct crash(es)")
    for n, (key, (msg, m, data)) in enumerate(crashes.items()):
        keep = tmp_path / f"crash-{n}.dcm"
        keep.write_bytes(data)
        print(f"  CRASH {key}: {msg}\n    example: {m}\n    file: {keep}")
    # a floor on what ran: a strategy or filter that rejects (nearly) everything must not pass quietly
    assert counts["examples"] >= EXAMPLES * 9 // 10, (counts, EXAMPLES)
    assert not crashes, list(crashes)
    assert sum(decisions.values()) == counts["examples"], decisions  # each run example was judged


# ---------------------------------------------------------------- (b) through the SCP

def _send_all(port: int, paths: list[Path]) -> list[tuple[Path, int]]:
    """Stream each file raw; (file, status) for those the SCP answered; re-associate after aborts."""
    from pynetdicom import AE, _config

    from angiogate.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES

    contexts = list(ACCEPTED_TRANSFER_SYNTAXES)  # every syntax the gate takes, so lying metas get sent
    _config.STORE_SEND_CHUNKED_DATASET = True
    answered = []
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for ts in contexts:
        ae.add_requested_context(XRayAngiographicImageStorage, ts)
    assoc = None
    try:
        for path in paths:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="ANGIOGATE")
                assert assoc.is_established, "the SCP stopped accepting associations"
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError, KeyError, TypeError):
                continue  # no context for a lying syntax / unreadable meta: never sent
            if status and "Status" in status:
                answered.append((path, int(status.Status)))
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False
    return answered


def _dataset_bytes(path: Path) -> tuple[str, str]:
    """(transfer syntax of the file meta, sha256 of every byte after it): each side of a transfer
    writes its own meta, the dataset is what travelled."""
    data = path.read_bytes()
    syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
    return syntax, hashlib.sha256(data[_split(data):]).hexdigest()


JPEG_PROCESS_14 = "1.2.840.10008.1.2.4.57"  # the one syntax storescp +xa refuses: the gate decompresses


@pytest.fixture
def bit_preserving_storescp(tmp_path):
    """A real peer that writes each dataset exactly as it read it (+B), so what reached it can be
    compared byte for byte with what the gate kept: a mutant's broken lengths parse differently
    in DCMTK and pydicom, so Pixel Data as each parses it would not do."""
    scp = StoreSCP(tmp_path / "storescp", aet="STORESCP", extra_args=["+B"]).start()
    try:
        yield scp
    finally:
        scp.stop()


def test_fuzz_through_the_scp(gate_factory, judge, bases, tmp_path, bit_preserving_storescp):
    storescp = bit_preserving_storescp
    folder = tmp_path / "mutants"
    folder.mkdir()
    files: list[Path] = []

    @settings(max_examples=SCP_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(m=mutations)
    def make(m):
        path = folder / f"{len(files):05d}.dcm"
        path.write_bytes(mutate(bases[m["base"]], m, keep_meta=True))
        files.append(path)

    make()
    assert len(files) >= SCP_EXAMPLES * 9 // 10, (len(files), SCP_EXAMPLES)  # a floor on what ran
    # what passes goes to a real DICOM peer (one try each: a refusal is `failed`, not retried)
    gate = gate_factory({"model": {"path": "none"}, "policies": {"on_error": "hold"},
                         "forwarding": {"max_attempts": 1},
                         "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1",
                                           "port": storescp.port}]}).start()
    answered = _send_all(gate.port, files)
    assert echoscu(gate.port, aec="ANGIOGATE").returncode == 0  # the SCP is alive
    acked = [p for p, s in answered if s == 0]
    refused = [(p.name, hex(s)) for p, s in answered if s != 0]
    rows = gate.wait_settled(len(acked), timeout=300)
    print(f"\nfuzz (SCP): {len(files)} mutated files, {len(answered)} answered, {len(acked)} acknowledged, "
          f"{len(refused)} refused {refused[:5]}, {len(rows)} verdict rows")
    assert len(acked) >= len(files) // 2, "most mutants should be sendable and kept"
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    assert len(rows) == len(acked), (len(rows), len(acked))
    mismatches, offline_crashes = [], 0
    for path in acked:
        meta_uid = str(pydicom.filereader.read_file_meta_info(path).MediaStorageSOPInstanceUID)
        try:
            value = pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID
            # A mutated length can make several values of one UID; the log keeps them as
            # encoded (backslash-separated), cut to the column's 64 characters.
            ds_uid = ("\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)).strip()[:64]
        except Exception:
            ds_uid = None
        row = by_uid.get(ds_uid) or by_uid.get(meta_uid)
        assert row is not None, f"{path.name}: acknowledged but no verdict row"
        assert row["status"] == "judged" and row["decision"] in DECISIONS, row
        assert row["reasons"], row
        try:
            offline = score_like_cli(judge, path)
        except Exception:  # the in-process crash test (a) reports these; the gate must say error
            offline_crashes += 1
            assert row["decision"] == "error" and row["reasons"], row
            continue
        if offline.decision == "error":  # not a clean clip: the gate must call it an error too
            if row["decision"] != "error":
                mismatches.append((path.name, offline.reasons, row["decision"], row["reasons"]))
            else:
                assert row["reason_code"], row
    decisions = {d: sum(r["decision"] == d for r in rows) for d in DECISIONS}
    print(f"fuzz (SCP): gate decisions {decisions}; {offline_crashes} object(s) crash `score` in-process")
    assert not mismatches, mismatches[:10]
    # What reached the peer is what the log says was forwarded: one file per forwarded object,
    # each the dataset of a kept, forwarded object byte for byte; only objects kept in a syntax
    # the peer refuses may arrive as another (decompressed) dataset.
    forwarded = [r for r in rows if r["forward_status"] == "forwarded"]
    assert forwarded, decisions
    assert all(r["forward_status"] in ("forwarded", "held", "failed") for r in rows)
    at_peer = storescp.received_files()
    assert len(at_peer) == len(forwarded), (len(at_peer), len(forwarded))
    kept = [_dataset_bytes(gate.spool_dir / r["file_path"]) for r in forwarded]
    as_kept = Counter(digest for syntax, digest in kept if syntax != JPEG_PROCESS_14)
    got = Counter(digest for _, digest in map(_dataset_bytes, at_peer))
    assert not as_kept - got, "kept objects that did not reach the peer as they were kept"
    assert sum((got - as_kept).values()) == len(kept) - sum(as_kept.values()), (got, as_kept)
    print(f"fuzz (SCP): {len(forwarded)} forwarded, all at storescp")
