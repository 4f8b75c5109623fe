"""Anti-aliased 2-D drawing into float attenuation images (additive stamps, polygons, curves)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def stamp(img, val, draw):
    """Additive anti-aliased 2-D drawing: draw(canvas) paints 255 on a uint8 canvas."""
    tmp = np.zeros(img.shape, np.uint8)
    draw(tmp)
    img += tmp.astype(np.float32) * np.float32(val / 255.0)


def to_fixed(p):
    return np.round(np.asarray(p) * 16).astype(np.int32)  # cv2 shift=4 sub-pixel coordinates


def poly(img, pts, val, thick=0, closed=True):
    pts = to_fixed(pts).reshape(-1, 1, 2)
    if thick <= 0:
        stamp(img, val, lambda c: cv2.fillPoly(c, [pts], 255, cv2.LINE_AA, 4))
    else:
        stamp(img, val, lambda c: cv2.polylines(c, [pts], closed, 255, max(int(round(thick)), 1), cv2.LINE_AA, 4))


def superellipse(c, a, b, ang, p=0.3, n=72):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** p
    y = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** p
    ca, sa = math.cos(ang), math.sin(ang)
    return np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], 1)


def bezier(p0, p1, p2, n=32):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t * t * np.asarray(p2)
