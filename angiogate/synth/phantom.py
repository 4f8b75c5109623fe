"""Render synthetic X-ray coronary angiogram cine clips (phantoms).

``render_clip(kind, seed, n_frames, frame_rate_hz, size)`` returns uint8 frames
(MONOCHROME2: dense = dark) of one kind from ``kinds.KINDS``.

How a clip is made (all randomised per seed, independently of the label where
the paper's criteria do not depend on it), module by module:

1. ``anatomy``: a heart ellipsoid in 3-D millimetres whose surface carries a
   left (LM -> LAD/LCx, diagonals, septals, marginals) or right (RCA, conus,
   acute marginals, PDA, PL) coronary tree, the aorta with its ostia, spine
   and sternum.
2. ``projection``: a C-arm view (LAO/RAO, cranial/caudal, slight perspective,
   roll, sometimes a mirror flip) maps it to pixels.
3. ``raster`` and ``scene``: tubes are rasterised once per clip through one
   distance transform per layer (nearest centre-line sample -> chord length
   through a cylinder), kept as sparse pixel lists with a contrast arrival
   time each (``Bolus``: concentration against seconds).
4. ``builders`` (one per kind) put trees, catheters (``devices``), the LV or
   aorta and foreign objects in the scene; ``background`` draws the body.
5. Per frame (here): contrast follows its bolus in seconds (so 7.5/15/30 fps
   all agree), the heart layer is warped by a smooth cardiac field and the
   body by respiration (``motion``); then ``display`` adds scatter, blur,
   quantum noise, edge enhancement, the grey mapping, the field shape,
   burned-in text and boxes, and lossy compression.

Everything is in attenuation units (line integrals) until the display LUT.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from .anatomy import Anatomy
from .background import background
from .builders import BUILDERS
from .display import Display
from .kinds import KINDS
from .motion import Motion
from .scene import Scene


def _rng(kind, seed):
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(kind.encode())]))


def render_clip_meta(kind: str, seed: int, n_frames: int, frame_rate_hz: float, size: int = 512):
    """Render a clip and return (frames uint8 (n, size, size), metadata dict)."""
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {sorted(KINDS)}")
    if n_frames < 1 or frame_rate_hz <= 0 or size < 16:
        raise ValueError("n_frames >= 1, frame_rate_hz > 0 and size >= 16 are required")
    rng = _rng(kind, seed)
    size, fps = int(size), float(frame_rate_hz)
    scene = Scene(rng, size, n_frames / fps, Anatomy(rng), k_iod=rng.uniform(0.2, 0.36))
    BUILDERS[kind](scene)
    bg, dia, heart_shadow = background(scene)
    motion = Motion(scene)
    display = Display(rng, size, scene.meta, n_frames, fps)
    display.window(bg + dia + heart_shadow + display.att)
    body = bg + dia + scene.body_static
    heart_base = heart_shadow + scene.heart_static
    heart_layers = [ly for ly in scene.layers if ly.motion != "lv"]
    lv_layers = [ly for ly in scene.layers if ly.motion == "lv"]
    pad = 32
    bank = rng.standard_normal((3, size + pad, size + pad), dtype=np.float32)
    frames = np.empty((n_frames, size, size), np.uint8)
    prev = None
    for i in range(n_frames):
        t = i / fps
        iod = np.zeros((size, size), np.float32)
        flat = iod.ravel()
        for ly in heart_layers:  # overlapping contrast layers combine by maximum (no dark junction blobs)
            flat[ly.idx] = np.maximum(flat[ly.idx], ly.att * ly.bolus(t - ly.arr))
        attenuation = cv2.remap(heart_base + iod, motion.heart_map(t), None, cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
        if lv_layers:
            lv = np.zeros((size, size), np.float32)
            for ly in lv_layers:
                lv.ravel()[ly.idx] += ly.att * ly.bolus(t - ly.arr)
            attenuation += cv2.remap(lv, motion.lv_map(t), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        attenuation += cv2.warpAffine(body, motion.affine(t), (size, size), borderMode=cv2.BORDER_REPLICATE)
        attenuation += display.att
        if i < display.ramp_n:  # exposure control settling on the first frames
            attenuation += display.ramp * (display.ramp_n - i) / display.ramp_n
        k, oy, ox = rng.integers(0, 3), rng.integers(0, pad), rng.integers(0, pad)
        noise = bank[k, oy:oy + size, ox:ox + size]
        std = cv2.exp(np.minimum(attenuation, 5.0) * np.float32(0.5))
        frames[i], prev = display.finish(attenuation, i, n_frames, prev, noise * std * np.float32(display.inv_sqrt_n0))
    if kind == "catheter_only" and n_frames > 4 and rng.random() < 0.35:
        # a run's pre-contrast frames played to the run's length (forwards, or to and fro)
        m = int(rng.integers(3, max(4, n_frames // 3)))
        i = np.arange(n_frames)
        order = i % m if rng.random() < 0.5 else m - 1 - np.abs(i % (2 * m - 2) - (m - 1))
        frames = frames[order]
        scene.meta["looped_frames"] = m
    meta = dict(scene.meta, kind=kind, seed=int(seed), heart_rate_bpm=round(motion.hr * 60, 1), size=size,
                frame_rate_hz=fps, n_frames=int(n_frames))
    meta.pop("coverage_target", None)
    return frames, meta


def render_clip(kind: str, seed: int, n_frames: int, frame_rate_hz: float, size: int = 512) -> np.ndarray:
    """Render one phantom clip: uint8 array (n_frames, size, size), dark = dense (MONOCHROME2)."""
    return render_clip_meta(kind, seed, n_frames, frame_rate_hz, size)[0]
