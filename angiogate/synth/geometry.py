"""Curves and shapes in millimetres or pixels: unit vectors, smoothing, splines, arc length."""

from __future__ import annotations

import numpy as np


def unit(v):
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def smooth(a, sigma):
    """Gaussian smoothing along axis 0 with edge padding (keeps end points put)."""
    if sigma <= 0:
        return a
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.concatenate([np.repeat(a[:1], r, 0), a, np.repeat(a[-1:], r, 0)], 0)
    if a.ndim == 1:
        return np.convolve(pad, k, "valid")
    return np.stack([np.convolve(pad[:, j], k, "valid") for j in range(a.shape[1])], 1)


def spline(ctrl, n, sigma=None):
    """Smooth 3-D curve through control points, resampled to n points."""
    ctrl = np.asarray(ctrl, float)
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1) + 1e-9
    t = np.concatenate([[0], np.cumsum(seg)])
    q = np.linspace(0, t[-1], n)
    pts = np.stack([np.interp(q, t, ctrl[:, j]) for j in range(ctrl.shape[1])], 1)
    return smooth(pts, sigma if sigma is not None else n / 25)


def arclen(pts):
    return np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
