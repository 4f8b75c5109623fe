"""The clips the chaos script pushes, their re-encoded re-sends, and content digests.

A clip's *content* is what a receiver keeps of it whatever the file meta a
peer wrote around it: the transfer syntax, the SOP Instance UID and the
Pixel Data bytes. `content_digest` hashes exactly that, so the file a sender
pushed, the gate's spool copy and the downstream's copy of the same object
have one digest, and a re-sent object with other bytes has another.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pydicom

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def make_clips(out_dir: Path, n: int, seed: int) -> list[dict]:
    """`n` small phantom clips (size 128, both syntaxes) with UIDs unique to `seed`."""
    from angiogate.synth import generate
    from angiogate.synth.kinds import KINDS

    per_kind = max(1, math.ceil(n / len(KINDS)))
    rows = generate(out_dir, per_kind=per_kind, seed=seed, size=128,
                    syntaxes=("explicit", "jpeg-lossless"), min_seconds=2.0, max_seconds=4.0,
                    min_frames=20, max_frames=60)[:n]
    for r in rows:
        r["path"] = str(out_dir / r["file"])
    return rows


def reencoded(source: Path, out: Path) -> Path:
    """The same object under the same UIDs in the other syntax the synth writes
    (Explicit VR LE <-> JPEG Lossless SV1), as a PACS or modality re-sends it:
    other bytes, same pixels, same SOP Instance UID."""
    from angiogate.synth.dicom_writer import write_xa

    ds = pydicom.dcmread(source)
    syntax = "explicit" if ds.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1 else "jpeg-lossless"
    return write_xa(out, ds.pixel_array, frame_rate_hz=1000.0 / float(ds.FrameTime), syntax=syntax,
                    patient_id=str(ds.PatientID), patient_name=str(ds.PatientName),
                    study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
                    sop_instance_uid=str(ds.SOPInstanceUID), series_number=int(ds.SeriesNumber),
                    instance_number=int(ds.InstanceNumber),
                    series_description=str(ds.get("SeriesDescription", "")))


def content_digest(path: Path) -> tuple[str, str] | None:
    """(SOP Instance UID, sha256 of transfer syntax + UID + Pixel Data), or None if unreadable."""
    try:
        ds = pydicom.dcmread(path, force=True)
        uid = str(ds.SOPInstanceUID)
        digest = hashlib.sha256()
        digest.update(str(ds.file_meta.TransferSyntaxUID).encode() + b"\0" + uid.encode() + b"\0")
        digest.update(bytes(ds.PixelData))
        return uid, digest.hexdigest()
    except Exception:
        return None
