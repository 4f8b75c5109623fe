"""Tubes to pixels: one nearest-centre-line distance field per layer, chord length through a cylinder."""

from __future__ import annotations

import cv2
import numpy as np


def raster(polys, size):
    """Nearest-centre-line field for tubes given in pixels.

    polys: list of (uv (n,2), r_px (n,), val (n,)). Returns flat pixel indices
    within reach of a tube, their distance to the nearest centre-line sample,
    and that sample's radius and value.
    """
    xs, ys, rs, vs = [], [], [], []
    for uv, r, val in polys:
        if len(uv) < 2:
            continue
        cum = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(uv, axis=0).T))])
        q = np.linspace(0, cum[-1], max(int(cum[-1] / 0.4) + 2, 2))
        xs.append(np.interp(q, cum, uv[:, 0]))
        ys.append(np.interp(q, cum, uv[:, 1]))
        rs.append(np.interp(q, cum, r))
        vs.append(np.interp(q, cum, val))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    if not xs:
        return empty
    x, y, r, v = (np.concatenate(a) for a in (xs, ys, rs, vs))
    keep = (x > -0.5) & (x < size - 0.5) & (y > -0.5) & (y < size - 0.5)
    if not keep.any():
        return empty
    x, y, r, v = x[keep], y[keep], r[keep], v[keep]
    ids = np.full(size * size, -1, np.int64)
    ids[np.rint(y).astype(np.int64) * size + np.rint(x).astype(np.int64)] = np.arange(len(x))
    zero = ids >= 0
    src = np.where(zero, 0, 255).astype(np.uint8).reshape(size, size)
    dist, lab = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    near = ids[np.flatnonzero(zero)][lab.ravel() - 1]
    band = np.flatnonzero(dist.ravel() <= r[near] + 1.5)
    near = near[band]
    d = np.hypot(band % size - x[near], band // size - y[near])
    ok = d < np.maximum(r[near], 0.75)
    band, near, d = band[ok], near[ok], d[ok]
    return band, d.astype(np.float32), r[near].astype(np.float32), v[near].astype(np.float32)


def chord(d, r):
    """Path length through a cylinder of radius r at distance d (px); keeps mass for thin tubes."""
    re = np.maximum(r, 0.75)
    return 2 * np.sqrt(np.maximum(re * re - d * d, 0)) * (r / re) ** 2
