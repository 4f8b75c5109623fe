"""Decode only the frames the classifier needs, from the file on disk.

The fast path reads the header up to Pixel Data, then only the sampled
frames' bytes (`pixel_data`): native frames at their offsets, encapsulated
frames from their own fragments, each decoded by the fastest robust decoder
for its transfer syntax (`codecs`). A 500 MB clip is never read whole.
Whatever the fast path does not take (JPEG 2000, colour or signed
compressed data, YBR or palette photometrics, BitsAllocated other than 8/16,
offset tables that do not match the fragments, ...) is decoded by pydicom
3's `iter_pixels`, the reference the fast path reproduces. GDCM and
pylibjpeg-rle are never used: on corrupt data the one aborts the process,
the other panics past every `except Exception`.
Every failure becomes a DecodeError whose message says what was wrong
with which frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.pixels import iter_pixels

from angiogate.clip.codecs import decode_frame, fast_codec
from angiogate.clip.pixel_data import (EncapsulatedFrames, NotHandled, PixelHeader, read_exactly,
                                        read_pixel_header)

log = logging.getLogger(__name__)

PYDICOM = "pydicom iter_pixels"
NATIVE = "native (sampled frames read at their offsets)"


def _without_aborting_plugins() -> None:
    """Remove the pydicom decoders that can take the process down on corrupt data.

    python-gdcm, everywhere: on some corrupt JPEG Lossless data GDCM throws an
    uncaught C++ exception and aborts the whole process (found by fuzzing):
    one hostile clip would take the gate down for every sender, again after
    each restart. pylibjpeg-rle, for RLE (pydicom tries it before its own
    decoder): it panics on some corrupt segments (found by fuzzing), and pyo3
    raises the panic as a BaseException that no `except Exception` catches.
    pylibjpeg, imagecodecs and pydicom's own RLE decoder fail with Python
    exceptions.
    """
    from pydicom.pixels.decoders import base
    from pydicom.uid import RLELossless

    for entry in getattr(base, "_PIXEL_DATA_DECODERS", {}).values():
        decoder = entry[0] if isinstance(entry, tuple) else entry
        if "gdcm" in decoder.available_plugins:
            decoder.remove_plugin("gdcm")
        if decoder.UID == RLELossless and "pylibjpeg" in decoder.available_plugins and \
                "pydicom" in decoder.available_plugins:
            decoder.remove_plugin("pylibjpeg")


_without_aborting_plugins()


def _is_rust_panic(exc: BaseException) -> bool:
    """A panic in a Rust extension, raised by pyo3 as a BaseException: a failed decode, not a shutdown."""
    return type(exc).__name__ == "PanicException"


class DecodeError(ValueError):
    """Pixel data cannot be decoded; the message says why."""


@dataclass(frozen=True)
class DecodedFrames:
    """The sampled frames and what decoded them."""

    frames: np.ndarray           # float32 (k, rows, cols)
    decoder: str                 # NATIVE, a codec name from `codecs`, or PYDICOM
    fallback_reason: str | None  # why the fast path left the file to pydicom


def decode_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (in that order, repeats allowed) as (k, rows, cols).

    Colour frames are converted to luminance; MONOCHROME1 is inverted so that
    contrast-filled vessels are dark, as in MONOCHROME2.
    """
    return decode_sampled_frames(path, indices).frames


def decode_sampled_frames(path: Path, indices: list[int]) -> DecodedFrames:
    """decode_frames, also saying which decoder did the work."""
    if not len(indices):
        raise DecodeError("no frames requested")
    wanted = sorted({int(i) for i in indices})
    reason = None
    try:
        decoded, photometric, bits_stored, decoder = _fast_frames(Path(path), wanted)
    except DecodeError:
        raise
    except NotHandled as exc:
        reason = str(exc)
    except BaseException as exc:  # a fast-path bug must not make a decodable clip an error
        if not isinstance(exc, Exception) and not _is_rust_panic(exc):
            raise
        reason = f"fast path failed: {type(exc).__name__}: {exc}"
        log.warning("decoding %s: %s; pydicom decodes it instead", path, reason, exc_info=True)
    if reason is not None:
        log.debug("decoding %s with pydicom: %s", path, reason)
        decoded, photometric, bits_stored = _pydicom_frames(path, wanted)
        decoder = PYDICOM
    return DecodedFrames(_stack(decoded, indices, photometric, bits_stored), decoder, reason)


# ------------------------------------------------------------------ fast path


def _fast_frames(path: Path, wanted: list[int]) -> tuple[dict[int, np.ndarray], str, int, str]:
    header = read_pixel_header(path)
    encapsulated = header.transfer_syntax.is_encapsulated
    if not encapsulated:
        _check_native_length(header)
    beyond = [i for i in wanted if not 0 <= i < header.number_of_frames]
    if beyond:
        raise DecodeError(f"frame {beyond[0]} requested but NumberOfFrames is {header.number_of_frames}")
    if encapsulated:
        decoded, decoder = _encapsulated_frames(path, header, wanted)
    else:
        decoded, decoder = _native_frames(path, header, wanted), NATIVE
    return decoded, header.photometric, header.bits_stored, decoder


def _check_native_length(header: PixelHeader) -> None:
    """Say plainly when the pixel data is shorter than NumberOfFrames x frame size
    (even if the sampled frames are present)."""
    frame_bytes = (header.rows * header.columns * header.samples_per_pixel * (header.bits_allocated // 8))
    # Bytes from the start of the value to the end of the file, and no more than the element holds.
    available = header.file_size - header.value_offset
    if header.value_length is not None:
        available = min(available, header.value_length)
    declared = header.number_of_frames
    if frame_bytes and available < frame_bytes * declared:
        raise DecodeError(
            f"pixel data holds {available} bytes, {available // frame_bytes} whole frame(s), but "
            f"NumberOfFrames says {declared} (truncated object or NumberOfFrames that lies)")


def _check_integers(header: PixelHeader, *, signed_ok: bool) -> None:
    if header.bits_allocated not in (8, 16) or not 1 <= header.bits_stored <= header.bits_allocated:
        raise NotHandled(f"BitsAllocated {header.bits_allocated}, BitsStored {header.bits_stored}")
    if header.pixel_representation not in ((0, 1) if signed_ok else (0,)):
        raise NotHandled(f"PixelRepresentation {header.pixel_representation}")


def _native_frames(path: Path, header: PixelHeader, wanted: list[int]) -> dict[int, np.ndarray]:
    _check_integers(header, signed_ok=True)
    colour = header.samples_per_pixel == 3 and header.photometric == "RGB" and header.planar_configuration in (0, 1)
    if not colour and not (header.samples_per_pixel == 1 and header.photometric in ("MONOCHROME1", "MONOCHROME2")):
        raise NotHandled(f"{header.samples_per_pixel} sample(s), {header.photometric!r}")
    little = header.transfer_syntax.is_little_endian
    if not little and header.bits_allocated == 8:
        raise NotHandled("8-bit big endian data (pydicom swaps OW byte pairs)")
    if header.value_length is None:
        raise NotHandled("native Pixel Data of undefined length")
    dtype = np.dtype(f"{'<' if little else '>'}{'i' if header.pixel_representation else 'u'}"
                     f"{header.bits_allocated // 8}")
    shift = header.bits_allocated - header.bits_stored
    rows, columns, length = header.rows, header.columns, header.frame_length
    decoded = {}
    with open(path, "rb", buffering=0) as f:
        for index in wanted:
            frame = np.frombuffer(read_exactly(f, header.value_offset + index * length, length), dtype=dtype)
            if not dtype.isnative:
                frame = frame.astype(dtype.newbyteorder("="))
            if shift:  # as pydicom: clear (or sign-extend) the bits above BitsStored
                frame = np.right_shift(np.left_shift(frame, shift), shift).astype(frame.dtype, copy=False)
            if colour and header.planar_configuration == 1:
                frame = frame.reshape(3, rows, columns).transpose(1, 2, 0)
            else:
                frame = frame.reshape((rows, columns, 3) if colour else (rows, columns))
            decoded[index] = frame
    return decoded


def _encapsulated_frames(path: Path, header: PixelHeader, wanted: list[int]) -> tuple[dict[int, np.ndarray], str]:
    codec = fast_codec(header.transfer_syntax)
    if codec is None:
        raise NotHandled(f"no fast decoder for {header.transfer_syntax.name}")
    _check_integers(header, signed_ok=False)
    if header.samples_per_pixel != 1 or header.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotHandled(f"{header.samples_per_pixel} sample(s), {header.photometric!r}")
    decoded = {}
    with open(path, "rb", buffering=0) as f:
        frames = EncapsulatedFrames(f, header)
        for index in wanted:
            if index >= frames.frame_count:
                raise DecodeError(f"pixel data holds {frames.frame_count} frame(s) but NumberOfFrames says "
                                  f"{header.number_of_frames}: frame {index} missing")
            decoded[index] = decode_frame(codec, frames.read(f, index), header)
    return decoded, codec.name


# ------------------------------------------------------------------ pydicom, the reference


def _pydicom_frames(path: Path, wanted: list[int]) -> tuple[dict[int, np.ndarray], str, int]:
    decoded: dict[int, np.ndarray] = {}
    try:
        from pydicom import Dataset

        ds_out = Dataset()
        frames = iter_pixels(path, indices=wanted, ds_out=ds_out)
        for index, frame in zip(wanted, frames):
            decoded[index] = frame
        photometric = str(ds_out.get("PhotometricInterpretation", ""))
        bits_stored = int(ds_out.get("BitsStored", 8) or 8)
    except BaseException as exc:  # decoders raise anything from ValueError to RuntimeError (or panic)
        if not isinstance(exc, Exception) and not _is_rust_panic(exc):
            raise
        detail = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DecodeError(f"cannot decode frames {wanted[0]}..{wanted[-1]}: {type(exc).__name__}: {detail}") from exc
    missing = [i for i in wanted if i not in decoded]
    if missing:
        raise DecodeError(f"pixel data holds fewer frames than NumberOfFrames: frame {missing[0]} missing")
    return decoded, photometric, bits_stored


# ------------------------------------------------------------------ one float32 stack


def _stack(decoded: dict[int, np.ndarray], indices: list[int], photometric: str, bits_stored: int) -> np.ndarray:
    # One float32 buffer for the sampled frames: no second full copy.
    first = decoded[int(indices[0])]
    stack = np.empty((len(indices),) + first.shape[:2], dtype=np.float32)
    for k, index in enumerate(indices):
        stack[k] = _to_gray(decoded[int(index)], photometric)
    if photometric == "MONOCHROME1":
        np.subtract(float((1 << bits_stored) - 1), stack, out=stack)
    return stack


def _to_gray(frame: np.ndarray, photometric: str) -> np.ndarray:
    if frame.ndim == 3:  # RGB after pydicom's YBR->RGB conversion
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        # Contiguous first: the same pixels give the same sums whatever their layout.
        return np.ascontiguousarray(frame[..., :3], dtype=np.float32) @ weights
    if frame.ndim != 2:
        raise DecodeError(f"unexpected frame shape {frame.shape} ({photometric})")
    return frame.astype(np.float32, copy=False)
