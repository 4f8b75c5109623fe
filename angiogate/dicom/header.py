"""Header facts of one received object, read without touching pixel data.

Everything the rules, the frame sampler and the verdict row need from the
DICOM header, in the field's words, with the frame rate taken from the first
timing attribute present: FrameTime, FrameTimeVector, CineRate,
RecommendedDisplayFrameRate (acquisition timing first, display hints last).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

class HeaderError(ValueError):
    """The object's header cannot be read; the message says why."""


@dataclass(frozen=True)
class ClipHeader:
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    series_number: int | None
    instance_number: int | None
    series_description: str | None
    modality: str | None
    transfer_syntax_uid: str | None
    rows: int | None
    columns: int | None
    frames: int | None
    frame_rate_hz: float | None
    frame_rate_source: str | None
    bits_allocated: int | None
    samples_per_pixel: int | None
    has_pixel_data: bool

    @property
    def duration_s(self) -> float | None:
        if self.frames is None or not self.frame_rate_hz:
            return None
        return self.frames / self.frame_rate_hz


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):  # several values where one belongs: keep them as encoded
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _positive_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def frame_rate(ds: Dataset) -> tuple[float | None, str | None]:
    """(frames per second, attribute it came from) or (None, None)."""
    frame_time_ms = _positive_float(ds.get("FrameTime"))
    if frame_time_ms is None:
        # Enhanced XA/XRF keep FrameTime-like timing in the shared functional groups.
        for group in ds.get("SharedFunctionalGroupsSequence", []) or []:
            for content in group.get("FrameContentSequence", []) or []:
                frame_time_ms = frame_time_ms or _positive_float(content.get("FrameAcquisitionDuration"))
    if frame_time_ms is not None:
        return 1000.0 / frame_time_ms, "FrameTime"
    vector = ds.get("FrameTimeVector")
    if vector is not None and vector != "":
        # pydicom gives a single number, not a list, when the vector has one value.
        values = [vector] if isinstance(vector, (int, float, str)) else list(vector)
        # The first entry is 0 by definition (time of the first frame).
        steps = [v for v in (_positive_float(x) for x in values[1:]) if v is not None]
        if steps:
            return 1000.0 / median(steps), "FrameTimeVector"
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive_float(ds.get(keyword))
        if rate is not None:
            return rate, keyword
    return None, None


def header_from_dataset(ds: Dataset) -> ClipHeader:
    meta = getattr(ds, "file_meta", None) or Dataset()
    rate, source = frame_rate(ds)
    frames = _int(ds, "NumberOfFrames")
    if frames is None and "PixelData" in ds:
        frames = 1
    return ClipHeader(
        sop_instance_uid=_text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        accession_number=_text(ds, "AccessionNumber"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality"),
        transfer_syntax_uid=_text(meta, "TransferSyntaxUID"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=frames,
        frame_rate_hz=rate,
        frame_rate_source=source,
        bits_allocated=_int(ds, "BitsAllocated"),
        samples_per_pixel=_int(ds, "SamplesPerPixel"),
        has_pixel_data="PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
    )


def read_header(path: Path) -> ClipHeader:
    """Read the header of a DICOM file; pixel data is not loaded.

    Raises HeaderError when the file is not readable DICOM, or is truncated:
    the parser ended short of the file's end (pydicom gives up, with only a
    warning, at a value whose delimiter never comes) or past it (a value's
    length runs beyond the last byte). That is told from where the parser
    ended, not from warnings: `warnings.catch_warnings` is process-global, so
    in the judge's threads another read's warning could mark a good object
    truncated, or hide a truncated one.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            # defer_size keeps large values (pixel data) on disk while parsing.
            ds = dcmread(fp, defer_size="256 KB", force=True)
            ended_at = fp.tell()
        header = header_from_dataset(ds)
    except Exception as exc:  # pydicom raises many types on malformed input
        raise HeaderError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    if header.sop_class_uid is None and header.sop_instance_uid is None:
        raise HeaderError("not a DICOM object: no SOP Class or SOP Instance UID")
    if ended_at != size:
        raise HeaderError(f"truncated object: the DICOM data ends at byte {ended_at} of a {size}-byte file"
                          if ended_at < size else
                          f"truncated object: a value runs to byte {ended_at}, past the end of the "
                          f"{size}-byte file")
    return header
