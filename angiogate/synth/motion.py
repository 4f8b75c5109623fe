"""Cardiac motion (a smooth non-rigid warp around the heart) and respiration (translation)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .background import spine_line
from .geometry import smoothstep, unit


class Motion:
    """Cardiac (smooth non-rigid warp around the heart) and respiratory (translation) motion."""

    G = 16  # coarse grid for displacement fields; upsampled per frame

    def __init__(self, scene):
        rng, size, px, heart = scene.rng, scene.size, scene.px, scene.anatomy.heart
        self.size = size
        self.hr = rng.uniform(55, 105) / 60.0
        self.ph0 = rng.uniform()
        shell = scene.cam.project(heart.shell())
        self.hc = scene.cam.project((heart.base + 0.45 * heart.length * heart.axis)[None])[0]
        rad = 0.5 * float((shell.max(0) - shell.min(0)).max())
        g = (np.arange(self.G) + 0.5) * size / self.G - 0.5
        GX, GY = np.meshgrid(g, g)
        self.GX, self.GY = GX, GY

        def radial(center, sigma):
            dx, dy = GX - center[0], GY - center[1]
            w = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
            return np.stack([w * dx, w * dy], -1), np.stack([-w * dy, w * dx], -1), w

        self.contract, self.twist, self.w = radial(self.hc, rad * rng.uniform(0.7, 1.1))
        self.k = rng.uniform(0.04, 0.1)
        self.k_tw = rng.uniform(-0.05, 0.05)
        self.T = rng.normal(0, 1, 2) * rng.uniform(1, 4) * px
        field = np.zeros((self.G, self.G, 2))
        for _ in range(2):
            kx, ky = rng.normal(0, 2.5 / size, 2) * 2 * math.pi
            amp = rng.normal(0, 1, 2) * rng.uniform(0.5, 2.5) * px
            field += np.sin(kx * GX + ky * GY + rng.uniform(0, 6.3))[..., None] * amp
        self.field = field * self.w[..., None]
        if scene.lv_center is not None:
            self.lv_contract, _, _ = radial(scene.lv_center, rad * rng.uniform(0.9, 1.4))
            self.k_lv = rng.uniform(0.2, 0.35)
        _, d = spine_line(scene)
        self.resp_dir = unit(d + rng.normal(0, 0.3, 2))
        self.resp_amp = rng.uniform(0.5, 4.0) * px
        self.resp_f, self.resp_ph = 1 / rng.uniform(3, 6), rng.uniform(0, 6.3)
        self.drift = rng.normal(0, 0.7, 2) * px
        pan = unit(rng.normal(0, 1, 2)) * rng.uniform(10, 40) * px / scene.dur  # table panning, px/s
        self.pan = pan if rng.random() < 0.12 else np.zeros(2)
        base = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        self.base = np.stack(base, -1)

    def beat(self, t):
        ph = (t * self.hr + self.ph0 + 0.02 * math.sin(2 * math.pi * 0.15 * t)) % 1.0
        if ph < 0.3:
            return float(smoothstep(ph / 0.3))
        if ph < 0.55:
            return float(1 - smoothstep((ph - 0.3) / 0.25))
        return 0.0

    def body_shift(self, t):
        return (self.resp_dir * self.resp_amp * math.sin(2 * math.pi * self.resp_f * t + self.resp_ph)
                + self.drift * t + self.pan * t)

    def affine(self, t):
        v = self.body_shift(t)
        return np.float32([[1, 0, v[0]], [0, 1, v[1]]])

    def _map(self, disp):
        full = cv2.resize(disp.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return self.base + full

    def heart_map(self, t):
        c = self.beat(t)
        # remap samples the source: sampling further out makes the content contract
        disp = c * (self.k * self.contract + self.k_tw * self.twist - self.w[..., None] * self.T + self.field)
        return self._map(disp - 0.8 * self.body_shift(t))

    def lv_map(self, t):
        c = self.beat(t)
        return self._map(c * self.k_lv * self.lv_contract - 0.8 * self.body_shift(t))
