"""Which frames of a clip the classifier sees: a window defined in seconds.

The paper feeds 16 frames from the 16th frame on, every other frame, of
15 fps clips: samples at 7.5 Hz starting 1.0667 s in. Defining the window in
seconds gives 7.5, 15 and 30 fps clips the same coverage (frames 8..23,
16..46 step 2, 32..92 step 4). Short clips, common at 7.5 fps (20-35 frames):
  - if the window runs past the last frame, it slides earlier so that it
    ends on the last frame (never before time 0);
  - if the clip is shorter than the window itself, the samples spread evenly
    over the whole clip, repeating frames where the clip has fewer frames than
    samples, so the model always gets `samples` frames in time order.
"""

from __future__ import annotations

import math


def sample_times_s(n_frames: int, frame_rate_hz: float, *, window_start_s: float,
                   sample_rate_hz: float, samples: int) -> list[float]:
    """Times (s, from the first frame) at which the clip is sampled."""
    if n_frames < 1 or frame_rate_hz <= 0 or samples < 1:
        raise ValueError(f"cannot sample {samples} frames from {n_frames} frames at {frame_rate_hz} Hz")
    last_s = (n_frames - 1) / frame_rate_hz
    span_s = (samples - 1) / sample_rate_hz
    if span_s <= last_s:
        start_s = min(window_start_s, last_s - span_s)
        return [start_s + k / sample_rate_hz for k in range(samples)]
    if samples == 1:
        return [0.0]
    return [last_s * k / (samples - 1) for k in range(samples)]


def frame_indices(n_frames: int, frame_rate_hz: float, *, window_start_s: float,
                  sample_rate_hz: float, samples: int) -> list[int]:
    """0-based indices of the frames to decode, in time order (may repeat)."""
    times = sample_times_s(n_frames, frame_rate_hz, window_start_s=window_start_s,
                           sample_rate_hz=sample_rate_hz, samples=samples)
    # +1e-6 keeps 1.0667 s * 15 Hz on frame 16 despite float rounding.
    return [min(n_frames - 1, max(0, math.floor(t * frame_rate_hz + 0.5 + 1e-6))) for t in times]
