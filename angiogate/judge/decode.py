"""Decode only the frames the classifier needs, from the file on disk.

pydicom 3 reads a multi-frame file frame by frame (`iter_pixels(path,
indices=...)`), so a 500 MB clip never sits whole in memory and a JPEG
Lossless clip decodes 16 frames, not 80. Decoders are pydicom's plugins
(pylibjpeg, python-gdcm, pylibjpeg-rle, openjpeg). Every failure becomes a
DecodeError whose message says what was wrong with which frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.pixels import iter_pixels


def _without_gdcm() -> None:
    """Remove python-gdcm from pydicom's decoders.

    On some corrupt JPEG Lossless data GDCM throws an uncaught C++ exception
    and aborts the whole process (found by fuzzing): one hostile clip would
    take the gate down for every sender, again after each restart. pylibjpeg
    and imagecodecs cover the same syntaxes and fail with Python exceptions.
    """
    from pydicom.pixels.decoders import base

    for entry in getattr(base, "_PIXEL_DATA_DECODERS", {}).values():
        decoder = entry[0] if isinstance(entry, tuple) else entry
        if "gdcm" in decoder.available_plugins:
            decoder.remove_plugin("gdcm")


_without_gdcm()


class DecodeError(ValueError):
    """Pixel data cannot be decoded; the message says why."""


def decode_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (in that order, repeats allowed) as (k, rows, cols).

    Colour frames are converted to luminance; MONOCHROME1 is inverted so that
    contrast-filled vessels are dark, as in MONOCHROME2.
    """
    wanted = sorted(set(indices))
    _check_native_length(path)
    info: dict = {}
    decoded: dict[int, np.ndarray] = {}
    try:
        from pydicom import Dataset

        ds_out = Dataset()
        frames = iter_pixels(path, indices=wanted, ds_out=ds_out)
        for index, frame in zip(wanted, frames):
            decoded[index] = frame
        info["photometric"] = str(ds_out.get("PhotometricInterpretation", ""))
        info["bits_stored"] = int(ds_out.get("BitsStored", 8) or 8)
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        detail = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DecodeError(f"cannot decode frames {wanted[0]}..{wanted[-1]}: {type(exc).__name__}: {detail}") from exc
    missing = [i for i in wanted if i not in decoded]
    if missing:
        raise DecodeError(f"pixel data holds fewer frames than NumberOfFrames: frame {missing[0]} missing")
    # One float32 buffer for the sampled frames: no second full copy.
    first = decoded[indices[0]]
    stack = np.empty((len(indices),) + first.shape[:2], dtype=np.float32)
    for k, index in enumerate(indices):
        stack[k] = _to_gray(decoded[index], info["photometric"])
    if info["photometric"] == "MONOCHROME1":
        np.subtract(float((1 << info["bits_stored"]) - 1), stack, out=stack)
    return stack


def _to_gray(frame: np.ndarray, photometric: str) -> np.ndarray:
    if frame.ndim == 3:  # RGB after pydicom's YBR->RGB conversion
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (frame[..., :3].astype(np.float32) @ weights).astype(np.float32)
    if frame.ndim != 2:
        raise DecodeError(f"unexpected frame shape {frame.shape} ({photometric})")
    return frame.astype(np.float32, copy=False)


def _check_native_length(path: Path) -> None:
    """For uncompressed syntaxes, say plainly when the pixel data is shorter
    than NumberOfFrames x frame size (even if the sampled frames are present)."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, defer_size=1024, force=True)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        element = ds.get_item("PixelData", keep_deferred=True)  # never load a 500 MB value here
        offset = getattr(element, "file_tell", None) or getattr(element, "value_tell", None)
        if element is None or syntax is None or syntax.is_compressed or offset is None:
            return
        # Bytes on disk from the start of the value: an upper bound of its true length.
        available = Path(path).stat().st_size - offset
        frame_bytes = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                       * (int(ds.BitsAllocated) // 8))
        declared = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # a malformed header: the decoder reports what is wrong
        return
    if frame_bytes and available < frame_bytes * declared:
        raise DecodeError(
            f"pixel data holds {available} bytes, {available // frame_bytes} whole frame(s), but "
            f"NumberOfFrames says {declared} (truncated object or NumberOfFrames that lies)")
