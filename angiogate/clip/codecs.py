"""The fastest robust decoder for one encapsulated monochrome frame, per transfer syntax.

Chosen by measurement: the 16 sampled frames of 512x512x80 clips, 8- and
12-bit, each decoder called on the same frames in one process, alternating,
repeated (a training job shared the machine, so only ratios count):

| syntax                        | fast decoder                      | time vs what pydicom would use |
|-------------------------------|-----------------------------------|--------------------------------|
| JPEG Lossless .57 / SV1 .70   | imagecodecs jpeg8 (libjpeg-turbo) | 0.15-0.18 (pylibjpeg-libjpeg)  |
| JPEG Baseline .50 / Ext. .51  | imagecodecs jpeg8 (libjpeg-turbo) | 0.19, 8-bit only               |
| JPEG-LS .80 / .81             | imagecodecs jpegls (CharLS)       | 0.23-0.25 (pylibjpeg-libjpeg)  |
| RLE Lossless .5               | imagecodecs packbits per segment  | 0.95 (pylibjpeg-rle), 0.05 (pydicom's own) |
| JPEG 2000 .90 / .91           | none: pydicom (imagecodecs' openjpeg: 0.97, no gain)               |
| HTJ2K .201 / .202 / .203      | none: pydicom's openjpeg (OpenJPH: 0.39-0.41, see below)           |

For JPEG Lossless libjpeg-turbo 3.1 beat imagecodecs' ljpeg (liblj92) by
1.4-1.9x on every clip tried, and liblj92 ignores the point transform,
restart markers and the Huffman table a component selects, and pads a cut
scan with zeros without complaint; libjpeg-turbo implements all of the
lossless process.

imagecodecs' OpenJPH (htj2k) decoded HTJ2K in 0.36-0.41 of openjpeg's time,
but its wrapper swallows the errors OpenJPH raises while pulling lines
("Exception ignored in _copy_from_codestream") and returns the frame partly
written: 41 of about 220 fuzzed codestreams came back as ordinary arrays. So
HTJ2K stays with pydicom's openjpeg, which fails on them.

Every decoder here raises Python exceptions on corrupt data (fuzzed with
mutated codestreams in a child process; none aborted). The array returned
is the one pydicom returns (dtype from BitsAllocated, BitsStored masking
where pydicom masks, same values) for lossless syntaxes; for lossy ones the
inverse transform of two implementations may differ by one grey level.
A codestream the fast decoder might read differently from pydicom's plugin
(colour, signed, precision above BitsAllocated, another JPEG process, no
end marker, a JPEG-LS mapping table, sizes that disagree with the header)
raises NotHandled and pydicom decodes the file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydicom import uid

from angiogate.clip.pixel_data import NotHandled, PixelHeader

SOF_BASELINE, SOF_EXTENDED, SOF_LOSSLESS, SOF_JPEG_LS = 0xC0, 0xC1, 0xC3, 0xF7
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JPEG_LS_PRESET = 0xF8  # LSE: ids 2 and 3 carry mapping tables
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class FrameCodec:
    """One fast decoder: what it is called, how it checks and decodes a frame."""

    name: str
    imagecodecs_codec: str                   # the imagecodecs class whose `available` says it is built in
    check: Callable[[bytes, PixelHeader], None]
    decode: Callable[[bytes, PixelHeader], np.ndarray]
    masks_unused_bits: bool                  # pydicom clears bits above BitsStored for this family


# ------------------------------------------------------------------ codestream checks


@dataclass(frozen=True)
class _JpegFrameHeader:
    marker: int
    precision: int
    rows: int
    columns: int
    components: int
    preset_ids: frozenset[int]


def _jpeg_frame_header(data: bytes) -> _JpegFrameHeader:
    """The SOF segment (and JPEG-LS LSE ids) of a JPEG / JPEG-LS codestream, up to its first scan."""
    if data[:2] != b"\xff\xd8":
        raise NotHandled("codestream does not start with SOI")
    position, found, presets = 2, None, set()
    end = len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            raise NotHandled("marker expected in the JPEG header")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            raise NotHandled("JPEG header segment cut short")
        if marker in _SOF_MARKERS:
            if found is not None or len(segment) < 6:
                raise NotHandled("more than one or a short frame header")
            found = (marker, segment[0], int.from_bytes(segment[1:3], "big"),
                     int.from_bytes(segment[3:5], "big"), segment[5])
        elif marker == _JPEG_LS_PRESET and segment:
            presets.add(segment[0])
        elif marker == 0xDA:  # start of scan: the header is complete
            break
        position += 2 + length
    if found is None:
        raise NotHandled("no frame header before the first scan")
    return _JpegFrameHeader(*found, preset_ids=frozenset(presets))


def _ends_with_marker(data: bytes) -> bool:
    """EOI at the end, allowing the padding encoders add to an odd length (0x00 or 0xFF)."""
    end = len(data)
    while end > 2 and data[end - 1] in (0x00, 0xFF) and len(data) - end < 64:
        end -= 1
    return data[end - 2:end] == _EOI


def _check_jpeg_family(data: bytes, header: PixelHeader, markers: set[int], precisions: range) -> None:
    info = _jpeg_frame_header(data)
    if info.marker not in markers:
        raise NotHandled(f"JPEG process SOF 0x{info.marker:02X} is left to pydicom")
    if info.components != 1:
        raise NotHandled(f"{info.components} components in the codestream")
    if info.precision not in precisions or info.precision > header.bits_allocated:
        raise NotHandled(f"precision {info.precision} with BitsAllocated {header.bits_allocated}")
    if (info.rows, info.columns) != (header.rows, header.columns):
        raise NotHandled(f"codestream is {info.rows}x{info.columns}, header {header.rows}x{header.columns}")
    if info.preset_ids - {1}:
        raise NotHandled("JPEG-LS mapping table")
    if not _ends_with_marker(data):
        raise NotHandled("codestream does not end with EOI (cut short?)")


def _check_jpeg_lossless(data: bytes, header: PixelHeader) -> None:
    _check_jpeg_family(data, header, {SOF_LOSSLESS}, range(2, 17))


def _check_jpeg_8bit_lossy(data: bytes, header: PixelHeader) -> None:
    # 12-bit lossy stays with pydicom: libjpeg-turbo reads streams pylibjpeg
    # rejects (the NEMA XA1_JPLY sample), and the gate answers those with an error.
    _check_jpeg_family(data, header, {SOF_BASELINE, SOF_EXTENDED}, range(8, 9))


def _check_jpeg_ls(data: bytes, header: PixelHeader) -> None:
    _check_jpeg_family(data, header, {SOF_JPEG_LS}, range(2, 17))


def _check_rle(data: bytes, header: PixelHeader) -> None:
    segments = int.from_bytes(data[:4], "little") if len(data) >= 64 else -1
    if segments != header.samples_per_pixel * header.bits_allocated // 8:
        raise NotHandled(f"RLE header lists {segments} segments")
    offsets = _rle_offsets(data)
    if offsets[0] != 64 or any(a >= b for a, b in zip(offsets, offsets[1:])):
        raise NotHandled(f"RLE segment offsets {offsets[:-1]} out of order")


# ------------------------------------------------------------------ decoders


def _imagecodecs(function: str) -> Callable[[bytes, PixelHeader], np.ndarray]:
    def decode(data: bytes, header: PixelHeader) -> np.ndarray:
        import imagecodecs

        return getattr(imagecodecs, function)(data)

    decode.__name__ = function
    return decode


def _rle_offsets(data: bytes) -> list[int]:
    """Where each RLE segment starts, and the end of the last (the header has room for 15)."""
    segments = min(int.from_bytes(data[:4], "little"), 15)
    return [int.from_bytes(data[4 + 4 * k:8 + 4 * k], "little") for k in range(segments)] + [len(data)]


def _decode_rle(data: bytes, header: PixelHeader) -> np.ndarray:
    """pydicom's own RLE decoder, with each segment's PackBits done by imagecodecs.

    Segments are most significant byte first; one longer than the frame is cut
    (pydicom warns), one shorter is an error. Not pylibjpeg-rle: it panics on
    some corrupt segments, and pyo3 raises a panic as a BaseException that
    `except Exception` does not catch.
    """
    import imagecodecs

    offsets = _rle_offsets(data)
    segments, pixels = len(offsets) - 1, header.rows * header.columns
    frame = np.empty((pixels, segments), dtype=np.uint8)  # one column per byte, least significant first
    for k in range(segments):
        decoded = imagecodecs.packbits_decode(data[offsets[k]:offsets[k + 1]])
        if len(decoded) < pixels:
            raise ValueError(f"RLE segment {k} decodes to {len(decoded)} bytes, the frame has {pixels} pixels")
        frame[:, segments - 1 - k] = np.frombuffer(decoded, dtype=np.uint8, count=pixels)
    return frame.view(f"<u{segments}").reshape(header.rows, header.columns)


_JPEG_LOSSLESS = FrameCodec("imagecodecs.jpeg8_decode (libjpeg-turbo)", "JPEG8", _check_jpeg_lossless,
                            _imagecodecs("jpeg8_decode"), masks_unused_bits=True)
_JPEG_LOSSY = FrameCodec("imagecodecs.jpeg8_decode (libjpeg-turbo)", "JPEG8", _check_jpeg_8bit_lossy,
                         _imagecodecs("jpeg8_decode"), masks_unused_bits=True)
_JPEG_LS = FrameCodec("imagecodecs.jpegls_decode (CharLS)", "JPEGLS", _check_jpeg_ls,
                      _imagecodecs("jpegls_decode"), masks_unused_bits=False)
_RLE = FrameCodec("imagecodecs.packbits_decode (RLE segments)", "PACKBITS", _check_rle, _decode_rle,
                  masks_unused_bits=True)

FAST_CODECS: dict[str, FrameCodec] = {
    uid.JPEGLossless: _JPEG_LOSSLESS,
    uid.JPEGLosslessSV1: _JPEG_LOSSLESS,
    uid.JPEGBaseline8Bit: _JPEG_LOSSY,
    uid.JPEGExtended12Bit: _JPEG_LOSSY,
    uid.JPEGLSLossless: _JPEG_LS,
    uid.JPEGLSNearLossless: _JPEG_LS,
    uid.RLELossless: _RLE,
}


def fast_codec(transfer_syntax: str) -> FrameCodec | None:
    """The fast decoder for this encapsulated syntax, or None when pydicom decodes it."""
    codec = FAST_CODECS.get(str(transfer_syntax))
    if codec is None:
        return None
    try:
        import imagecodecs

        if not getattr(imagecodecs, codec.imagecodecs_codec).available:
            return None
    except (ImportError, AttributeError):
        return None
    return codec


def decode_frame(codec: FrameCodec, data: bytes, header: PixelHeader) -> np.ndarray:
    """One frame as pydicom would return it, (rows, columns) uint8/uint16; NotHandled otherwise."""
    codec.check(data, header)
    try:
        frame = np.asarray(codec.decode(data, header))
    except Exception as exc:  # corrupt or unsupported: pydicom's plugins get their turn
        raise NotHandled(f"{codec.name}: {type(exc).__name__}: {exc}") from exc
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    expected = np.dtype(f"u{header.bits_allocated // 8}")
    if (frame.shape != (header.rows, header.columns) or frame.dtype.kind != "u"
            or frame.dtype.itemsize > expected.itemsize):
        raise NotHandled(f"{codec.name} returned {frame.dtype} {frame.shape}")
    if frame.dtype != expected or not frame.flags.writeable:
        frame = frame.astype(expected)
    if codec.masks_unused_bits and header.bits_stored < header.bits_allocated:
        np.bitwise_and(frame, (1 << header.bits_stored) - 1, out=frame)
    return frame
