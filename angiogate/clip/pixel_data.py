"""Where the sampled frames' bytes are in a DICOM file, read without the others.

The dataset is parsed up to Pixel Data only. For native syntaxes frame i is
`frame_length` bytes at `value_offset + i * frame_length`. For encapsulated
syntaxes the items are walked once (8 bytes of item header each, values
skipped) and frames are mapped to fragments as pydicom maps them: Extended
Offset Table, else Basic Offset Table, else one fragment per frame, else all
fragments for a single frame, else split after each fragment that ends with
the JPEG EOI / J2K EOC marker. So a 500 MB clip costs a header read, one small
read per item and the sampled frames' own bytes.

Whatever this module is not sure about (a table that does not point at item
starts, items that run past the end of the file, a syntax whose offsets are
not file offsets) raises NotHandled, and the caller leaves the file to
pydicom, which decides what it holds.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

PIXEL_DATA_TAG = 0x7FE00010
ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# A walk this long is not a clip the gate has seen; pydicom gets it.
MAX_FRAGMENTS = 1_000_000


class NotHandled(Exception):
    """The fast path does not take this file; the message says why (pydicom decodes it)."""


@dataclass(frozen=True)
class PixelHeader:
    """The Image Pixel facts of one file and where its Pixel Data value starts."""

    transfer_syntax: UID
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    number_of_frames: int
    value_offset: int            # file offset of the first byte of the Pixel Data value
    value_length: int | None     # None: undefined length (encapsulated)
    file_size: int
    extended_offsets: tuple[list[int], list[int]] | None

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame (BitsAllocated 8 or 16)."""
        return self.rows * self.columns * self.samples_per_pixel * (self.bits_allocated // 8)


def read_pixel_header(path: Path) -> PixelHeader:
    """The header facts, read with pydicom up to (not into) Pixel Data."""
    try:
        f = open(path, "rb")
    except OSError as exc:  # pydicom gets the same error and says it
        raise NotHandled(f"cannot open: {exc}") from exc
    with f:
        try:
            ds = dcmread(f, stop_before_pixels=True, force=True, defer_size="1 MB")
        except Exception as exc:  # not DICOM, or a header pydicom cannot parse
            raise NotHandled(f"header unreadable: {type(exc).__name__}: {exc}") from exc
        element_start = f.tell()
        file_size = os.fstat(f.fileno()).st_size
        syntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
        if not syntax:
            raise NotHandled("no Transfer Syntax UID in the file meta")
        syntax = UID(str(syntax))
        if syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
            raise NotHandled(f"transfer syntax {syntax} is not read from file offsets")
        if tuple(ds.original_encoding) != (syntax.is_implicit_VR, syntax.is_little_endian):
            raise NotHandled("dataset encoding differs from its transfer syntax")
        head = f.read(12)
    value_offset, value_length = _pixel_element(head, element_start, syntax)
    try:
        header = PixelHeader(
            transfer_syntax=syntax,
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
            bits_allocated=_int(ds, "BitsAllocated"),
            bits_stored=_int(ds, "BitsStored"),
            pixel_representation=_int(ds, "PixelRepresentation", 0),
            photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
            planar_configuration=_int(ds, "PlanarConfiguration", 0),
            number_of_frames=_int(ds, "NumberOfFrames", 1),
            value_offset=value_offset,
            value_length=value_length,
            file_size=file_size,
            extended_offsets=_extended_offsets(ds),
        )
    except NotHandled:
        raise
    except Exception as exc:  # a value pydicom cannot convert
        raise NotHandled(f"Image Pixel attributes unreadable: {type(exc).__name__}: {exc}") from exc
    if min(header.rows, header.columns, header.samples_per_pixel, header.number_of_frames) < 1:
        raise NotHandled("Rows, Columns, SamplesPerPixel or NumberOfFrames below 1")
    return header


def _int(ds, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise NotHandled(f"{keyword} missing")
        return default
    if isinstance(value, bool) or not isinstance(value, int):  # IS and US values are ints
        raise NotHandled(f"{keyword} is not one integer: {value!r}")
    return int(value)


def _pixel_element(head: bytes, start: int, syntax: UID) -> tuple[int, int | None]:
    """(value offset, value length or None) of the Pixel Data element at `start`."""
    order = "<" if syntax.is_little_endian else ">"
    if len(head) < 8:
        raise NotHandled("no Pixel Data element")
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA_TAG:
        raise NotHandled(f"({group:04X},{elem:04X}) where Pixel Data was expected")
    if syntax.is_implicit_VR:
        length, header_length = struct.unpack(order + "I", head[4:8])[0], 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise NotHandled("Pixel Data element header cut short")
        length, header_length = struct.unpack(order + "I", head[8:12])[0], 12
    else:
        length, header_length = struct.unpack(order + "H", head[6:8])[0], 8
    return start + header_length, None if length == 0xFFFFFFFF else length


def _extended_offsets(ds) -> tuple[list[int], list[int]] | None:
    if "ExtendedOffsetTable" not in ds:
        return None
    offsets, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    if not isinstance(offsets, bytes) or not isinstance(lengths, bytes) or len(offsets) % 8 or len(lengths) % 8:
        raise NotHandled("Extended Offset Table unreadable")
    return (list(struct.unpack(f"<{len(offsets) // 8}Q", offsets)),
            list(struct.unpack(f"<{len(lengths) // 8}Q", lengths)))


# ------------------------------------------------------------------ encapsulated


@dataclass(frozen=True)
class Fragment:
    offset: int  # file offset of the item's value
    length: int


class EncapsulatedFrames:
    """The frames of an encapsulated Pixel Data value, mapped to their fragments.

    `frame_count` is how many frames the data holds; `read(f, i)` returns frame
    i's codestream (its fragments joined) from the open file `f`.
    """

    def __init__(self, f: BinaryIO, header: PixelHeader):
        if header.value_length is not None:
            raise NotHandled("encapsulated Pixel Data with a defined length")
        self.header = header
        basic_offsets, fragments = _walk_items(f, header.value_offset, header.file_size, header.number_of_frames)
        self.frames = _map_frames(f, header, basic_offsets, fragments)

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    def read(self, f: BinaryIO, index: int) -> bytes:
        parts = [read_exactly(f, fragment.offset, fragment.length) for fragment in self.frames[index]]
        return parts[0] if len(parts) == 1 else b"".join(parts)


def read_exactly(f: BinaryIO, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` (an unbuffered file may return a read in parts)."""
    f.seek(offset)
    parts, missing = [], length
    while missing:
        chunk = f.read(missing)
        if not chunk:
            raise NotHandled(f"file ends {missing} bytes short of the {length} at offset {offset}")
        parts.append(chunk)
        missing -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_item_header(f: BinaryIO, position: int) -> tuple[int, int] | None:
    f.seek(position)
    raw = f.read(8)
    if len(raw) < 8:
        return None
    group, elem, length = struct.unpack("<HHI", raw)
    return group << 16 | elem, length


def _walk_items(f: BinaryIO, start: int, file_size: int, declared: int) -> tuple[list[int], list[Fragment]]:
    """Basic Offset Table and fragments, from item headers only; values are skipped."""
    first = _read_item_header(f, start)
    if first is None or first[0] != ITEM_TAG:
        raise NotHandled("encapsulated Pixel Data does not start with the Basic Offset Table item")
    bot_length = first[1]
    if bot_length not in (0, 4 * declared) or start + 8 + bot_length > file_size:
        raise NotHandled("Basic Offset Table does not list NumberOfFrames frames inside the file")
    f.seek(start + 8)
    table = f.read(bot_length)
    basic_offsets = list(struct.unpack(f"<{bot_length // 4}I", table))
    fragments: list[Fragment] = []
    position = start + 8 + bot_length
    while True:
        item = _read_item_header(f, position)
        if item is None:
            raise NotHandled("file ends before the Pixel Data sequence delimiter")
        tag, length = item
        if tag == SEQUENCE_DELIMITER_TAG:
            return basic_offsets, fragments
        if tag != ITEM_TAG or length == 0xFFFFFFFF:
            raise NotHandled(f"unexpected tag {tag:08X} among the Pixel Data fragments")
        if position + 8 + length > file_size:
            raise NotHandled("a Pixel Data fragment runs past the end of the file")
        fragments.append(Fragment(position + 8, length))
        if len(fragments) > MAX_FRAGMENTS:
            raise NotHandled(f"more than {MAX_FRAGMENTS} fragments")
        position += 8 + length


def _map_frames(f: BinaryIO, header: PixelHeader, basic_offsets: list[int],
                fragments: list[Fragment]) -> list[list[Fragment]]:
    declared = header.number_of_frames
    if not fragments:
        return []
    first_item = fragments[0].offset - 8
    # Offsets in both tables count from the first fragment's item tag.
    starts = {fragment.offset - 8 - first_item: k for k, fragment in enumerate(fragments)}
    if header.extended_offsets is not None:
        offsets, lengths = header.extended_offsets
        if basic_offsets or len(offsets) != declared or len(lengths) != declared:
            raise NotHandled("Extended Offset Table does not list NumberOfFrames frames")
        frames = []
        for offset, length in zip(offsets, lengths):
            k = starts.get(offset)
            if k is None or fragments[k].length != length:
                raise NotHandled("Extended Offset Table does not point at whole fragments")
            frames.append([fragments[k]])
        return frames
    if basic_offsets:
        if basic_offsets[0] != 0:
            raise NotHandled("Basic Offset Table does not start at offset 0")
        bounds = [starts.get(offset) for offset in basic_offsets]
        if None in bounds or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise NotHandled("Basic Offset Table does not point at fragment starts in order")
        bounds.append(len(fragments))
        return [fragments[a:b] for a, b in zip(bounds, bounds[1:])]
    if len(fragments) == 1:
        return [fragments]
    if len(fragments) == declared:
        return [[fragment] for fragment in fragments]
    if declared == 1:
        return [fragments]
    # Several fragments per frame and no table: a frame ends with the fragment
    # whose last bytes hold the EOI/EOC marker (pydicom's rule).
    frames, current = [], []
    for fragment in fragments:
        current.append(fragment)
        tail = min(fragment.length, 10)
        f.seek(fragment.offset + fragment.length - tail)
        if b"\xff\xd9" in f.read(tail):
            frames.append(current)
            current = []
    if current:
        frames.append(current)
    return frames
