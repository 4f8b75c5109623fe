"""The body behind the vessels: soft tissue, heart shadow, lungs, spine, ribs, sternum, diaphragm."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .drawing import bezier, poly, superellipse
from .geometry import smoothstep, unit


def spine_line(scene):
    a, cam = scene.anatomy, scene.cam
    z = np.array([-400.0, 400.0])
    uv = cam.project(np.stack([np.full(2, a.spine[0]), np.full(2, a.spine[1]), z], 1))
    d = unit(uv[1] - uv[0])  # towards the head
    return uv[0], d


def background(scene):
    """Body attenuation (moves with breathing), diaphragm, and the heart shadow."""
    rng, size, cam, px = scene.rng, scene.size, scene.cam, scene.px
    Y, X = np.mgrid[:size, :size].astype(np.float32)
    bg = np.full((size, size), rng.uniform(1.6, 2.6), np.float32)
    g = rng.normal(0, 0.3, 2)
    bg += g[0] * (X / size - 0.5) + g[1] * (Y / size - 0.5)
    for _ in range(rng.integers(2, 6)):  # breast, fat, overlapping soft tissue
        cx, cy, sg = rng.uniform(-0.2, 1.2) * size, rng.uniform(-0.2, 1.2) * size, rng.uniform(0.1, 0.4) * size
        bg += rng.uniform(-0.3, 0.35) * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sg * sg))
    # heart silhouette from the projected shell
    hull = cv2.convexHull(cam.project(scene.anatomy.heart.shell()).astype(np.float32))
    heart_mask = np.zeros((size, size), np.float32)
    poly(heart_mask, hull.reshape(-1, 2), 1.0)
    heart = cv2.GaussianBlur(heart_mask, (0, 0), max(14 * px, 0.8)) * rng.uniform(0.12, 0.35)
    # spine: vertebral bodies with dense end plates, pedicles, disc spaces
    p0, d = spine_line(scene)
    n = np.array([-d[1], d[0]])
    p0 = p0 + d * ((np.array([size / 2, size / 2]) - p0) @ d)  # foot of the image centre on the axis
    ends = cam.project(np.array([[*scene.anatomy.spine, 0.0], [*scene.anatomy.spine, 27.0]]))
    step = max(float(np.linalg.norm(ends[1] - ends[0])), 12 * px)  # one vertebra + disc, foreshortened
    w = rng.uniform(38, 48) * px
    spine = np.zeros((size, size), np.float32)
    dens = rng.uniform(0.08, 0.25)
    ang = math.atan2(n[1], n[0])
    ped = rng.uniform(0.15, 0.45)
    for t in np.arange(-size, size, step) + rng.uniform(0, step):
        c = p0 + d * t
        hgt = 0.8 * step
        body = superellipse(c, w / 2, hgt / 2, ang, p=0.25)
        poly(spine, body, dens)
        poly(spine, body, dens * 0.25, thick=max(2.0 * px, 1))  # cortical rim, end plates
        for sgn in (-1, 1):  # pedicles: faint rings
            pc = c + sgn * n * w * 0.3 + d * hgt * 0.2
            poly(spine, superellipse(pc, 4 * px, 6 * px, ang, p=1.0), dens * ped, thick=max(1.5 * px, 1))
    spine = cv2.GaussianBlur(spine, (0, 0), max(2.5 * px, 0.5))
    bg += spine
    # mediastinum band and lungs
    dist_axis = np.abs((X - p0[0]) * d[1] - (Y - p0[1]) * d[0])
    med = smoothstep((dist_axis - rng.uniform(25, 40) * px) / (15 * px))
    # diaphragm domes below the heart
    low = scene.anatomy.heart.surf(0.0, 1.0, 0.0) - np.array([0, 0, rng.uniform(0, 25)])
    apex = cam.project(low[None])[0] + [rng.normal(0, 0.1) * size, rng.uniform(-0.05, 0.3) * size]
    if rng.random() < 0.3:  # diaphragm out of the field
        apex[1] += size
    dia = np.zeros((size, size), np.float32)
    curv = 1.0 / (rng.uniform(0.6, 1.6) * size)
    y_d = np.full(size, np.inf, np.float32)
    domes = [(0.0, 0.0), (rng.choice([-1, 1]) * rng.uniform(0.3, 0.6) * size, rng.uniform(-0.12, 0.05) * size)]
    for dx, dy in domes[: int(rng.integers(1, 3))]:
        y_d = np.minimum(y_d, apex[1] + dy + curv * (np.arange(size) - apex[0] - dx) ** 2)
    below = smoothstep((Y - y_d[None, :]) / (6 * px + 1))
    dia += below * rng.uniform(0.5, 1.2)
    lung = med * (1 - below) * (1 - cv2.GaussianBlur(heart_mask, (0, 0), 8 * px + 1))
    bg -= lung * rng.uniform(0.35, 0.9)
    # lung texture: vessels and alveolar mottling at a few scales, fine detail weak
    noise = rng.standard_normal((size, size)).astype(np.float32)
    tex = sum(w * cv2.GaussianBlur(noise, (0, 0), sg * px + 0.5) / (sg * px + 0.5)
              for w, sg in ((0.4, 2.5), (1.0, 6.0), (1.5, 14.0)))
    bg += lung * tex * (rng.uniform(0.01, 0.04) / (tex.std() + 1e-6))
    # myocardium and pericardial fat mottle the heart shadow at a coarse scale
    mott = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 10 * px + 0.5)
    bg += cv2.GaussianBlur(heart_mask, (0, 0), 6 * px + 0.5) * mott * (rng.uniform(0.005, 0.03) / (mott.std() + 1e-6))
    # ribs: posterior arcs from the spine, fainter anterior arcs
    ribs = np.zeros((size, size), np.float32)
    gap = rng.uniform(24, 34) * px
    for side in (-1, 1):
        for k in range(-6, 8):
            y0 = size * 0.5 + k * gap + rng.normal(0, 3 * px)
            base = p0 + d * ((np.array([0, y0]) - p0) @ d) + side * n * w * 0.6
            q1 = base + [side * rng.uniform(0.25, 0.4) * size, -rng.uniform(0.03, 0.1) * size]
            q2 = base + [side * rng.uniform(0.6, 0.9) * size, rng.uniform(0.08, 0.25) * size]
            arc = bezier(base, q1, q2)
            th = rng.uniform(8, 13) * px
            dn = rng.uniform(0.02, 0.08)
            poly(ribs, arc, dn, thick=th, closed=False)
            poly(ribs, arc, -0.5 * dn, thick=th * 0.5, closed=False)
            if rng.random() < 0.6:
                a0 = base + [side * rng.uniform(0.5, 0.8) * size, rng.uniform(-0.1, 0.1) * size]
                arc = bezier(a0, a0 + [-side * 0.2 * size, 0.05 * size],
                             a0 + [-side * rng.uniform(0.3, 0.5) * size, 0.18 * size])
                poly(ribs, arc, dn * 0.5, thick=th, closed=False)
    bg += cv2.GaussianBlur(ribs, (0, 0), max(3.0 * px, 0.5))
    # sternum
    st = cam.project(np.array([[*scene.anatomy.sternum, -150.0], [*scene.anatomy.sternum, 150.0]]))
    sternum = np.zeros((size, size), np.float32)
    poly(sternum, st, rng.uniform(0.03, 0.1), thick=rng.uniform(20, 30) * px, closed=False)
    bg += cv2.GaussianBlur(sternum, (0, 0), 4 * px + 0.5)
    return bg, dia, heart
