"""Unit tests of angiogate/clip/frames.py: the frame window defined in seconds."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from angiogate.clip.frames import frame_indices, sample_times_s

# The defaults of config.yaml (frames:), the paper's protocol expressed in seconds.
PAPER = dict(window_start_s=1.0667, sample_rate_hz=7.5, samples=16)


def indices(n_frames: int, fps: float, **kw) -> list[int]:
    return frame_indices(n_frames, fps, **{**PAPER, **kw})


def assert_well_formed(result: list[int], n_frames: int, samples: int = 16) -> None:
    assert len(result) == samples
    assert all(isinstance(i, int) for i in result)
    assert all(0 <= i < n_frames for i in result), result
    assert all(a <= b for a, b in zip(result, result[1:])), result


def test_paper_protocol_at_15_fps():
    # "32 frames from the 16th frame, every other frame": 0-based 16, 18, ..., 46.
    assert indices(80, 15.0) == list(range(16, 47, 2))


def test_same_window_at_7_5_and_30_fps():
    assert indices(60, 7.5) == list(range(8, 24))
    assert indices(160, 30.0) == list(range(32, 93, 4))


@pytest.mark.parametrize("seconds", [5.4, 6.0, 8.0, 20.0])
def test_sample_times_agree_across_frame_rates_for_long_clips(seconds):
    times = {}
    for fps in (7.5, 15.0, 30.0):
        n_frames = round(seconds * fps)
        times[fps] = [i / fps for i in indices(n_frames, fps)]
    assert times[7.5] == pytest.approx(times[15.0], abs=1e-9)
    assert times[30.0] == pytest.approx(times[15.0], abs=1e-9)
    assert times[15.0][0] == pytest.approx(16 / 15, abs=1e-9)
    assert times[15.0][-1] - times[15.0][0] == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("n_frames", range(20, 36))
def test_short_7_5_fps_cath_lab_runs(n_frames):
    """Siemens AXIOM-Artis coronary runs: 7.5 fps, 19-53 frames (median 30)."""
    result = indices(n_frames, 7.5)
    assert_well_formed(result, n_frames)
    # Sampling at 7.5 Hz a 7.5 fps clip takes consecutive frames.
    assert [b - a for a, b in zip(result, result[1:])] == [1] * 15
    if n_frames < 24:  # frames 8..23 would run past the end: slide to end on the last frame
        assert result == list(range(n_frames - 16, n_frames))
        assert result[-1] == n_frames - 1
    else:
        assert result == list(range(8, 24))


def test_window_exactly_fitting_starts_at_zero():
    assert indices(16, 7.5) == list(range(16))


@pytest.mark.parametrize("n_frames, fps", [(40, 15.0), (35, 15.0), (70, 30.0)])
def test_window_overrunning_at_other_rates_ends_on_last_frame(n_frames, fps):
    result = indices(n_frames, fps)
    assert_well_formed(result, n_frames)
    assert result[-1] == n_frames - 1
    # The step stays the sampling interval (2 frames at 15 fps, 4 at 30 fps).
    step = round(fps / 7.5)
    assert [b - a for a, b in zip(result, result[1:])] == [step] * 15


@pytest.mark.parametrize("n_frames", [1, 2, 5, 10, 15, 16])
def test_clip_shorter_than_window_spreads_and_covers_every_frame(n_frames):
    # At 7.5 fps the window needs 16 frames; fewer frames get every frame, repeated.
    result = indices(n_frames, 7.5)
    assert_well_formed(result, n_frames)
    assert result[0] == 0
    assert result[-1] == n_frames - 1
    assert set(result) == set(range(n_frames))


@pytest.mark.parametrize("n_frames, fps", [(25, 15.0), (12, 30.303), (50, 30.0)])
def test_clip_shorter_than_window_spreads_over_whole_clip(n_frames, fps):
    # 15 fps x 25 frames = 1.6 s < the 2 s window; the catheter sample: 12 frames at ~30 fps.
    result = indices(n_frames, fps)
    assert_well_formed(result, n_frames)
    assert result[0] == 0
    assert result[-1] == n_frames - 1
    times = sample_times_s(n_frames, fps, **PAPER)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == pytest.approx([gaps[0]] * 15)


def test_window_times_from_sample_times():
    times = sample_times_s(80, 15.0, **PAPER)
    assert times == pytest.approx([1.0667 + k / 7.5 for k in range(16)])


def test_single_sample():
    assert frame_indices(1, 15.0, window_start_s=1.0, sample_rate_hz=7.5, samples=1) == [0]
    assert frame_indices(100, 15.0, window_start_s=1.0, sample_rate_hz=7.5, samples=1) == [15]


@pytest.mark.parametrize("n_frames, fps, samples", [(0, 15.0, 16), (10, 0.0, 16), (10, -1.0, 16), (10, 15.0, 0)])
def test_impossible_requests_raise(n_frames, fps, samples):
    with pytest.raises(ValueError):
        frame_indices(n_frames, fps, window_start_s=1.0667, sample_rate_hz=7.5, samples=samples)


@settings(max_examples=400, deadline=None)
@given(
    n_frames=st.integers(min_value=1, max_value=2000),
    fps=st.floats(min_value=1.0, max_value=60.0, allow_nan=False, allow_infinity=False),
    samples=st.sampled_from([1, 2, 8, 16, 32]),
)
def test_property_always_samples_in_range_non_decreasing(n_frames, fps, samples):
    result = frame_indices(n_frames, fps, window_start_s=1.0667, sample_rate_hz=7.5, samples=samples)
    assert_well_formed(result, n_frames, samples)
    times = sample_times_s(n_frames, fps, window_start_s=1.0667, sample_rate_hz=7.5, samples=samples)
    last_s = (n_frames - 1) / fps
    assert all(-1e-9 <= t <= last_s + 1e-9 for t in times)
    # Each index is the frame nearest its sample time.
    for index, t in zip(result, times):
        assert abs(index - t * fps) <= 0.5 + 1e-5
    # Long enough clips are sampled exactly on the paper's window.
    if samples > 1 and last_s >= 1.0667 + (samples - 1) / 7.5:
        assert times == pytest.approx([1.0667 + k / 7.5 for k in range(samples)])
    if samples > 1 and last_s < (samples - 1) / 7.5:  # shorter than the window: whole clip
        assert result[0] == 0 and result[-1] == n_frames - 1


@settings(max_examples=200, deadline=None)
@given(n_frames=st.integers(min_value=1, max_value=2000),
       fps=st.sampled_from([7.5, 12.5, 15.0, 25.0, 30.0]))
def test_property_window_never_starts_later_than_configured(n_frames, fps):
    times = sample_times_s(n_frames, fps, **PAPER)
    assert times[0] <= 1.0667 + 1e-9
    assert math.isclose(times[0], 1.0667) or times[-1] == pytest.approx((n_frames - 1) / fps)
