"""Turn decoded frames into the classifier's input tensor layout.

Per clip: pad to square (anatomy keeps its aspect), resize to size x size
with area interpolation, stretch the 1st..99th percentile to 0..1 (vendors
differ in bit depth and windowing; the model should not care), then
normalise with the checkpoint's mean and std and repeat the grey channel
three times, giving float32 (3, T, size, size).
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


def to_model_input(frames: np.ndarray, *, size: int, mean: float, std: float) -> np.ndarray:
    """(T, H, W) frames -> float32 (3, T, size, size), ready for the 3D-CNN."""
    resized = np.stack([square_resize(f.astype(np.float32, copy=False), size) for f in frames])
    clip = (normalise_intensity(resized) - mean) / std
    return np.repeat(clip[None], 3, axis=0).astype(np.float32, copy=False)
