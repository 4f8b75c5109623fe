"""Turn decoded frames into the classifier's input tensor layout.

Per clip: pad to square (anatomy keeps its aspect), resize to size x size
with area interpolation, stretch the 1st..99th percentile to 0..1 (vendors
differ in bit depth and windowing; the model should not care), then
make the three input channels the checkpoint names, and normalise them with
its mean and std, giving float32 (3, T, size, size).

Input channels (`ModelInfo.input_channels`):
  grey           the grey clip three times (the paper's input);
  grey+contrast  the grey clip, then twice what darkened during the clip:
                 1 + grey - (each pixel's brightest value over the sampled
                 frames). It is a subtraction angiogram with the brightest
                 frame of each pixel as the mask: iodine arriving in the
                 vessels shows, while what stays put (a parked catheter,
                 wires, spine, text) cancels. Both channels are 0..1 before
                 the mean/std normalisation, like the grey one.
"""

from __future__ import annotations

import cv2
import numpy as np


def square_resize(frame: np.ndarray, size: int) -> np.ndarray:
    rows, cols = frame.shape
    side = max(rows, cols)
    if rows != cols:
        top, left = (side - rows) // 2, (side - cols) // 2
        frame = cv2.copyMakeBorder(frame, top, side - rows - top, left, side - cols - left,
                                   cv2.BORDER_CONSTANT, value=float(frame.min()))
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(frame, (size, size), interpolation=interpolation)


def normalise_intensity(clip: np.ndarray) -> np.ndarray:
    low, high = np.percentile(clip, [1.0, 99.0])
    # Resizing leaves float noise of ~1e-4 relative: below that the clip is blank.
    if high - low <= 1e-4 * max(1.0, abs(float(low)), abs(float(high))):
        return np.zeros_like(clip, dtype=np.float32)
    return np.clip((clip - low) / (high - low), 0.0, 1.0).astype(np.float32)


INPUT_CHANNELS = ("grey", "grey+contrast")


def check_channels(channels: str) -> str:
    if channels not in INPUT_CHANNELS:
        raise ValueError(f"unknown input channels {channels!r}; known: {', '.join(INPUT_CHANNELS)}")
    return channels


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W) frames -> float32 (T, size, size), each squared and resized, one frame at a time
    (no full-size float32 copy of the stack)."""
    return np.stack([square_resize(f.astype(np.float32, copy=False), size) for f in frames])


def grey_clip(frames: np.ndarray, *, size: int) -> np.ndarray:
    """(T, H, W) frames -> float32 (T, size, size) in 0..1: squared, resized, contrast-stretched."""
    return normalise_intensity(resize_frames(frames, size))


def model_channels(grey: np.ndarray, channels: str) -> np.ndarray:
    """A 0..1 grey clip (T, S, S) -> float32 (3, T, S, S), the channels named. Training calls
    this too (on the augmented grey clip), so both make them with the same arithmetic."""
    check_channels(channels)
    grey = grey.astype(np.float32, copy=False)
    if channels == "grey":
        return np.repeat(grey[None], 3, axis=0)
    darkened = 1.0 + grey - grey.max(axis=0, keepdims=True)
    return np.stack([grey, darkened, darkened])


def to_model_input(frames: np.ndarray, *, size: int, mean: float, std: float,
                   channels: str = "grey") -> np.ndarray:
    """(T, H, W) frames -> float32 (3, T, size, size), ready for the 3D-CNN."""
    return model_input_from_resized(resize_frames(frames, size), mean=mean, std=std, channels=channels)


def model_input_from_resized(resized: np.ndarray, *, mean: float, std: float, channels: str = "grey") -> np.ndarray:
    """`to_model_input` of frames already through `resize_frames` (the judge resizes once for
    the contrast rule and the model when both take the same size)."""
    clip = model_channels(normalise_intensity(resized), channels)
    return ((clip - mean) / std).astype(np.float32, copy=False)
