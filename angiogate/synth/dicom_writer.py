"""Write frames as a real multi-frame X-Ray Angiographic Image Storage object.

``write_xa(path, frames, frame_rate_hz=..., syntax=...)`` stores uint8
MONOCHROME2 cine frames either uncompressed (Explicit VR Little Endian) or as
JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, selection
value 1; 1.2.840.10008.1.2.4.70), the syntax most cath-lab systems send.
pydicom 3 cannot encode that syntax: imagecodecs' libjpeg-turbo encoder does
(``lossless=True, predictor=1``), with python-gdcm as the fallback.
The module set follows the XA IOD (PS3.3 A.14) closely enough for dciodvfy to
report no errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, PYDICOM_IMPLEMENTATION_UID

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "jpeg-lossless": JPEGLosslessSV1}


def _strip_app0(buf: bytes) -> bytes:
    """Drop a JFIF APP0 segment: DICOM's own attributes describe the pixels."""
    if buf[2:4] == b"\xff\xe0":
        n = int.from_bytes(buf[4:6], "big")
        return buf[:2] + buf[4 + n:]
    return buf


def _encode_sv1_imagecodecs(frame: np.ndarray) -> bytes:
    import imagecodecs

    return _strip_app0(bytes(imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1)))


def _encode_with_gdcm(path: Path) -> None:
    """Re-encode an uncompressed file in place to JPEG Lossless SV1 with gdcm."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("gdcm could not encode JPEG Lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm could not write {path}")


def _fmt_ds(x: float) -> str:
    return f"{x:.6g}"[:16]


def write_xa(path, frames: np.ndarray, *, frame_rate_hz: float, syntax: str, patient_id: str, patient_name: str,
             study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, series_number: int,
             instance_number: int, series_description: str = "", accession_number: str = "",
             study_date: str = "20260101", extra: dict | None = None) -> Path:
    """Write ``frames`` (n, rows, cols) uint8 as an XA multi-frame DICOM file; returns the path."""
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {sorted(SYNTAXES)}, not {syntax!r}")
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError("frames must be a non-empty uint8 array of shape (n, rows, cols)")
    if not frame_rate_hz > 0:
        raise ValueError("frame_rate_hz must be positive")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, rows, cols = frames.shape
    ts = SYNTAXES[syntax]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "ANGIOGATE_SYN"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SOPClassUID = XA_SOP_CLASS
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study_date
    ds.StudyTime = "080000"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = f"08{(series_number // 60) % 60:02d}{series_number % 60:02d}"
    ds.AccessionNumber = accession_number
    ds.Modality = "XA"
    ds.Manufacturer = "angiogate synthetic phantom"
    ds.ManufacturerModelName = "angiogate.synth"
    ds.InstitutionName = "Phantom Cath Lab"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Coronary angiography (synthetic phantom)"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.KVP = "80"
    ds.RadiationSetting = "GR"
    ds.XRayTubeCurrent = "600"
    ds.ExposureTime = "7"
    ds.Exposure = "4"
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = "0"
    ds.PositionerSecondaryAngle = "0"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(int(series_number))
    ds.InstanceNumber = str(int(instance_number))
    ds.PatientOrientation = ""
    ds.Laterality = ""  # type 2C; the heart is unpaired (dciodvfy warns, but wants it present)
    # cine / multi-frame timing: FrameTime is what FrameIncrementPointer points at
    ds.FrameTime = _fmt_ds(1000.0 / frame_rate_hz)
    ds.CineRate = str(int(round(frame_rate_hz)))
    ds.RecommendedDisplayFrameRate = str(int(round(frame_rate_hz)))
    ds.NumberOfFrames = str(n)
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.StartTrim = "1"
    ds.StopTrim = str(n)
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "DISP"
    ds.LossyImageCompression = "00"
    for key, value in (extra or {}).items():
        setattr(ds, key, value)

    gdcm_fallback = False
    if ts == JPEGLosslessSV1:
        try:
            ds.PixelData = encapsulate([_encode_sv1_imagecodecs(f) for f in frames], has_bot=True)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        except (ImportError, TypeError, ValueError, RuntimeError):
            gdcm_fallback = True
    if ts != JPEGLosslessSV1 or gdcm_fallback:
        if gdcm_fallback:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = frames.tobytes()
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    if gdcm_fallback:
        _encode_with_gdcm(path)
    return path
