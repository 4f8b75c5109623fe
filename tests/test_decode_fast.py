"""The fast decode path (angiogate/clip/decode.py, pixel_data.py, codecs.py).

For every transfer syntax the gate can meet (public samples, phantoms from
the synth writer, clips encoded here with imagecodecs / pydicom), the sampled
frames equal the same frames of a full pydicom decode (`ds.pixel_array`,
after the same luminance / MONOCHROME1 conversion, written out again here):
exactly for lossless syntaxes, within one grey level for lossy ones whose
fast decoder is another implementation than pydicom's plugin. Each case also
says which decoder did the work, so a fast path that silently falls back to
pydicom fails here. A 2 GiB (sparse) clip is decoded reading little more
than its sampled frames' bytes, counted by the kernel (/proc/self/io).
"""
from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import (HTJ2K, ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2KLossless, ImplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
                         JPEGLSLossless, JPEGLSNearLossless, RLELossless, generate_uid)

from angiogate.clip.codecs import fast_codec
from angiogate.clip.decode import NATIVE, PYDICOM, DecodeError, decode_frames, decode_sampled_frames

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:.*EOI.*")

XA = "1.2.840.10008.5.1.4.1.1.12.1"
TURBO = "imagecodecs.jpeg8_decode (libjpeg-turbo)"
CHARLS = "imagecodecs.jpegls_decode (CharLS)"
RLE = "imagecodecs.packbits_decode (RLE segments)"
N_FRAMES, ROWS, COLS = 10, 48, 64  # not square: a transposed frame shows
SELECTION = [9, 0, 4, 4, 2, 9, 0]   # last, first, repeats, unsorted


def frames_of(bits: int, n: int = N_FRAMES, rows: int = ROWS, cols: int = COLS, seed: int = 11) -> np.ndarray:
    """Vessel-like smooth structure plus noise, different in every frame, using the full range of `bits`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    top = (1 << bits) - 1
    out = []
    for k in range(n):
        img = 0.5 + 0.3 * np.sin((xx + 3 * k) / 6.0) * np.cos((yy - 2 * k) / 9.0)
        img += rng.normal(0, 0.05, size=img.shape)
        out.append(np.clip(img, 0, 1) * top)
    out = np.rint(np.stack(out))
    out[0, 0, 0], out[-1, -1, -1] = 0, top  # both ends of the range occur
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


def write_clip(path: Path, frames: np.ndarray, syntax: str, *, encode=None, bits_stored: int | None = None,
               photometric: str = "MONOCHROME2", signed: bool = False, planar: int | None = None,
               number_of_frames: int | None = None, has_bot: bool = True, fragments_per_frame: int = 1,
               extended_offsets: bool = False, pixel_bytes: bytes | None = None) -> Path:
    """An XA object holding `frames` ((n, rows, cols) or (n, rows, cols, 3)) in `syntax`."""
    colour = frames.ndim == 4
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XA
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = XA, ds.file_meta.MediaStorageSOPInstanceUID, "XA"
    ds.NumberOfFrames = number_of_frames or frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = planar or 0
    ds.BitsAllocated = frames.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.FrameTime = 66.67
    if encode is not None:
        encoded = [bytes(encode(frame)) for frame in frames]
        if extended_offsets:
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(encoded)
        else:
            ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    else:
        data = frames.transpose(0, 3, 1, 2) if colour and planar == 1 else frames
        if signed:
            data = data.astype(data.dtype.str.replace("u", "i"))
        if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
            data = data.astype(data.dtype.newbyteorder(">"))
        ds.PixelData = np.ascontiguousarray(data).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def reference(path: Path, indices: list[int]) -> np.ndarray:
    """pydicom's full decode of every frame, then the sampled ones, as the gate converts them."""
    ds = pydicom.dcmread(path)
    full = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        full = full[None]
    picked = full[indices].astype(np.float32)
    if picked.ndim == 4:  # RGB: luminance
        picked = np.ascontiguousarray(picked[..., :3]) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        picked = float((1 << int(ds.BitsStored)) - 1) - picked
    return picked


def assert_same_as_pydicom(path: Path, indices: list[int], decoder: str, *, tolerance: int = 0):
    got = decode_sampled_frames(path, indices)
    want = reference(path, indices)
    assert got.decoder == decoder, got.fallback_reason
    assert got.frames.dtype == np.float32
    assert got.frames.shape == want.shape
    if tolerance:
        assert np.abs(got.frames - want).max() <= tolerance
    else:
        assert np.array_equal(got.frames, want)
    assert np.array_equal(decode_frames(path, indices), got.frames)
    return got


def _turbo_lossless(bits: int, predictor: int = 1):
    return lambda f: imagecodecs.jpeg8_encode(f, lossless=True, predictor=predictor, bitspersample=bits)


ENCODED = {  # case: (syntax, bits of the samples, encoder, the decoder that must do the work, tolerance)
    "jpeg-lossless-sv1-8": (JPEGLosslessSV1, 8, _turbo_lossless(8), TURBO, 0),
    "jpeg-lossless-sv1-12": (JPEGLosslessSV1, 12, _turbo_lossless(12), TURBO, 0),
    "jpeg-lossless-sv1-16": (JPEGLosslessSV1, 16, _turbo_lossless(16), TURBO, 0),
    "jpeg-lossless-57-predictor-7": (JPEGLossless, 12, _turbo_lossless(12, 7), TURBO, 0),
    "jpeg-lossless-57-predictor-4": (JPEGLossless, 8, _turbo_lossless(8, 4), TURBO, 0),
    "jpeg-baseline-8": (JPEGBaseline8Bit, 8, lambda f: imagecodecs.jpeg8_encode(f, level=90), TURBO, 1),
    "jpeg-extended-8": (JPEGExtended12Bit, 8, lambda f: imagecodecs.jpeg8_encode(f, level=90), TURBO, 1),
    "jpeg-ls-lossless-8": (JPEGLSLossless, 8, lambda f: imagecodecs.jpegls_encode(f, level=0), CHARLS, 0),
    "jpeg-ls-lossless-12": (JPEGLSLossless, 12, lambda f: imagecodecs.jpegls_encode(f, level=0), CHARLS, 0),
    # JPEG-LS near-lossless decoding is defined exactly by the standard: CharLS = pydicom's libjpeg
    "jpeg-ls-near-lossless-12": (JPEGLSNearLossless, 12, lambda f: imagecodecs.jpegls_encode(f, level=3), CHARLS, 0),
    # JPEG 2000 and HTJ2K stay with pydicom (see angiogate/clip/codecs.py)
    "htj2k-lossless-12": (HTJ2KLossless, 12, lambda f: imagecodecs.htj2k_encode(f, reversible=True), PYDICOM, 0),
    "htj2k-lossy-12": (HTJ2K, 12, lambda f: imagecodecs.htj2k_encode(f, reversible=False), PYDICOM, 0),
    "jpeg2000-lossless-12": (JPEG2000Lossless, 12, lambda f: imagecodecs.jpeg2k_encode(
        f, level=0, codecformat="J2K", reversible=True), PYDICOM, 0),
    # 12-bit lossy JPEG stays with pydicom (see codecs._check_jpeg_8bit_lossy)
    "jpeg-extended-12": (JPEGExtended12Bit, 12, lambda f: imagecodecs.jpeg8_encode(
        f, level=90, bitspersample=12), PYDICOM, 0),
}


LOSSLESS = {JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, HTJ2KLossless, JPEG2000Lossless}


@pytest.mark.parametrize("case", sorted(ENCODED))
def test_encoded_clip_equals_full_pydicom_decode(tmp_path, case):
    syntax, bits, encode, decoder, tolerance = ENCODED[case]
    frames = frames_of(bits)
    path = write_clip(tmp_path / f"{case}.dcm", frames, syntax, encode=encode, bits_stored=bits)
    got = assert_same_as_pydicom(path, SELECTION, decoder, tolerance=tolerance)
    if syntax in LOSSLESS:  # the frames written come back
        assert np.array_equal(got.frames, frames[SELECTION].astype(np.float32))


@pytest.mark.parametrize("bits", [8, 16])
def test_rle_clip_equals_full_pydicom_decode(tmp_path, bits):
    frames = frames_of(bits)
    path = write_clip(tmp_path / "native.dcm", frames, ExplicitVRLittleEndian, bits_stored=12 if bits == 16 else 8)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm")
    got = assert_same_as_pydicom(tmp_path / "rle.dcm", SELECTION, RLE)
    masked = frames & 0x0FFF if bits == 16 else frames  # BitsStored 12: pydicom clears the top 4 bits
    assert np.array_equal(got.frames, masked[SELECTION].astype(np.float32))


def _rle_runs(count: int, value: int) -> bytes:
    """PackBits replicate runs giving `count` bytes of `value`."""
    out = b""
    while count:
        run = min(count, 128)
        out += bytes([257 - run, value])
        count -= run
    return out


@pytest.mark.filterwarnings("ignore:The decoded RLE segment contains non-conformant padding")
def test_an_rle_run_past_the_frame_end_decodes_as_pydicom_does_and_never_panics(tmp_path):
    # The low-byte segment ends with a literal run that crosses the end of the
    # frame. pydicom's RLE decoder cuts it (with a warning); pylibjpeg-rle, which
    # pydicom would try first, panics, and pyo3 raises that as a BaseException no
    # `except Exception` catches. The gate never asks pylibjpeg-rle.
    from pydicom.pixels.decoders import RLELosslessDecoder

    pixels = ROWS * COLS
    high = _rle_runs(pixels, 0x01)
    low = _rle_runs(pixels - 30, 0x07) + bytes([83]) + bytes(range(84))  # 84 literal bytes from pixel -30
    frame = struct.pack("<16I", 2, 64, 64 + len(high), *[0] * 13) + high + low
    frames = np.zeros((2, ROWS, COLS), dtype=np.uint16)
    path = write_clip(tmp_path / "rle.dcm", frames, RLELossless, encode=lambda f: frame)
    assert "pylibjpeg" not in RLELosslessDecoder.available_plugins
    got = assert_same_as_pydicom(path, [1, 0], RLE)
    want = np.full(pixels, 0x0107, dtype=np.float32)
    want[-30:] = 0x0100 + np.arange(30)
    assert np.array_equal(got.frames[0].ravel(), want)
    for frame in pydicom.pixels.iter_pixels(path):  # the fallback path: pydicom's own decoder
        assert np.array_equal(frame.ravel(), want)


@pytest.mark.parametrize("name, decoder", [
    ("XA-MONO2-8-12x-catheter.dcm", TURBO),  # a real cath-lab cine, JPEG Lossless SV1
    ("XA1_JPLL.dcm", TURBO),                 # one frame in 8 fragments, padded with 0xFF after EOI
    ("XA1_JLSL.dcm", CHARLS),
    ("XA1_JLSN.dcm", CHARLS),
    ("XA1_RLE.dcm", RLE),
    ("XA1_UNC.dcm", NATIVE),
    ("XA1_J2KR.dcm", PYDICOM),
    ("XA1_J2KI.dcm", PYDICOM),
])
def test_samples_equal_full_pydicom_decode(samples_dir, name, decoder):
    path = samples_dir / name
    n = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    indices = [n - 1, 0, n // 2, n // 2, 0]
    assert_same_as_pydicom(path, indices, decoder)


def test_jpeg_extended_12_bit_sample_is_left_to_pydicom_and_fails_clearly(samples_dir):
    with pytest.raises(DecodeError, match="cannot decode frames 0..0"):
        decode_frames(samples_dir / "XA1_JPLY.dcm", [0])


@pytest.mark.parametrize("syntax, decoder", [("explicit", NATIVE), ("jpeg-lossless", TURBO)])
def test_phantoms_from_the_synth_writer(tmp_path, syntax, decoder):
    from angiogate.synth.dicom_writer import write_xa

    frames = frames_of(8, n=31, rows=40, cols=56)
    path = write_xa(tmp_path / f"{syntax}.dcm", frames, frame_rate_hz=15.0, syntax=syntax, patient_id="P",
                    patient_name="Phantom^Test", study_instance_uid=generate_uid(),
                    series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=1,
                    instance_number=1)
    indices = list(range(16, 31, 2)) + [30, 0, 0]
    got = assert_same_as_pydicom(path, indices, decoder)
    assert np.array_equal(got.frames, frames[indices].astype(np.float32))


# --- native syntaxes ---------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_native_16_bit_in_every_byte_order(tmp_path, syntax):
    frames = frames_of(12)
    path = write_clip(tmp_path / "clip.dcm", frames, syntax, bits_stored=12)
    got = assert_same_as_pydicom(path, SELECTION, NATIVE)
    assert np.array_equal(got.frames, frames[SELECTION].astype(np.float32))


def test_native_unused_high_bits_are_cleared_as_pydicom_does(tmp_path):
    frames = frames_of(12)
    dirty = frames | np.uint16(0xA000)  # garbage above BitsStored 12
    path = write_clip(tmp_path / "dirty.dcm", dirty, ExplicitVRLittleEndian, bits_stored=12)
    got = assert_same_as_pydicom(path, SELECTION, NATIVE)
    assert np.array_equal(got.frames, frames[SELECTION].astype(np.float32))


def test_native_signed_12_bit_is_sign_extended_as_pydicom_does(tmp_path):
    values = frames_of(12).astype(np.int32) - 2048           # -2048..2047
    stored = (values & 0x0FFF).astype(np.uint16)            # two's complement in 12 bits, top bits 0
    path = write_clip(tmp_path / "signed.dcm", stored, ExplicitVRLittleEndian, bits_stored=12, signed=True)
    got = assert_same_as_pydicom(path, SELECTION, NATIVE)
    assert np.array_equal(got.frames, values[SELECTION].astype(np.float32))


def test_native_odd_frame_length(tmp_path):
    frames = frames_of(8, n=7, rows=5, cols=7)  # 35-byte frames: most start at odd offsets
    path = write_clip(tmp_path / "odd.dcm", frames, ExplicitVRLittleEndian)
    assert_same_as_pydicom(path, [6, 1, 3, 0, 5, 5], NATIVE)


@pytest.mark.parametrize("planar", [0, 1])
def test_native_rgb_either_planar_configuration(tmp_path, planar):
    rgb = np.stack([frames_of(8, seed=s) for s in (1, 2, 3)], axis=-1)
    path = write_clip(tmp_path / "rgb.dcm", rgb, ExplicitVRLittleEndian, planar=planar)
    got = assert_same_as_pydicom(path, SELECTION, NATIVE)
    luminance = rgb[SELECTION].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.allclose(got.frames, luminance, atol=1e-3)


@pytest.mark.parametrize("syntax, encode, decoder", [
    (ExplicitVRLittleEndian, None, NATIVE),
    (JPEGLosslessSV1, _turbo_lossless(12), TURBO),
])
def test_monochrome1_is_inverted_on_the_fast_paths(tmp_path, syntax, encode, decoder):
    frames = frames_of(12)
    path = write_clip(tmp_path / "mono1.dcm", frames, syntax, encode=encode, bits_stored=12, photometric="MONOCHROME1")
    got = assert_same_as_pydicom(path, SELECTION, decoder)
    assert np.array_equal(got.frames, 4095 - frames[SELECTION].astype(np.float32))


def test_native_element_shorter_than_number_of_frames_says_so_even_with_bytes_after_it(tmp_path):
    frames = frames_of(8, n=6)
    path = write_clip(tmp_path / "short.dcm", frames, ExplicitVRLittleEndian, number_of_frames=10)
    ds = pydicom.dcmread(path)
    ds.add_new(0xFFFCFFFC, "OB", bytes(ROWS * COLS * 8))  # Data Set Trailing Padding after Pixel Data
    ds.save_as(path)
    with pytest.raises(DecodeError, match="NumberOfFrames says 10"):
        decode_frames(path, [0, 1])


# --- encapsulated frame maps ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", [
    dict(has_bot=True),
    dict(has_bot=False),
    dict(has_bot=True, fragments_per_frame=3),
    dict(has_bot=False, fragments_per_frame=2),  # frames found by the EOI marker, as pydicom finds them
    dict(has_bot=False, extended_offsets=True),
])
def test_every_frame_map_gives_the_same_frames(tmp_path, layout):
    frames = frames_of(12)
    path = write_clip(tmp_path / "clip.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(12), bits_stored=12,
                      **layout)
    assert_same_as_pydicom(path, SELECTION, TURBO)


def _replace_fragment(path: Path, frame: int, new: bytes) -> None:
    """Overwrite one frame's only fragment of a no-BOT file in place, keeping the item length."""
    data = bytearray(path.read_bytes())
    position = data.index(b"\xe0\x7f\x10\x00") + 12  # explicit VR OB: tag, VR, reserved, length
    position += 8 + struct.unpack("<I", data[position + 4:position + 8])[0]  # skip the BOT item
    for _ in range(frame):
        position += 8 + struct.unpack("<I", data[position + 4:position + 8])[0]
    length = struct.unpack("<I", data[position + 4:position + 8])[0]
    assert len(new) == length
    data[position + 8:position + 8 + length] = new
    path.write_bytes(bytes(data))


def test_a_cut_codestream_is_left_to_pydicom(tmp_path):
    # The item is intact but the JPEG inside stops early (no EOI): whatever pydicom
    # makes of it, the gate makes of it; the fast decoder does not guess.
    frames = frames_of(8)
    path = write_clip(tmp_path / "cut.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(8), has_bot=False)
    stream = bytes(imagecodecs.jpeg8_encode(frames[4], lossless=True, predictor=1))
    padded = stream + b"\x00" * (len(stream) % 2)
    _replace_fragment(path, 4, padded[: len(padded) // 2] + b"\x00" * (len(padded) - len(padded) // 2))
    got = decode_sampled_frames(path, [4, 0])
    assert got.decoder == PYDICOM and "EOI" in got.fallback_reason
    assert np.array_equal(got.frames, reference(path, [4, 0]))


def test_8_bit_jpeg_in_16_bits_allocated_gives_the_written_frames(tmp_path):
    # Valid DICOM (BitsAllocated 16, BitsStored 8, 8-bit JPEG Lossless) that
    # pydicom 3.0.2 fails on (it does not widen the 8-bit frame); the fast path
    # widens it as pydicom means to.
    frames = frames_of(8).astype(np.uint16)
    path = write_clip(tmp_path / "ba16.dcm", frames, JPEGLosslessSV1, bits_stored=8,
                      encode=lambda f: imagecodecs.jpeg8_encode(f.astype(np.uint8), lossless=True, predictor=1))
    got = decode_sampled_frames(path, SELECTION)
    assert got.decoder == TURBO
    assert np.array_equal(got.frames, frames[SELECTION].astype(np.float32))


def test_garbage_in_a_fragment_is_a_decode_error(tmp_path):
    frames = frames_of(8)
    path = write_clip(tmp_path / "garbage.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(8), has_bot=False)
    stream = bytes(imagecodecs.jpeg8_encode(frames[3], lossless=True, predictor=1))
    length = len(stream) + len(stream) % 2
    _replace_fragment(path, 3, np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes())
    with pytest.raises(DecodeError, match="cannot decode frames"):
        decode_frames(path, [3])
    assert decode_sampled_frames(path, [2]).decoder == TURBO  # the other frames still decode fast


def test_a_basic_offset_table_that_misses_the_fragments_is_left_to_pydicom(tmp_path):
    frames = frames_of(8)
    path = write_clip(tmp_path / "bot.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(8))
    data = bytearray(path.read_bytes())
    bot = data.index(b"\xfe\xff\x00\xe0") + 8
    data[bot + 4:bot + 8] = struct.pack("<I", struct.unpack("<I", data[bot + 4:bot + 8])[0] + 2)  # frame 1 off by 2
    path.write_bytes(bytes(data))
    got = decode_sampled_frames(path, [0])
    assert got.decoder == PYDICOM and "Basic Offset Table" in got.fallback_reason


@pytest.mark.parametrize("has_bot", [True, False])
def test_encapsulated_number_of_frames_that_lies(tmp_path, has_bot):
    frames = frames_of(8, n=6)
    path = write_clip(tmp_path / "lies.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(8), has_bot=has_bot,
                      number_of_frames=10)
    for indices in ([6], [9], [0, 8]):
        with pytest.raises(DecodeError, match="frame"):
            decode_frames(path, indices)
    assert np.array_equal(decode_frames(path, [5, 0]), frames[[5, 0]].astype(np.float32))


def test_a_file_cut_inside_the_pixel_data_is_a_decode_error(tmp_path):
    frames = frames_of(8)
    path = write_clip(tmp_path / "cut.dcm", frames, JPEGLosslessSV1, encode=_turbo_lossless(8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(data) // 4])
    with pytest.raises(DecodeError):
        decode_frames(path, [N_FRAMES - 1])


def test_indices_beyond_number_of_frames_are_a_decode_error(tmp_path):
    path = write_clip(tmp_path / "clip.dcm", frames_of(8), JPEGLosslessSV1, encode=_turbo_lossless(8))
    for indices in ([N_FRAMES], [0, 99], [-1]):
        with pytest.raises(DecodeError, match="NumberOfFrames"):
            decode_frames(path, indices)


def test_colour_jpeg_is_left_to_pydicom(tmp_path):
    rgb = np.stack([frames_of(8, seed=s) for s in (1, 2, 3)], axis=-1)
    path = write_clip(tmp_path / "rgb.dcm", rgb, JPEGLosslessSV1,
                      encode=lambda f: imagecodecs.jpeg8_encode(f, lossless=True, predictor=1, colorspace="RGB"))
    got = decode_sampled_frames(path, [1])
    assert got.decoder == PYDICOM


# --- which decoder, per syntax -------------------------------------------------------------------


@pytest.mark.parametrize("syntax, name", [
    (JPEGLosslessSV1, TURBO), (JPEGLossless, TURBO), (JPEGBaseline8Bit, TURBO), (JPEGExtended12Bit, TURBO),
    (JPEGLSLossless, CHARLS), (JPEGLSNearLossless, CHARLS),
    (RLELossless, RLE),
    (JPEG2000Lossless, None), ("1.2.840.10008.1.2.4.91", None), (ExplicitVRLittleEndian, None),
    (HTJ2KLossless, None), ("1.2.840.10008.1.2.4.202", None), (HTJ2K, None),
])
def test_fast_decoder_per_syntax(syntax, name):
    codec = fast_codec(syntax)
    assert (codec.name if codec else None) == name


# --- memory and reads: a big clip is not read whole -------------------------------------------------


def _rchar() -> int:
    """Bytes this process has read through read() and friends, as the kernel counts them."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise KeyError("rchar")


def _header_bytes(syntax: str, n_frames: int, rows: int, cols: int) -> bytes:
    """An 8-bit MONOCHROME2 XA dataset without Pixel Data, as written to a file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XA
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = XA, ds.file_meta.MediaStorageSOPInstanceUID, "XA"
    ds.NumberOfFrames, ds.Rows, ds.Columns = n_frames, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    return head.getvalue()


def _sparse_clip(path: Path, sampled: dict[int, bytes], n_frames: int, rows: int, cols: int, *, hole: int,
                 has_bot: bool, fragments_per_frame: int) -> None:
    """A JPEG Lossless clip whose non-sampled frames are `hole`-byte fragments never written (sparse)."""

    def fragments(index: int) -> list[int | bytes]:  # bytes to write, or the length of a hole
        if index in sampled:
            stream = sampled[index] + b"\x00" * (len(sampled[index]) % 2)
            if fragments_per_frame == 1:
                return [stream]
            cut = len(stream) // 4 * 2
            return [stream[:cut], stream[cut:]]
        return [hole // fragments_per_frame] * fragments_per_frame

    layout = [fragments(i) for i in range(n_frames)]
    offsets, position = [], 0
    for parts in layout:
        offsets.append(position)
        position += sum(8 + (len(p) if isinstance(p, bytes) else p) for p in parts)
    bot = struct.pack(f"<{n_frames}I", *offsets) if has_bot else b""
    with open(path, "wb") as f:
        f.write(_header_bytes(JPEGLosslessSV1, n_frames, rows, cols))
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
        f.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(bot)) + bot)
        for parts in layout:
            for k, part in enumerate(parts):
                if isinstance(part, bytes):
                    f.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(part)) + part)
                else:  # a hole; a frame's last one ends with EOI, so the EOI rule sees where frames end
                    f.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", part))
                    f.seek(part - 2, io.SEEK_CUR)
                    f.write(b"\xff\xd9" if k == len(parts) - 1 else b"\x00\x00")
        f.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


@pytest.mark.parametrize("has_bot, fragments_per_frame", [(True, 1), (False, 1), (False, 2)])
def test_a_2_gib_clip_is_decoded_reading_only_its_sampled_frames(tmp_path, has_bot, fragments_per_frame):
    try:
        _rchar()
    except (OSError, KeyError):
        pytest.skip("/proc/self/io is not readable here")
    from angiogate.clip.frames import frame_indices

    n_frames, rows, cols = 80, 256, 256
    indices = frame_indices(n_frames, 15.0, window_start_s=16 / 15, sample_rate_hz=7.5, samples=16)
    assert indices == list(range(16, 47, 2))
    images = {i: frames_of(8, n=1, rows=rows, cols=cols, seed=i)[0] for i in indices}
    sampled = {i: bytes(imagecodecs.jpeg8_encode(img, lossless=True, predictor=1)) for i, img in images.items()}
    path = tmp_path / "big.dcm"
    _sparse_clip(path, sampled, n_frames, rows, cols, hole=32 << 20, has_bot=has_bot,
                 fragments_per_frame=fragments_per_frame)
    size = path.stat().st_size
    assert size > 2 << 30
    if path.stat().st_blocks * 512 > 200 << 20:
        pytest.skip("this filesystem wrote the holes out")
    decode_frames(path, [indices[0]])  # imports and first-call costs outside the count

    order = [indices[-1]] + indices[:-1] + [indices[3]]
    before = _rchar()
    tracemalloc.start()
    try:
        got = decode_sampled_frames(path, order)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    read = _rchar() - before

    assert got.decoder == TURBO
    assert np.array_equal(got.frames, np.stack([images[i] for i in order]).astype(np.float32))
    codestreams = sum(len(s) for s in sampled.values())
    assert read < codestreams + (1 << 20), f"read {read} bytes of a {size}-byte file for {codestreams} bytes of frames"
    assert peak < 64 << 20, f"peak traced memory {peak} bytes"


def test_a_2_gib_native_clip_is_decoded_reading_only_its_sampled_frames(tmp_path):
    try:
        _rchar()
    except (OSError, KeyError):
        pytest.skip("/proc/self/io is not readable here")
    n_frames, rows, cols = 8200, 512, 512
    frame_bytes = rows * cols
    indices = [8199, 16, 4000, 4000, 0]
    path = tmp_path / "big-native.dcm"
    with open(path, "wb") as f:
        f.write(_header_bytes(ExplicitVRLittleEndian, n_frames, rows, cols))
        f.write(b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", n_frames * frame_bytes))
        start = f.tell()
        for i in set(indices):  # only the sampled frames are written; the rest are holes
            f.seek(start + i * frame_bytes)
            f.write(frames_of(8, n=1, rows=rows, cols=cols, seed=i)[0].tobytes())
        f.truncate(start + n_frames * frame_bytes)
    size = path.stat().st_size
    assert size > 2 << 30
    if path.stat().st_blocks * 512 > 200 << 20:
        pytest.skip("this filesystem wrote the holes out")
    decode_frames(path, [1])  # imports and first-call costs outside the count

    before = _rchar()
    got = decode_sampled_frames(path, indices)
    read = _rchar() - before

    assert got.decoder == NATIVE
    want = np.stack([frames_of(8, n=1, rows=rows, cols=cols, seed=i)[0] for i in indices]).astype(np.float32)
    assert np.array_equal(got.frames, want)
    assert read < len(set(indices)) * frame_bytes + (1 << 20), f"read {read} bytes of a {size}-byte file"
