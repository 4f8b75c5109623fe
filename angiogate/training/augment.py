"""Training augmentations for whole clips: one random transform, applied to every frame.

The paper augments with flips, rotation, perspective and Gaussian blur; we
add brightness/contrast/gamma jitter and noise, since vendors and dose
settings differ in exactly those. A clip is one acquisition: the C-arm did
not flip or rotate between frames, so every geometric and photometric draw
is made once per clip and applied to all its frames. Only the noise is drawn
per pixel and frame, as quantum noise is.

Works on float clips (C, T, H, W) with values in 0..1 (the preprocessed clip
before the checkpoint's mean/std normalisation) and returns the same shape
and dtype. All randomness comes from the given torch.Generator, and the same
number of values is drawn whichever transforms fire, so a seed always gives
the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    max_rotation_deg: float = 15.0
    p_perspective: float = 0.5
    perspective_distortion: float = 0.1   # corner shift, fraction of the side
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)  # pixels
    brightness: float = 0.08              # added offset, +-
    contrast: float = 0.2                 # gain 1 +- this, around the clip mean
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: tuple[float, float] = (0.0, 0.03)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Every transform off (the identity); handy for tests and ablations."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0, 0.0, (1.0, 1.0), (0.0, 0.0))


def _homography(size: tuple[int, int], angle_deg: float, corner_shift: np.ndarray) -> np.ndarray:
    """Rotation about the centre followed by a perspective warp moving the corners by `corner_shift`."""
    height, width = size
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float32)
    rotation = np.vstack([cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle_deg, 1.0), [0, 0, 1]])
    moved = (corners + corner_shift * np.array([width, height], dtype=np.float32)).astype(np.float32)
    perspective = cv2.getPerspectiveTransform(corners, moved)
    return perspective @ rotation


class ClipAugment:
    """Callable `(clip, generator) -> clip`; see the module docstring."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def __call__(self, clip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        if clip.ndim != 4:
            raise ValueError(f"expected a clip (C, T, H, W), got shape {tuple(clip.shape)}")
        dtype = clip.dtype
        u = torch.rand(10, generator=generator, dtype=torch.float64).tolist()
        out = clip.float()
        if u[0] < cfg.p_hflip:
            out = out.flip(-1)
        if u[1] < cfg.p_vflip:
            out = out.flip(-2)
        angle = (2 * u[2] - 1) * cfg.max_rotation_deg
        shift = np.zeros((4, 2), dtype=np.float32)
        if u[3] < cfg.p_perspective:
            raw = torch.rand(8, generator=generator, dtype=torch.float64).numpy()
            shift = ((2 * raw - 1) * cfg.perspective_distortion).astype(np.float32).reshape(4, 2)
        else:
            torch.rand(8, generator=generator, dtype=torch.float64)  # keep the stream aligned
        sigma = cfg.blur_sigma[0] + u[5] * (cfg.blur_sigma[1] - cfg.blur_sigma[0]) if u[4] < cfg.p_blur else 0.0
        if abs(angle) > 1e-6 or shift.any() or sigma > 0:
            out = self._spatial(out, angle, shift, sigma)
        # Photometric jitter, one draw per clip.
        offset = (2 * u[6] - 1) * cfg.brightness
        gain = 1 + (2 * u[7] - 1) * cfg.contrast
        log_low, log_high = math.log(cfg.gamma[0]), math.log(cfg.gamma[1])
        gamma = math.exp(log_low + u[8] * (log_high - log_low))
        out = ((out - out.mean()) * gain + out.mean() + offset).clamp(0, 1)
        if abs(gamma - 1) > 1e-9:
            out = out.pow(gamma)
        noise_std = cfg.noise_std[0] + u[9] * (cfg.noise_std[1] - cfg.noise_std[0])
        if noise_std > 0:
            out = (out + noise_std * torch.randn(out.shape, generator=generator)).clamp(0, 1)
        return out.to(dtype)

    @staticmethod
    def _spatial(clip: torch.Tensor, angle: float, shift: np.ndarray, sigma: float) -> torch.Tensor:
        channels, frames, height, width = clip.shape
        warp = abs(angle) > 1e-6 or shift.any()
        matrix = _homography((height, width), angle, shift) if warp else None
        planes = clip.reshape(channels * frames, height, width).numpy()
        result = np.empty_like(planes)
        # One plane at a time: OpenCV's multi-channel warp rounds differently beyond
        # four channels, and every frame must get exactly the same transform.
        for i, plane in enumerate(planes):
            if warp:
                # Reflected borders: a constant fill would draw a sharp edge the model could learn.
                plane = cv2.warpPerspective(plane, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_REFLECT_101)
            if sigma > 0:
                plane = cv2.GaussianBlur(plane, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
            result[i] = plane
        return torch.from_numpy(result).reshape(channels, frames, height, width)
