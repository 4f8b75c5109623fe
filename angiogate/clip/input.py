"""A clip as the classifier takes it: the one composition of header, frames, decode and preprocess.

read_header -> `sampled_indices` (the window in seconds, `frames.py`) ->
`decode_frames` (only those frames) -> `grey_clip` -> `model_channels` ->
(x - mean) / std. The judge composes the same steps with `sampled_indices`
and `to_model_input` (it times them and applies the header rules between
decoding and preprocessing); training caches `load_grey` and makes the
channels after augmentation; export calibration, the agreement check and
the bench take `model_input`. So every path picks, decodes and prepares a
clip with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from angiogate.clip.decode import decode_frames
from angiogate.clip.frames import frame_indices
from angiogate.clip.preprocess import grey_clip, model_channels
from angiogate.dicom.header import ClipHeader, read_header

if TYPE_CHECKING:
    from angiogate.config import Config
    from angiogate.engines.info import ModelInfo


@dataclass(frozen=True)
class FrameSampling:
    """How frames are picked (`frames.*` and `rules.assumed_frame_rate_hz` of the configuration)."""

    window_start_s: float
    sample_rate_hz: float
    assumed_frame_rate_hz: float

    @classmethod
    def of(cls, config: "Config") -> "FrameSampling":
        return cls(config.frames.window_start_s, config.frames.sample_rate_hz, config.rules.assumed_frame_rate_hz)

    @classmethod
    def from_config(cls) -> "FrameSampling":
        """The sampling of the configuration every command finds (training's default)."""
        from angiogate.config import load_site_config

        return cls.of(load_site_config())


def sampled_indices(header: ClipHeader, samples: int, sampling: FrameSampling) -> list[int]:
    """0-based indices of the `samples` frames the classifier sees, in time order (may repeat).

    A clip without a usable frame rate is taken at `assumed_frame_rate_hz`.
    """
    rate = header.frame_rate_hz or sampling.assumed_frame_rate_hz
    return frame_indices(header.frames or 1, rate, window_start_s=sampling.window_start_s,
                         sample_rate_hz=sampling.sample_rate_hz, samples=samples)


def load_grey(path: Path, *, num_frames: int, crop_size: int, sampling: FrameSampling) -> np.ndarray:
    """The grey clip serving makes before its channels: float32 (T, S, S) in 0..1."""
    header = read_header(path)
    frames = decode_frames(path, sampled_indices(header, num_frames, sampling))
    return grey_clip(frames, size=crop_size)


def load_clip(path: Path, *, num_frames: int, crop_size: int, sampling: FrameSampling,
              channels: str = "grey") -> np.ndarray:
    """A clip as serving sees it before normalisation: float32 (3, T, S, S) in 0..1.

    Identical to the judge's `to_model_input` with mean 0 and std 1; the
    training dataset applies the checkpoint's mean and std afterwards
    ((x - mean) / std either way).
    """
    grey = load_grey(path, num_frames=num_frames, crop_size=crop_size, sampling=sampling)
    return model_channels(grey, channels)


def model_input(path: Path, info: "ModelInfo", config: "Config") -> np.ndarray:
    """One clip as the judge gives it to the model `info` describes: float32 (3, T, S, S)."""
    clip01 = load_clip(Path(path), num_frames=info.num_frames, crop_size=info.crop_size,
                       sampling=FrameSampling.of(config), channels=info.input_channels)
    return ((clip01 - info.mean) / info.std).astype(np.float32, copy=False)
