"""Unit tests of angiogate/clip/decode.py and angiogate/clip/preprocess.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from angiogate.clip.decode import DecodeError, decode_frames
from angiogate.clip.preprocess import normalise_intensity, square_resize, to_model_input

# the catheter clip's UIDs (999.999...) are not conformant; pydicom warns lazily
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

XA = "1.2.840.10008.5.1.4.1.1.12.1"


def write_clip(path: Path, frames: np.ndarray, *, photometric: str = "MONOCHROME2",
               number_of_frames: int | None = None, bits_stored: int | None = None,
               pixel_bytes: bytes | None = None) -> Path:
    """A multi-frame XA object, Explicit VR Little Endian, uint8 or uint16."""
    bits_allocated = frames.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = XA
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = XA
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.NumberOfFrames = number_of_frames or frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.FrameTime = 66.67
    ds.PixelData = pixel_bytes if pixel_bytes is not None else frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def frames() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    return rng.integers(0, 256, size=(6, 24, 20), dtype=np.uint8)


@pytest.fixture(scope="module")
def unc_frame(samples_dir) -> np.ndarray:
    return pydicom.dcmread(samples_dir / "XA1_UNC.dcm").pixel_array


# --- decode_frames: selection ----------------------------------------------------

def test_selected_frames_equal_full_decode_in_order_with_repeats(tmp_path, frames):
    path = write_clip(tmp_path / "clip.dcm", frames)
    full = pydicom.dcmread(path).pixel_array
    assert np.array_equal(full, frames)  # the file holds what was written
    got = decode_frames(path, [3, 1, 1])
    assert got.shape == (3, 24, 20)
    assert got.dtype == np.float32
    assert np.array_equal(got, full[[3, 1, 1]].astype(np.float32))


@pytest.mark.parametrize("indices", [[0], [5], [5, 4, 3, 2, 1, 0], [2, 2, 2, 2], list(range(6)) * 3])
def test_any_selection_equals_full_decode(tmp_path, frames, indices):
    path = write_clip(tmp_path / "clip.dcm", frames)
    got = decode_frames(path, indices)
    assert np.array_equal(got, frames[indices].astype(np.float32))


def test_sixteen_bit_frames(tmp_path):
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 1024, size=(4, 16, 16), dtype=np.uint16)
    path = write_clip(tmp_path / "clip16.dcm", frames, bits_stored=10)
    assert np.array_equal(decode_frames(path, [2, 0]), frames[[2, 0]].astype(np.float32))


def test_rle_multi_frame_selection(tmp_path, frames):
    path = write_clip(tmp_path / "clip.dcm", frames)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    rle_path = tmp_path / "clip_rle.dcm"
    ds.save_as(rle_path)
    assert pydicom.dcmread(rle_path).file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(decode_frames(rle_path, [4, 0, 4]), frames[[4, 0, 4]].astype(np.float32))


def test_catheter_sample_selection_equals_full_decode(samples_dir):
    path = samples_dir / "XA-MONO2-8-12x-catheter.dcm"
    full = pydicom.dcmread(path).pixel_array
    assert full.shape == (12, 512, 512)
    assert np.array_equal(decode_frames(path, [3, 1, 1]), full[[3, 1, 1]].astype(np.float32))
    assert np.array_equal(decode_frames(path, [11, 0]), full[[11, 0]].astype(np.float32))


# --- decode_frames: MONOCHROME1 --------------------------------------------------------

def monochrome1_frames() -> np.ndarray:
    # Frame 0 never exceeds 100, frame 1 reaches 200: inversion must not depend on the selection.
    frames = np.zeros((2, 32, 32), dtype=np.uint8)
    frames[0] = (np.arange(32 * 32).reshape(32, 32) % 64 + 37).astype(np.uint8)
    frames[1] = 200
    frames[1, 0, 0] = 10
    return frames


def test_monochrome1_is_inverted(tmp_path):
    frames = monochrome1_frames()
    path = write_clip(tmp_path / "mono1.dcm", frames, photometric="MONOCHROME1")
    got = decode_frames(path, [0, 1])
    raw = frames.astype(np.float32)
    # Inverted: brighter stored values become darker, by one constant for the whole selection.
    total = got + raw
    assert np.all(total == total.flat[0])
    assert got[1, 0, 0] > got[1, 1, 1]
    assert got[0, 0, 0] > got[0, 1, 30]  # stored 37 vs 99
    assert got.min() >= 0


def test_monochrome2_is_not_inverted(tmp_path):
    frames = monochrome1_frames()
    path = write_clip(tmp_path / "mono2.dcm", frames)
    assert np.array_equal(decode_frames(path, [0, 1]), frames.astype(np.float32))


def test_monochrome1_inversion_is_independent_of_selection(tmp_path):
    frames = monochrome1_frames()
    path = write_clip(tmp_path / "mono1.dcm", frames, photometric="MONOCHROME1")
    alone = decode_frames(path, [0])
    together = decode_frames(path, [0, 1])
    assert np.array_equal(alone[0], together[0])
    assert np.array_equal(alone[0], 255 - frames[0].astype(np.float32))


# --- decode_frames: bad input ------------------------------------------------------------

def test_number_of_frames_beyond_pixel_data_raises(tmp_path, frames):
    # NumberOfFrames says 10, the pixel data holds 6.
    path = write_clip(tmp_path / "short.dcm", frames, number_of_frames=10)
    for indices in ([6], [9], [0, 8], [16, 18, 20]):
        with pytest.raises(DecodeError) as info:
            decode_frames(path, indices)
        message = str(info.value)
        assert "frame" in message and len(message) > 30


def test_pixel_data_cut_mid_frame_raises(tmp_path, frames):
    cut = frames.tobytes()[: frames[0].size * 3 + 100]  # 3 whole frames and part of the 4th
    path = write_clip(tmp_path / "cut.dcm", frames, pixel_bytes=cut)
    with pytest.raises(DecodeError):
        decode_frames(path, [3])


def test_number_of_frames_beyond_pixel_data_raises_even_for_present_frames(tmp_path, frames):
    path = write_clip(tmp_path / "short.dcm", frames, number_of_frames=10)
    with pytest.raises(DecodeError):
        decode_frames(path, [0, 1])


def test_small_native_object_decodes(tmp_path):
    frames = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    path = write_clip(tmp_path / "tiny.dcm", frames)
    assert np.array_equal(decode_frames(path, [1, 0]), frames[[1, 0]].astype(np.float32))


def test_jpeg_extended_12_bit_sample_raises_decode_error(samples_dir):
    with pytest.raises(DecodeError) as info:
        decode_frames(samples_dir / "XA1_JPLY.dcm", [0])
    message = str(info.value)
    assert message.startswith("cannot decode frames 0..0")
    assert "\n" not in message  # one line, fit for the verdict log
    assert len(message) > 40


def test_non_dicom_file_raises_decode_error(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not dicom at all" * 10)
    with pytest.raises(DecodeError):
        decode_frames(path, [0])


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(DecodeError):
        decode_frames(tmp_path / "absent.dcm", [0])


# --- decode_frames: the real transfer syntaxes ---------------------------------------------

@pytest.mark.parametrize("name", ["XA1_UNC.dcm", "XA1_JPLL.dcm", "XA1_RLE.dcm", "XA1_J2KR.dcm", "XA1_JLSL.dcm"])
def test_lossless_samples_equal_the_uncompressed_frame(samples_dir, unc_frame, name):
    got = decode_frames(samples_dir / name, [0])
    assert got.shape == (1, 1024, 1024)
    assert got.dtype == np.float32
    assert np.array_equal(got[0], unc_frame.astype(np.float32))


@pytest.mark.parametrize("name", ["XA1_J2KI.dcm", "XA1_JLSN.dcm"])
def test_lossy_samples_are_close_to_the_uncompressed_frame(samples_dir, unc_frame, name):
    got = decode_frames(samples_dir / name, [0])
    assert got.shape == (1, 1024, 1024)
    diff = np.abs(got[0] - unc_frame.astype(np.float32))
    assert diff.max() <= 32          # of a 10-bit range
    assert diff.mean() < 2.0
    assert unc_frame.max() > 100     # the comparison is not between two blank frames


# --- preprocess --------------------------------------------------------------------------------

def test_to_model_input_shape_and_dtype():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(16, 64, 64)).astype(np.uint8)
    clip = to_model_input(frames, size=32, mean=0.45, std=0.225)
    assert clip.shape == (3, 16, 32, 32)
    assert clip.dtype == np.float32
    assert np.isfinite(clip).all()
    # The grey channel is repeated three times.
    assert np.array_equal(clip[0], clip[1]) and np.array_equal(clip[0], clip[2])


def test_to_model_input_normalises_to_unit_range_before_mean_std():
    rng = np.random.default_rng(4)
    frames = rng.normal(500, 80, size=(4, 40, 40)).astype(np.float32)
    clip = to_model_input(frames, size=40, mean=0.0, std=1.0)
    assert clip.min() == 0.0
    assert clip.max() == 1.0
    shifted = to_model_input(frames, size=40, mean=0.5, std=0.25)
    assert np.allclose(shifted, (clip - 0.5) / 0.25, atol=1e-5)


def test_to_model_input_is_independent_of_bit_depth_scale():
    rng = np.random.default_rng(5)
    frames8 = rng.integers(0, 256, size=(4, 32, 32)).astype(np.float32)
    frames12 = frames8 * 16  # the same image stored in 12 bits
    a = to_model_input(frames8, size=32, mean=0.45, std=0.225)
    b = to_model_input(frames12, size=32, mean=0.45, std=0.225)
    assert np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("value", [0, 7, 255, 4095])
def test_constant_input_gives_zeros_not_nan(value):
    frames = np.full((16, 64, 64), value, dtype=np.uint16)
    assert np.array_equal(normalise_intensity(frames.astype(np.float32)), np.zeros((16, 64, 64), np.float32))
    clip = to_model_input(frames, size=32, mean=0.0, std=1.0)
    assert clip.shape == (3, 16, 32, 32)
    assert np.isfinite(clip).all()
    assert np.count_nonzero(clip) == 0
    normalised = to_model_input(frames, size=32, mean=0.45, std=0.225)
    assert np.isfinite(normalised).all()
    assert np.allclose(normalised, -0.45 / 0.225)


@pytest.mark.parametrize("shape", [(4, 50, 30), (4, 500, 500), (2, 720, 720), (2, 1000, 1000)])
def test_constant_input_of_any_size_is_finite(shape):
    clip = to_model_input(np.full(shape, 255, dtype=np.uint8), size=160, mean=0.45, std=0.225)
    assert clip.shape == (3, shape[0], 160, 160)
    assert np.isfinite(clip).all()


@pytest.mark.parametrize("shape, value", [((2, 500, 500), 255), ((2, 720, 720), 255),
                                          ((2, 1000, 1000), 255), ((2, 50, 30), 4095)])
def test_constant_input_gives_zeros_at_realistic_sizes(shape, value):
    frames = np.full(shape, value, dtype=np.uint16)
    size = 160 if shape[1] > 160 else 32
    clip = to_model_input(frames, size=size, mean=0.0, std=1.0)
    assert np.count_nonzero(clip) == 0, float(clip.max())


def test_square_resize_pads_wide_frames_top_and_bottom_with_the_minimum():
    frame = np.linspace(50, 250, 20 * 40, dtype=np.float32).reshape(20, 40)
    out = square_resize(frame, 40)  # no scaling: only the padding is seen
    assert out.shape == (40, 40)
    assert np.all(out[:10] == 50)
    assert np.all(out[30:] == 50)
    assert np.allclose(out[10:30], frame)


def test_square_resize_pads_tall_frames_left_and_right():
    frame = np.full((30, 10), 9.0, dtype=np.float32)
    frame[0, 0] = 1.0
    out = square_resize(frame, 30)
    assert out.shape == (30, 30)
    assert np.all(out[:, :10] == 1.0)
    assert np.all(out[:, 20:] == 1.0)
    assert np.array_equal(out[:, 10:20], frame)


def test_non_square_frames_keep_their_aspect():
    # A square bright block in a 2:1 frame stays square after pad + resize.
    frames = np.zeros((2, 32, 64), dtype=np.float32)
    frames[:, 8:24, 24:40] = 100.0
    clip = to_model_input(frames, size=32, mean=0.0, std=1.0)
    assert clip.shape == (3, 2, 32, 32)
    bright = np.argwhere(clip[0, 0] > 0.5)
    rows = bright[:, 0].max() - bright[:, 0].min() + 1
    cols = bright[:, 1].max() - bright[:, 1].min() + 1
    assert rows == cols == 8
    # Centred: the block sits in the middle of the square.
    assert bright[:, 0].min() == 12 and bright[:, 1].min() == 12


def test_square_resize_downscales_and_upscales():
    frame = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    small = square_resize(frame, 16)
    assert small.shape == (16, 16)
    assert small[0, 0] < small[-1, -1]
    big = square_resize(frame[:8, :8], 32)
    assert big.shape == (32, 32)


def test_gdcm_is_never_used_by_the_gate():
    """GDCM aborts the whole process on some corrupt JPEG data (found by fuzzing)."""
    import angiogate.clip.decode  # noqa: F401  (removes the plugin on import)
    from pydicom.pixels.decoders import base

    for entry in base._PIXEL_DATA_DECODERS.values():
        decoder = entry[0] if isinstance(entry, tuple) else entry
        assert "gdcm" not in decoder.available_plugins, decoder.UID


def test_contrast_channels_show_what_darkened_and_cancel_what_stays():
    """grey+contrast: channel 0 is the grey clip; 1 and 2 are 1 + grey - each pixel's brightest frame."""
    rng = np.random.default_rng(5)
    background = rng.integers(60, 200, (40, 40)).astype(np.uint8)
    frames = np.repeat(background[None], 12, axis=0).copy()
    frames[:, 5:8, :] = 20                      # a catheter parked in every frame
    frames[6:, 20:23, 5:35] -= 50               # contrast arriving half way
    grey = to_model_input(frames, size=40, mean=0.0, std=1.0)
    clip = to_model_input(frames, size=40, mean=0.0, std=1.0, channels="grey+contrast")
    assert clip.shape == (3, 12, 40, 40) and clip.dtype == np.float32
    np.testing.assert_array_equal(clip[0], grey[0])
    np.testing.assert_array_equal(clip[1], clip[2])
    np.testing.assert_allclose(clip[1], 1.0 + grey[0] - grey[0].max(axis=0), atol=1e-6)
    assert np.allclose(clip[1, :, 5:8, :], 1.0)          # the parked catheter cancels
    assert np.allclose(clip[1, :6], 1.0)                 # nothing darkened before the contrast
    assert clip[1, 8, 21, 10:30].max() < 0.9             # the filled segment shows
    normalised = to_model_input(frames, size=40, mean=0.4, std=0.2, channels="grey+contrast")
    np.testing.assert_allclose(normalised, (clip - 0.4) / 0.2, atol=1e-5)
    with pytest.raises(ValueError, match="unknown input channels"):
        to_model_input(frames, size=40, mean=0.0, std=1.0, channels="rgb")
