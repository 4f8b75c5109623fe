"""What a clip holds before display: contrast layers with arrival times, static metal, the camera.

Everything is in attenuation units (line integrals); ``Bolus`` says how contrast
concentration follows time since arrival, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy
from .geometry import smoothstep
from .projection import Camera
from .raster import chord, raster


@dataclass
class Bolus:
    """Contrast concentration (0..peak) against time since arrival, seconds."""

    starts: tuple
    dur: float = 2.5
    rise: float = 0.25
    wash: float = 1.0
    peak: float = 1.0

    def __call__(self, tau):
        out = np.zeros_like(tau)
        for t0 in self.starts:
            x = tau - t0
            g = smoothstep(x / self.rise) * np.exp(-np.maximum(x - self.dur, 0) / self.wash)
            out = np.maximum(out, g)
        return self.peak * out


@dataclass
class Layer:
    """Sparse contrast-filled pixels: attenuation at full concentration and arrival time."""

    idx: np.ndarray
    att: np.ndarray
    arr: np.ndarray
    bolus: Bolus
    motion: str = "heart"  # heart | lv | body


@dataclass
class Scene:
    """One clip being built: its random stream, size (px), duration (s), anatomy, camera and contents.

    ``layers`` fill with contrast over time; ``heart_static`` and ``body_static`` are attenuation
    images that move with the heart or with breathing only.
    """

    rng: np.random.Generator
    size: int
    dur: float
    anatomy: Anatomy
    cam: Camera = None
    k_iod: float = 0.15  # attenuation per mm of full-strength contrast
    layers: list = field(default_factory=list)
    heart_static: np.ndarray = None  # moves with the heart (catheter walls, leads)
    body_static: np.ndarray = None  # moves with breathing only (devices, clips on the chest)
    lv_center: np.ndarray = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.heart_static = np.zeros((self.size, self.size), np.float32)
        self.body_static = np.zeros((self.size, self.size), np.float32)

    @property
    def px(self):
        return self.cam.ppm  # pixels per mm at the isocentre

    def tubes(self, vessels):
        return [(self.cam.project(v.pts), v.r * self.px, v.s) for v in vessels if len(v.r) >= 2]

    def add_contrast(self, vessels, bolus, per_mm_s, motion="heart", max_s=None):
        """Contrast-filled tubes; arrival = path length / speed (s).

        Odd and even branching generations get separate distance fields (a
        branch starts inside its parent, and one nearest-centre-line field
        would notch the parent there); frames combine layers by maximum.
        """
        out = []
        for parity in (0, 1):
            group = [v for v in vessels if v.depth % 2 == parity]
            idx, d, r, s = raster(self.tubes(group), self.size)
            att = chord(d, r) / self.px * self.k_iod
            if max_s is not None:  # only the first max_s mm fill (reflux, aortic puff)
                att = att * (1 - smoothstep((s - max_s) / 8.0))
            keep = att > 1e-4
            if keep.any():
                out.append(Layer(idx[keep], att[keep].astype(np.float32), (s[keep] / per_mm_s).astype(np.float32),
                                 bolus, motion))
        self.layers += out
        return out

    def add_metal(self, vessels, per_mm, target="heart", r_in_frac=0.0, lumen=None):
        """Static attenuating tubes (catheter walls, wires, leads); optional contrast lumen."""
        idx, d, r, s = raster(self.tubes(vessels), self.size)
        ch = chord(d, r)
        inner = chord(d, r * r_in_frac) if r_in_frac > 0 else 0
        img = self.heart_static if target == "heart" else self.body_static
        img.ravel()[idx] += ((ch - inner) / self.px * per_mm).astype(np.float32)
        if lumen is not None and r_in_frac > 0:
            bolus, speed = lumen
            att = (inner / self.px * self.k_iod).astype(np.float32)
            keep = att > 1e-4
            self.layers.append(Layer(idx[keep], att[keep], (-s[keep] / speed).astype(np.float32), bolus, "heart"))
