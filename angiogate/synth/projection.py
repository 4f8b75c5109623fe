"""The C-arm: primary (LAO/RAO) and secondary (CRA/CAU) angles, perspective, roll, zoom."""

from __future__ import annotations

import math

import numpy as np


class Camera:
    """C-arm view: primary angle alpha (LAO +), secondary beta (CRA +), then pixels."""

    def __init__(self, rng, alpha, beta, size, ppm, center_mm):
        self.alpha, self.beta = alpha, beta
        a, b = math.radians(alpha), math.radians(beta)
        self.v = np.array([math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b)])
        self.right = np.array([math.cos(a), -math.sin(a), 0.0])
        self.down = np.cross(self.v, self.right)
        self.size, self.ppm, self.C = size, ppm, np.asarray(center_mm, float)
        self.sod = rng.uniform(650, 850)
        self.roll = math.radians(rng.uniform(-15, 15)) if rng.random() < 0.5 else 0.0
        self.flip = bool(rng.random() < 0.2)
        self.shift = np.zeros(2)
        self.jitter = rng.uniform(-0.08, 0.08, 2) * size

    def project(self, pts):
        d = np.asarray(pts, float) - self.C
        m = self.sod / (self.sod + d @ self.v)
        x, y = (d @ self.right) * m, (d @ self.down) * m
        c, s = math.cos(self.roll), math.sin(self.roll)
        x, y = c * x - s * y, s * x + c * y
        if self.flip:
            x = -x
        return np.stack([x * self.ppm + self.size / 2 + self.shift[0],
                         y * self.ppm + self.size / 2 + self.shift[1]], -1)

    def fit(self, pts, extent, ppm_lo, ppm_hi):
        """Zoom so the points span ``extent`` of the field (within a plausible zoom), then centre them."""
        uv = self.project(pts)
        ext = float((uv.max(0) - uv.min(0)).max()) + 1e-6
        self.ppm = float(np.clip(self.ppm * extent * self.size / ext, ppm_lo, ppm_hi))
        uv = self.project(pts)
        self.shift += self.size / 2 + self.jitter - 0.5 * (uv.min(0) + uv.max(0))


LEFT_VIEWS = ((-30, -25), (-30, 30), (0, 35), (0, -30), (45, 25), (45, -25), (55, 0), (90, 0), (-10, 0))
RIGHT_VIEWS = ((40, 0), (30, 20), (-30, 0), (0, 25), (60, 0), (90, 0))


def coronary_view(rng, side):
    if rng.random() < 0.3:
        return rng.uniform(-50, 90), rng.uniform(-40, 40)
    views = LEFT_VIEWS if side == "left" else RIGHT_VIEWS
    a, b = views[rng.integers(len(views))]
    return a + rng.uniform(-12, 12), b + rng.uniform(-10, 10)
