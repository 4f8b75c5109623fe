"""Render synthetic X-ray coronary angiogram cine clips (phantoms).

``render_clip(kind, seed, n_frames, frame_rate_hz, size)`` returns uint8 frames
(MONOCHROME2: dense = dark) of one kind from ``kinds.KINDS``.

How a clip is made (all randomised per seed, independently of the label where
the paper's criteria do not depend on it):

1. Anatomy in 3-D millimetres: a heart ellipsoid whose surface carries a left
   (LM -> LAD/LCx, diagonals, septals, marginals) or right (RCA, conus, acute
   marginals, PDA, PL) coronary tree, the aorta with its ostia, the LV cavity,
   catheters, spine and sternum.
2. A C-arm projection (LAO/RAO, cranial/caudal, slight perspective, roll,
   sometimes a mirror flip) maps it to pixels.
3. Tubes are rasterised once per clip through one distance transform per
   layer (nearest centre-line sample -> chord length through a cylinder), kept
   as sparse pixel lists with a contrast arrival time each.
4. Per frame, contrast follows a bolus curve in seconds (so 7.5/15/30 fps all
   agree), the heart layer is warped by a smooth cardiac field (~1 Hz) and the
   body by respiration, then quantum noise, blur, edge enhancement, a display
   LUT, collimation and burned-in text are applied.

Everything is in attenuation units (line integrals) until the display LUT.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from .kinds import KINDS

# ----------------------------------------------------------------------------- helpers


def _unit(v):
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _smooth(a, sigma):
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


def _spline(ctrl, n, sigma=None):
    """Smooth 3-D curve through control points, resampled to n points."""
    ctrl = np.asarray(ctrl, float)
    seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1) + 1e-9
    t = np.concatenate([[0], np.cumsum(seg)])
    q = np.linspace(0, t[-1], n)
    pts = np.stack([np.interp(q, t, ctrl[:, j]) for j in range(ctrl.shape[1])], 1)
    return _smooth(pts, sigma if sigma is not None else n / 25)


def _arclen(pts):
    return np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


# ----------------------------------------------------------------------------- 3-D anatomy


@dataclass
class Vessel:
    """A tube centre line in world mm: radius r and path length s from its inflow."""

    pts: np.ndarray
    r: np.ndarray
    s: np.ndarray
    th: np.ndarray | None = None  # surface coordinates, for branching
    hf: np.ndarray | None = None
    off: np.ndarray | None = None
    parent: int = -1
    at: int = 0
    depth: int = 0  # branching generation; odd and even generations are rasterised apart
    name: str = ""


class Heart:
    """Ellipsoidal heart in patient mm (x left, y anterior, z superior).

    Surface point (th, hf, off): th = angle about the long axis from the
    anterior interventricular groove towards the patient's left; hf = fraction
    of the long axis from the base (AV groove, 0) to the apex (1).
    """

    def __init__(self, rng):
        self.R = rng.uniform(40, 52)
        self.L = rng.uniform(85, 105)
        az, el = math.radians(rng.uniform(35, 60)), math.radians(rng.uniform(25, 45))
        self.u = _unit([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
        a = np.array([0.0, 1.0, 0.0])
        self.e_ant = _unit(a - a.dot(self.u) * self.u)
        e_left = np.cross(self.u, self.e_ant)
        self.e_left = e_left if e_left[0] > 0 else -e_left
        self.B = np.zeros(3)

    def rho(self, hf):
        hf = np.asarray(hf, float)
        body = np.sqrt(np.clip(1 - np.clip(hf, 0, None) ** 2, 0, 1)) * (0.78 + 0.22 * _smoothstep(hf / 0.35))
        atria = 0.78 * np.clip(1 + 0.9 * hf, 0.2, 1)  # above the AV groove
        return self.R * np.where(hf >= 0, body, atria)

    def surf(self, th, hf, off=0.0):
        th, hf, off = np.broadcast_arrays(np.asarray(th, float), np.asarray(hf, float), np.asarray(off, float))
        rad = (self.rho(hf) + off)[..., None]
        ring = np.cos(th)[..., None] * self.e_ant + np.sin(th)[..., None] * self.e_left
        return self.B + (hf * self.L)[..., None] * self.u + rad * ring

    def shell(self):
        th, hf = np.meshgrid(np.linspace(-math.pi, math.pi, 24), np.linspace(-0.35, 1.0, 14))
        return self.surf(th, hf, 4.0).reshape(-1, 3)


def _surface_vessel(H, rng, knots, r0, r1, n=64, wig=0.05):
    k = np.asarray(knots, float)
    seg = np.hypot(np.diff(k[:, 0]) * H.R, np.diff(k[:, 1]) * H.L) + 1e-6
    sk = np.concatenate([[0], np.cumsum(seg)]) / seg.sum()
    s = np.linspace(0, 1, n)
    th, hf, off = (np.interp(s, sk, k[:, j]) for j in range(3))
    env = _smoothstep(s * 5)  # the start stays on its parent
    for _ in range(3):  # tortuosity
        f, ph = rng.uniform(1.5, 7), rng.uniform(0, 2 * math.pi)
        amp = wig * rng.uniform(0.3, 1.0) * 3 / f
        th = th + amp * np.sin(2 * math.pi * f * s + ph) * env
        hf = hf + amp * (H.R / H.L) * np.cos(2 * math.pi * f * s + ph) * env
    th, hf, off = _smooth(th, 2.5), _smooth(hf, 2.5), _smooth(off, 2.5)
    pts = H.surf(th, hf, off)
    r = r0 * (r1 / r0) ** (s ** rng.uniform(0.7, 1.3))
    return Vessel(pts, r, _arclen(pts), th, hf, off)


def _branch(H, rng, tree, pi, frac, dth, dhf, r0, r1, doff=0.0, n=48, wig=0.05, name=""):
    p = tree[pi]
    i = int(np.clip(round(frac * (len(p.r) - 1)), 1, len(p.r) - 1))
    a = (p.th[i], p.hf[i], p.off[i])
    m1, m2 = rng.uniform(0.3, 0.45), rng.uniform(0.55, 0.75)
    bend = rng.uniform(-0.15, 0.15)
    knots = [a, (a[0] + dth * m1 + bend * abs(dhf), a[1] + dhf * m1 * 1.1, a[2] + doff * 0.5),
             (a[0] + dth * m2, a[1] + dhf * m2, a[2] + doff * 0.9), (a[0] + dth, a[1] + dhf, a[2] + doff)]
    v = _surface_vessel(H, rng, knots, min(r0, 0.85 * p.r[i]), r1, n, wig)
    v.parent, v.at, v.depth, v.name = pi, i, p.depth + 1, name
    v.s = v.s + p.s[i]
    tree.append(v)
    return len(tree) - 1


def _stenose(rng, v):
    c, w, sev = rng.uniform(0.15, 0.8), rng.uniform(0.02, 0.06), rng.uniform(0.3, 0.7)
    x = np.linspace(0, 1, len(v.r))
    v.r = v.r * (1 - sev * np.exp(-0.5 * ((x - c) / w) ** 2))


class Anatomy:
    """Heart, aortic root, ostia, aorta, spine and sternum of one phantom patient."""

    def __init__(self, rng):
        self.H = H = Heart(rng)
        self.r_ao = rng.uniform(13, 17)
        self.th_b, self.hf_b = rng.uniform(0.3, 0.6), rng.uniform(-0.04, 0.04)
        self.bif = H.surf(self.th_b, self.hf_b, 3.0)
        guess = H.B + np.array([-12.0, 6.0, 22.0]) - 0.1 * H.L * H.u
        self.lm_len = rng.uniform(7, 15)
        self.ao0 = self.bif + (self.r_ao + self.lm_len) * _unit(guess - self.bif)
        self.lm_ost = self.ao0 + self.r_ao * _unit(self.bif - self.ao0)
        self.rca_start = (rng.uniform(-0.5, -0.3), rng.uniform(-0.03, 0.04))
        p = H.surf(*self.rca_start, 3.0)
        self.rca_ost = self.ao0 + self.r_ao * _unit(p - self.ao0)
        a0 = self.ao0
        z = a0[2]
        self.aorta_ctrl = np.array([
            a0 - 4 * H.u, a0 + [-6, 9, 35], [a0[0] + 2, a0[1] - 8, z + 72], [22, -40, z + 85],
            [30, -68, z + 50], [31, -75, -40], [32, -78, -320]])
        self.spine = np.array([rng.uniform(-12, 8), rng.uniform(-115, -90)])  # x, y of the body axis
        self.sternum = np.array([rng.uniform(-8, 8), rng.uniform(70, 95)])
        self.lv_c = H.B + 0.48 * H.L * H.u + 0.22 * H.R * H.e_left - 0.12 * H.R * H.e_ant

    def aorta(self, n=160):
        pts = _spline(self.aorta_ctrl, n, n / 30)
        s = _arclen(pts)
        r = self.r_ao * (1 + 0.22 * np.exp(-0.5 * ((s - 8) / 8) ** 2)) * np.interp(s, [0, 120, 250], [1, 0.95, 0.8])
        return Vessel(pts, r, s, name="aorta")

    # ---- coronary trees ------------------------------------------------------

    def left_tree(self, rng):
        H = self.H
        lm_r = rng.uniform(2.0, 2.6)
        mid = 0.5 * (self.lm_ost + self.bif) + rng.normal(0, 1.5, 3)
        pts = _spline([self.lm_ost, mid, self.bif], 24, 2)
        n = len(pts)
        lm = Vessel(pts, np.full(n, lm_r), _arclen(pts), np.full(n, self.th_b), np.full(n, self.hf_b),
                    np.full(n, 3.0), name="LM")
        tree = [lm]
        tb, hb = self.th_b, self.hf_b
        lad = _surface_vessel(H, rng, [(tb, hb, 3), (rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.2), 2.5),
                                       (rng.uniform(-0.1, 0.1), rng.uniform(0.45, 0.6), 2.0),
                                       (rng.uniform(-0.2, 0.05), rng.uniform(0.92, 1.02), 1.5)],
                              lm_r * rng.uniform(0.75, 0.9), rng.uniform(0.45, 0.7), 90, 0.04)
        dominant_left = rng.random() < 0.12
        th_end = rng.uniform(2.9, 3.2) if dominant_left else rng.uniform(1.6, 2.6)
        lcx = _surface_vessel(H, rng, [(tb, hb, 3), (tb + rng.uniform(0.35, 0.6), rng.uniform(-0.02, 0.06), 3),
                                       (0.5 * (tb + th_end), rng.uniform(0.0, 0.1), 3),
                                       (th_end, rng.uniform(0.02, 0.14), 3)],
                              lm_r * rng.uniform(0.65, 0.85), rng.uniform(0.5, 0.8), 80, 0.03)
        for v, nm in ((lad, "LAD"), (lcx, "LCx")):
            v.parent, v.at, v.depth, v.name = 0, n - 1, 1, nm
            v.s = v.s + lm.s[-1]
            tree.append(v)
        for f in np.sort(rng.uniform(0.1, 0.6, rng.integers(2, 5))):  # diagonals
            d = _branch(H, rng, tree, 1, f, rng.uniform(0.5, 1.3), rng.uniform(0.25, 0.5),
                        rng.uniform(0.7, 1.2), rng.uniform(0.35, 0.5), name="D")
            if rng.random() < 0.5:
                _branch(H, rng, tree, d, rng.uniform(0.3, 0.7), rng.uniform(-0.3, 0.5), rng.uniform(0.1, 0.25),
                        0.6, 0.3, n=24, name="twig")
        for f in rng.uniform(0.12, 0.6, rng.integers(2, 5)):  # septals dive into the septum
            _branch(H, rng, tree, 1, f, rng.uniform(-0.35, -0.05), rng.uniform(0.06, 0.2),
                    rng.uniform(0.4, 0.65), 0.25, doff=-rng.uniform(10, 22), n=24, wig=0.02, name="S")
        for f in np.sort(rng.uniform(0.2, 0.85, rng.integers(2, 5))):  # obtuse marginals
            o = _branch(H, rng, tree, 2, f, rng.uniform(-0.3, 0.3), rng.uniform(0.4, 0.75),
                        rng.uniform(0.7, 1.2), rng.uniform(0.35, 0.5), name="OM")
            if rng.random() < 0.4:
                _branch(H, rng, tree, o, rng.uniform(0.3, 0.7), rng.uniform(-0.4, 0.4), rng.uniform(0.1, 0.3),
                        0.6, 0.3, n=24, name="twig")
        if rng.random() < 0.25:  # ramus intermedius
            _branch(H, rng, tree, 0, 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.7),
                    rng.uniform(0.9, 1.3), 0.45, name="RI")
        if dominant_left:
            _branch(H, rng, tree, 2, 1.0, rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.7), 1.1, 0.45, name="PDA")
        return self._finish(rng, tree)

    def right_tree(self, rng):
        H = self.H
        r0 = rng.uniform(1.5, 2.0)
        non_dominant = rng.random() < 0.1
        th_end = rng.uniform(-1.9, -1.4) if non_dominant else -math.pi + rng.uniform(-0.1, 0.15)
        ts, hs = self.rca_start
        rca = _surface_vessel(H, rng, [(ts, hs, 3), (-math.pi / 2 + rng.uniform(-0.25, 0.2), rng.uniform(0.03, 0.14), 3),
                                       (th_end, rng.uniform(0.0, 0.1), 3)], r0, r0 * rng.uniform(0.5, 0.7), 100, 0.04)
        lead = _spline([self.rca_ost, 0.5 * (self.rca_ost + rca.pts[0]) + rng.normal(0, 2, 3), rca.pts[0]], 12, 1)
        m = len(lead) - 1
        rca.pts = _smooth(np.concatenate([lead[:-1], rca.pts]), 2.0)
        rca.r = np.concatenate([np.full(m, r0), rca.r])
        rca.th = np.concatenate([np.full(m, ts), rca.th])
        rca.hf = np.concatenate([np.full(m, hs), rca.hf])
        rca.off = np.concatenate([np.full(m, 3.0), rca.off])
        rca.s, rca.name = _arclen(rca.pts), "RCA"
        tree = [rca]
        if not non_dominant:
            _branch(H, rng, tree, 0, 1.0, rng.uniform(-0.15, 0.15), rng.uniform(0.5, 0.75),
                    rng.uniform(0.9, 1.3), 0.45, name="PDA")
            _branch(H, rng, tree, 0, 1.0, -rng.uniform(0.35, 0.8), rng.uniform(0.05, 0.25),
                    rng.uniform(0.8, 1.1), 0.4, name="PL")
        for f in rng.uniform(0.25, 0.8, rng.integers(2, 5)):  # acute marginals run over the RV
            _branch(H, rng, tree, 0, f, rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.6),
                    rng.uniform(0.6, 1.0), 0.35, name="AM")
        if rng.random() < 0.7:
            _branch(H, rng, tree, 0, rng.uniform(0.08, 0.15), rng.uniform(0.4, 0.8), rng.uniform(0.05, 0.2),
                    rng.uniform(0.5, 0.8), 0.3, n=30, name="conus")
        if rng.random() < 0.5:
            _branch(H, rng, tree, 0, rng.uniform(0.08, 0.2), -rng.uniform(0.1, 0.5), -rng.uniform(0.2, 0.35),
                    rng.uniform(0.4, 0.6), 0.3, n=30, name="SAN")
        return self._finish(rng, tree)

    def _finish(self, rng, tree):
        # Real runs show dense trees: every named branch carries side branches, and the larger
        # twigs carry twigs of their own (real runs: ~190 skeleton branch points at 512 px).
        n_named = len(tree)
        for pi in range(n_named):
            v = tree[pi]
            if v.name in ("LM", "SAN", "conus") or v.r.mean() < 0.45:
                continue
            for _ in range(int(rng.integers(2, 6))):
                t = _branch(self.H, rng, tree, pi, rng.uniform(0.2, 0.95), rng.uniform(-0.5, 0.5),
                            rng.uniform(0.06, 0.25), rng.uniform(0.5, 0.8), 0.3, n=24, name="twig")
                if rng.random() < 0.45:
                    _branch(self.H, rng, tree, t, rng.uniform(0.3, 0.8), rng.uniform(-0.35, 0.35),
                            rng.uniform(0.04, 0.14), 0.45, 0.25, n=16, name="twig")
        # calibre: vessel sizes vary between patients (real widths ~7 px median, 13 px p90 at 512)
        cal = rng.uniform(1.1, 1.55)
        for v in tree:
            v.r = v.r * cal
        for _ in range(rng.integers(0, 3)):
            _stenose(rng, tree[rng.integers(0, len(tree))])
        return tree


def _subtree(tree, root):
    """Indices of vessel ``root`` and all its descendants."""
    out, todo = [], [root]
    while todo:
        i = todo.pop()
        out.append(i)
        todo += [j for j, v in enumerate(tree) if v.parent == i]
    return out


def _occlude(rng, tree):
    """A chronic total occlusion: cut one vessel (and what hangs off it)."""
    i = int(rng.integers(1, len(tree)))
    v = tree[i]
    cut = int(len(v.r) * rng.uniform(0.3, 0.7))
    for f in ("pts", "r", "s", "th", "hf", "off"):
        setattr(v, f, getattr(v, f)[:cut])
    drop = {j for j in range(len(tree)) if tree[j].parent == i and tree[j].at >= cut}
    for j in list(drop):
        drop |= set(_subtree(tree, j))
    for j in drop:
        tree[j].r = tree[j].r[:0]
        tree[j].pts, tree[j].s = tree[j].pts[:0], tree[j].s[:0]


# ----------------------------------------------------------------------------- projection


class Camera:
    """C-arm view: primary angle alpha (LAO +), secondary beta (CRA +), then pixels."""

    def __init__(self, rng, alpha, beta, size, ppm, center_mm):
        self.alpha, self.beta = alpha, beta
        a, b = math.radians(alpha), math.radians(beta)
        self.v = np.array([math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b)])
        self.right = np.array([math.cos(a), -math.sin(a), 0.0])
        self.down = np.cross(self.v, self.right)
        self.S, self.ppm, self.C = size, ppm, np.asarray(center_mm, float)
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
        return np.stack([x * self.ppm + self.S / 2 + self.shift[0], y * self.ppm + self.S / 2 + self.shift[1]], -1)

    def fit(self, pts, extent, ppm_lo, ppm_hi):
        """Zoom so the points span ``extent`` of the field (within a plausible zoom), then centre them."""
        uv = self.project(pts)
        ext = float((uv.max(0) - uv.min(0)).max()) + 1e-6
        self.ppm = float(np.clip(self.ppm * extent * self.S / ext, ppm_lo, ppm_hi))
        uv = self.project(pts)
        self.shift += self.S / 2 + self.jitter - 0.5 * (uv.min(0) + uv.max(0))


_LEFT_VIEWS = ((-30, -25), (-30, 30), (0, 35), (0, -30), (45, 25), (45, -25), (55, 0), (90, 0), (-10, 0))
_RIGHT_VIEWS = ((40, 0), (30, 20), (-30, 0), (0, 25), (60, 0), (90, 0))


def _coronary_view(rng, side):
    if rng.random() < 0.3:
        return rng.uniform(-50, 90), rng.uniform(-40, 40)
    views = _LEFT_VIEWS if side == "left" else _RIGHT_VIEWS
    a, b = views[rng.integers(len(views))]
    return a + rng.uniform(-12, 12), b + rng.uniform(-10, 10)


# ----------------------------------------------------------------------------- rasterisation


def _raster(polys, S):
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
    keep = (x > -0.5) & (x < S - 0.5) & (y > -0.5) & (y < S - 0.5)
    if not keep.any():
        return empty
    x, y, r, v = x[keep], y[keep], r[keep], v[keep]
    ids = np.full(S * S, -1, np.int64)
    ids[np.rint(y).astype(np.int64) * S + np.rint(x).astype(np.int64)] = np.arange(len(x))
    zero = ids >= 0
    src = np.where(zero, 0, 255).astype(np.uint8).reshape(S, S)
    dist, lab = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    near = ids[np.flatnonzero(zero)][lab.ravel() - 1]
    band = np.flatnonzero(dist.ravel() <= r[near] + 1.5)
    near = near[band]
    d = np.hypot(band % S - x[near], band // S - y[near])
    ok = d < np.maximum(r[near], 0.75)
    band, near, d = band[ok], near[ok], d[ok]
    return band, d.astype(np.float32), r[near].astype(np.float32), v[near].astype(np.float32)


def _chord(d, r):
    """Path length through a cylinder of radius r at distance d (px); keeps mass for thin tubes."""
    re = np.maximum(r, 0.75)
    return 2 * np.sqrt(np.maximum(re * re - d * d, 0)) * (r / re) ** 2


# ----------------------------------------------------------------------------- contrast timing


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
            g = _smoothstep(x / self.rise) * np.exp(-np.maximum(x - self.dur, 0) / self.wash)
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


# ----------------------------------------------------------------------------- scene


@dataclass
class Scene:
    rng: np.random.Generator
    S: int
    dur: float
    ana: Anatomy
    cam: Camera = None
    k_iod: float = 0.15  # attenuation per mm of full-strength contrast
    layers: list = field(default_factory=list)
    heart_static: np.ndarray = None  # moves with the heart (catheter walls, leads)
    body_static: np.ndarray = None  # moves with breathing only (devices, clips on the chest)
    lv_center: np.ndarray = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.heart_static = np.zeros((self.S, self.S), np.float32)
        self.body_static = np.zeros((self.S, self.S), np.float32)

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
            idx, d, r, s = _raster(self.tubes(group), self.S)
            att = _chord(d, r) / self.px * self.k_iod
            if max_s is not None:  # only the first max_s mm fill (reflux, aortic puff)
                att = att * (1 - _smoothstep((s - max_s) / 8.0))
            keep = att > 1e-4
            if keep.any():
                out.append(Layer(idx[keep], att[keep].astype(np.float32), (s[keep] / per_mm_s).astype(np.float32),
                                 bolus, motion))
        self.layers += out
        return out

    def add_metal(self, vessels, per_mm, target="heart", r_in_frac=0.0, lumen=None):
        """Static attenuating tubes (catheter walls, wires, leads); optional contrast lumen."""
        idx, d, r, s = _raster(self.tubes(vessels), self.S)
        ch = _chord(d, r)
        inner = _chord(d, r * r_in_frac) if r_in_frac > 0 else 0
        img = self.heart_static if target == "heart" else self.body_static
        img.ravel()[idx] += ((ch - inner) / self.px * per_mm).astype(np.float32)
        if lumen is not None and r_in_frac > 0:
            bolus, speed = lumen
            att = (inner / self.px * self.k_iod).astype(np.float32)
            keep = att > 1e-4
            self.layers.append(Layer(idx[keep], att[keep], (-s[keep] / speed).astype(np.float32), bolus, "heart"))


# ----------------------------------------------------------------------------- timing per kind


def _timing(rng, dur):
    """Injection start, filling transit time (s) for a normal run; scaled for short clips."""
    t_inj = min(rng.uniform(0.8, 2.2), rng.uniform(0.12, 0.3) * dur)
    transit = min(rng.uniform(0.6, 1.6), rng.uniform(0.3, 0.45) * dur)
    return t_inj, transit


def _normal_bolus(rng, t_inj, dur):
    return Bolus((t_inj,), dur=min(rng.uniform(1.8, 3.8), max(0.6 * dur, 0.5)), rise=rng.uniform(0.15, 0.35),
                 wash=rng.uniform(0.5, 1.5), peak=rng.uniform(0.75, 1.25))


# ----------------------------------------------------------------------------- catheters


def _catheter(sc, target, into, route="femoral", pigtail=False, via=()):
    """Catheter centre line from outside the field to ``target`` (tip pointing ``into``).

    Femoral catheters climb the descending aorta and come over the arch; radial
    ones come down from the right subclavian. The tube is returned as a Vessel
    whose s is the distance from the tip.
    """
    rng, a = sc.rng, sc.ana
    c = a.aorta_ctrl
    z = a.ao0[2]
    jit = lambda p: np.asarray(p, float) + rng.normal(0, 0.35 * a.r_ao, 3)  # noqa: E731
    if route == "femoral":
        path = [c[6], c[5], jit(c[4]), jit(c[3]), jit(c[2]) + [0, 0, 0.4 * a.r_ao], jit(c[1])]
    elif route == "arch":  # stays in the arch (to the left subclavian)
        path = [c[6], c[5], jit(c[4]), jit(c[3])]
    else:
        path = [[-95, 20, z + 175], [-42, 8, z + 115], jit(c[2]), jit(c[1])]
    path += [np.asarray(p, float) for p in via]
    target = np.asarray(target, float)
    into = _unit(into)
    path += [0.5 * (path[-1] + target) + rng.normal(0, 4, 3), target - 8 * into, target, target + 2 * into]
    pts = _spline(path, 260, 9.0)  # catheters bend smoothly
    if pigtail:  # a loop of ~8 mm radius at the tip
        e1 = _unit(np.cross(into, rng.normal(size=3)))
        e2 = np.cross(into, e1)
        rad = rng.uniform(6, 9)
        ang = np.linspace(0, 2 * math.pi * rng.uniform(0.8, 1.1), 40)
        ctr = pts[-1] + rad * e1
        loop = ctr - rad * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2) + \
            (ang / (2 * math.pi))[:, None] * into * 3
        pts = np.concatenate([pts, loop[1:]])
    s = _arclen(pts)
    r = np.full(len(pts), rng.choice([0.83, 1.0, 1.17]))  # 5/6/7 F
    return Vessel(pts, r, s[-1] - s, name="catheter")


def _add_catheter(sc, cath, lumen_bolus):
    wall = sc.rng.uniform(0.5, 1.1)  # braid + plastic, per mm of wall
    sc.add_metal([cath], wall, "heart", r_in_frac=0.72,
                 lumen=(lumen_bolus, sc.rng.uniform(400, 900)))


def _wire(sc, vessels, per_mm=3.0, r=0.18):
    """A thin radio-opaque wire along the given centre lines (guide wire, pacing lead)."""
    pts = np.concatenate([v.pts for v in vessels])
    w = Vessel(pts, np.full(len(pts), r), _arclen(pts))
    sc.add_metal([w], per_mm, "heart")


# ----------------------------------------------------------------------------- drawing helpers


def _stamp(img, val, draw):
    """Additive anti-aliased 2-D drawing: draw(canvas) paints 255 on a uint8 canvas."""
    tmp = np.zeros(img.shape, np.uint8)
    draw(tmp)
    img += tmp.astype(np.float32) * np.float32(val / 255.0)


def _fx(p):
    return np.round(np.asarray(p) * 16).astype(np.int32)  # cv2 shift=4 sub-pixel coordinates


def _poly(img, pts, val, thick=0, closed=True):
    pts = _fx(pts).reshape(-1, 1, 2)
    if thick <= 0:
        _stamp(img, val, lambda c: cv2.fillPoly(c, [pts], 255, cv2.LINE_AA, 4))
    else:
        _stamp(img, val, lambda c: cv2.polylines(c, [pts], closed, 255, max(int(round(thick)), 1), cv2.LINE_AA, 4))


def _superellipse(c, a, b, ang, p=0.3, n=72):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** p
    y = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** p
    ca, sa = math.cos(ang), math.sin(ang)
    return np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], 1)


def _bezier(p0, p1, p2, n=32):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t * t * np.asarray(p2)


# ----------------------------------------------------------------------------- background


def _spine_line(sc):
    a, cam = sc.ana, sc.cam
    z = np.array([-400.0, 400.0])
    uv = cam.project(np.stack([np.full(2, a.spine[0]), np.full(2, a.spine[1]), z], 1))
    d = _unit(uv[1] - uv[0])  # towards the head
    return uv[0], d


def _background(sc):
    """Body attenuation (moves with breathing), diaphragm, and the heart shadow."""
    rng, S, cam, px = sc.rng, sc.S, sc.cam, sc.px
    Y, X = np.mgrid[:S, :S].astype(np.float32)
    bg = np.full((S, S), rng.uniform(1.6, 2.6), np.float32)
    g = rng.normal(0, 0.3, 2)
    bg += g[0] * (X / S - 0.5) + g[1] * (Y / S - 0.5)
    for _ in range(rng.integers(2, 6)):  # breast, fat, overlapping soft tissue
        cx, cy, sg = rng.uniform(-0.2, 1.2) * S, rng.uniform(-0.2, 1.2) * S, rng.uniform(0.1, 0.4) * S
        bg += rng.uniform(-0.3, 0.35) * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sg * sg))
    # heart silhouette from the projected shell
    hull = cv2.convexHull(cam.project(sc.ana.H.shell()).astype(np.float32))
    heart_mask = np.zeros((S, S), np.float32)
    _poly(heart_mask, hull.reshape(-1, 2), 1.0)
    heart = cv2.GaussianBlur(heart_mask, (0, 0), max(14 * px, 0.8)) * rng.uniform(0.12, 0.35)
    # spine: vertebral bodies with dense end plates, pedicles, disc spaces
    p0, d = _spine_line(sc)
    n = np.array([-d[1], d[0]])
    p0 = p0 + d * ((np.array([S / 2, S / 2]) - p0) @ d)  # foot of the image centre on the axis
    ends = cam.project(np.array([[*sc.ana.spine, 0.0], [*sc.ana.spine, 27.0]]))
    step = max(float(np.linalg.norm(ends[1] - ends[0])), 12 * px)  # one vertebra + disc, foreshortened
    w = rng.uniform(38, 48) * px
    spine = np.zeros((S, S), np.float32)
    dens = rng.uniform(0.08, 0.25)
    ang = math.atan2(n[1], n[0])
    ped = rng.uniform(0.15, 0.45)
    for t in np.arange(-S, S, step) + rng.uniform(0, step):
        c = p0 + d * t
        hgt = 0.8 * step
        body = _superellipse(c, w / 2, hgt / 2, ang, p=0.25)
        _poly(spine, body, dens)
        _poly(spine, body, dens * 0.25, thick=max(2.0 * px, 1))  # cortical rim, end plates
        for sgn in (-1, 1):  # pedicles: faint rings
            pc = c + sgn * n * w * 0.3 + d * hgt * 0.2
            _poly(spine, _superellipse(pc, 4 * px, 6 * px, ang, p=1.0), dens * ped, thick=max(1.5 * px, 1))
    spine = cv2.GaussianBlur(spine, (0, 0), max(2.5 * px, 0.5))
    bg += spine
    # mediastinum band and lungs
    dist_axis = np.abs((X - p0[0]) * d[1] - (Y - p0[1]) * d[0])
    med = _smoothstep((dist_axis - rng.uniform(25, 40) * px) / (15 * px))
    # diaphragm domes below the heart
    low = sc.ana.H.surf(0.0, 1.0, 0.0) - np.array([0, 0, rng.uniform(0, 25)])
    apex = cam.project(low[None])[0] + [rng.normal(0, 0.1) * S, rng.uniform(-0.05, 0.3) * S]
    if rng.random() < 0.3:  # diaphragm out of the field
        apex[1] += S
    dia = np.zeros((S, S), np.float32)
    curv = 1.0 / (rng.uniform(0.6, 1.6) * S)
    y_d = np.full(S, np.inf, np.float32)
    domes = [(0.0, 0.0), (rng.choice([-1, 1]) * rng.uniform(0.3, 0.6) * S, rng.uniform(-0.12, 0.05) * S)]
    for dx, dy in domes[: int(rng.integers(1, 3))]:
        y_d = np.minimum(y_d, apex[1] + dy + curv * (np.arange(S) - apex[0] - dx) ** 2)
    below = _smoothstep((Y - y_d[None, :]) / (6 * px + 1))
    dia += below * rng.uniform(0.5, 1.2)
    lung = med * (1 - below) * (1 - cv2.GaussianBlur(heart_mask, (0, 0), 8 * px + 1))
    bg -= lung * rng.uniform(0.35, 0.9)
    # lung texture: vessels and alveolar mottling at a few scales, fine detail weak
    noise = rng.standard_normal((S, S)).astype(np.float32)
    tex = sum(w * cv2.GaussianBlur(noise, (0, 0), sg * px + 0.5) / (sg * px + 0.5)
              for w, sg in ((0.4, 2.5), (1.0, 6.0), (1.5, 14.0)))
    bg += lung * tex * (rng.uniform(0.01, 0.04) / (tex.std() + 1e-6))
    # myocardium and pericardial fat mottle the heart shadow at a coarse scale
    mott = cv2.GaussianBlur(rng.standard_normal((S, S)).astype(np.float32), (0, 0), 10 * px + 0.5)
    bg += cv2.GaussianBlur(heart_mask, (0, 0), 6 * px + 0.5) * mott * (rng.uniform(0.005, 0.03) / (mott.std() + 1e-6))
    # ribs: posterior arcs from the spine, fainter anterior arcs
    ribs = np.zeros((S, S), np.float32)
    gap = rng.uniform(24, 34) * px
    for side in (-1, 1):
        for k in range(-6, 8):
            y0 = S * 0.5 + k * gap + rng.normal(0, 3 * px)
            base = p0 + d * ((np.array([0, y0]) - p0) @ d) + side * n * w * 0.6
            q1 = base + [side * rng.uniform(0.25, 0.4) * S, -rng.uniform(0.03, 0.1) * S]
            q2 = base + [side * rng.uniform(0.6, 0.9) * S, rng.uniform(0.08, 0.25) * S]
            arc = _bezier(base, q1, q2)
            th = rng.uniform(8, 13) * px
            dn = rng.uniform(0.02, 0.08)
            _poly(ribs, arc, dn, thick=th, closed=False)
            _poly(ribs, arc, -0.5 * dn, thick=th * 0.5, closed=False)
            if rng.random() < 0.6:
                a0 = base + [side * rng.uniform(0.5, 0.8) * S, rng.uniform(-0.1, 0.1) * S]
                arc = _bezier(a0, a0 + [-side * 0.2 * S, 0.05 * S], a0 + [-side * rng.uniform(0.3, 0.5) * S, 0.18 * S])
                _poly(ribs, arc, dn * 0.5, thick=th, closed=False)
    bg += cv2.GaussianBlur(ribs, (0, 0), max(3.0 * px, 0.5))
    # sternum
    st = cam.project(np.array([[*sc.ana.sternum, -150.0], [*sc.ana.sternum, 150.0]]))
    sternum = np.zeros((S, S), np.float32)
    _poly(sternum, st, rng.uniform(0.03, 0.1), thick=rng.uniform(20, 30) * px, closed=False)
    bg += cv2.GaussianBlur(sternum, (0, 0), 4 * px + 0.5)
    return bg, dia, heart


# ----------------------------------------------------------------------------- foreign objects


def _ecg_electrodes(sc, k):
    rng, S, px = sc.rng, sc.S, sc.px
    for _ in range(k):
        c = rng.uniform(0.05, 0.95, 2) * S
        img = sc.body_static
        r = rng.uniform(4, 6) * px
        _stamp(img, rng.uniform(0.1, 0.3), lambda cv, c=c, r=r: cv2.circle(
            cv, tuple(_fx(c)), int(r * 16), 255, max(int(0.8 * px), 1), cv2.LINE_AA, 4))
        _stamp(img, rng.uniform(0.6, 1.2), lambda cv, c=c: cv2.circle(
            cv, tuple(_fx(c)), int(2.0 * px * 16), 255, -1, cv2.LINE_AA, 4))
        end = c + rng.normal(0, 1, 2) * S
        _poly(img, _bezier(c, 0.5 * (c + end) + rng.normal(0, 0.15 * S, 2), end), rng.uniform(0.2, 0.5),
              thick=max(0.7 * px, 1), closed=False)


def _sternal_wires(sc):
    rng, px = sc.rng, sc.px
    zs = np.arange(rng.uniform(40, 80), -90, -rng.uniform(24, 34))[: int(rng.integers(4, 8))]
    _, d = _spine_line(sc)
    ang = math.atan2(d[0], -d[1])  # loops lie across the sternum
    dens = rng.uniform(0.6, 1.2)
    for z in zs:
        c = sc.cam.project(np.array([[*sc.ana.sternum, z]]))[0] + rng.normal(0, 1.5 * px, 2)
        a, b = rng.uniform(6, 10) * px, rng.uniform(1.0, 2.5) * px
        loop = _superellipse(c, a, b, ang + rng.normal(0, 0.15), p=1.0)
        _poly(sc.body_static, loop, dens, thick=max(0.8 * px, 1))
        knot = c + rng.choice([-1, 1]) * a * np.array([math.cos(ang), math.sin(ang)])
        twist = np.array([knot, knot + rng.normal(0, 1.5 * px, 2), knot + rng.normal(0, 1.5 * px, 2)])
        _poly(sc.body_static, twist, dens * 1.3, thick=max(1.2 * px, 1), closed=False)


def _clips(sc, pts_uv, n, spread_mm=5.0, img=None):
    """Surgical hemoclips: small dense V shapes near a path (pixels)."""
    rng, px = sc.rng, sc.px
    img = sc.heart_static if img is None else img
    if len(pts_uv) == 0:
        return
    for i in rng.choice(len(pts_uv), size=min(n, len(pts_uv)), replace=False):
        c = pts_uv[i] + rng.normal(0, spread_mm * px, 2)
        ang = rng.uniform(0, 2 * math.pi)
        ln, op = rng.uniform(3, 6) * px, rng.uniform(0.1, 0.4)
        tip = c
        p1 = c + ln * np.array([math.cos(ang - op), math.sin(ang - op)])
        p2 = c + ln * np.array([math.cos(ang + op), math.sin(ang + op)])
        _poly(img, np.array([p1, tip, p2]), rng.uniform(0.7, 1.4), thick=max(0.7 * px, 1), closed=False)


def _valve_ring(sc):
    a, rng = sc.ana, sc.rng
    ax = _unit(a.aorta_ctrl[1] - a.ao0)
    e1 = _unit(np.cross(ax, [1.0, 0.3, 0.2]))
    e2 = np.cross(ax, e1)
    t = np.linspace(0, 2 * math.pi, 60)
    ring = a.ao0 + 11 * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
    v = Vessel(ring, np.full(60, rng.uniform(0.8, 1.4)), _arclen(ring))
    sc.add_metal([v], rng.uniform(1.0, 2.0), "heart")


def _small_extras(sc, tree=None, sternotomy=None):
    """Foreign objects that leave the vessels visible; drawn in every kind alike."""
    rng = sc.rng
    if rng.random() < 0.35:
        _ecg_electrodes(sc, int(rng.integers(1, 4)))
    sternotomy = rng.random() < 0.2 if sternotomy is None else sternotomy  # many native runs follow surgery
    if sternotomy:
        _sternal_wires(sc)
        if rng.random() < 0.5:  # clips left from an old bypass operation
            ln = sc.cam.project(np.array([[*sc.ana.sternum, z] for z in np.linspace(-60, 80, 20)]))
            _clips(sc, ln + [rng.uniform(15, 30) * sc.px, 0], int(rng.integers(2, 7)), 6.0, sc.body_static)
    if rng.random() < 0.05:
        _valve_ring(sc)
    if tree is not None and rng.random() < 0.2:  # coronary guide wire down the main vessel
        main = tree[1] if len(tree) > 1 and tree[0].name == "LM" else tree[0]
        _wire(sc, [tree[0], main] if main is not tree[0] else [main])
    if tree is not None and rng.random() < 0.15:  # an implanted stent: faint mesh tube
        v = tree[int(rng.integers(0, min(3, len(tree))))]
        if len(v.r) > 10:
            i0 = int(rng.integers(0, len(v.r) // 2))
            seg = Vessel(v.pts[i0:i0 + max(len(v.r) // 5, 3)], v.r[i0:i0 + max(len(v.r) // 5, 3)] * 1.05, v.s[:1])
            seg.s = _arclen(seg.pts)
            sc.add_metal([seg], rng.uniform(0.2, 0.5), "heart", r_in_frac=0.8)


def _coverage(sc, layers):
    """Fraction of coronary contrast (by attenuation) lying under dense metal."""
    if not layers:
        return 0.0
    metal = (sc.body_static + sc.heart_static).ravel() > 1.2
    hid = sum(float((ly.att * metal[ly.idx]).sum()) for ly in layers)
    return hid / (sum(float(ly.att.sum()) for ly in layers) + 1e-9)


def _big_device(sc, lay, tree_uv):
    """Pacemaker/ICD, LVAD or spinal hardware placed to hide most of the tree."""
    rng, px, S = sc.rng, sc.px, sc.S
    c0 = np.average(tree_uv, axis=0)
    ext = tree_uv.max(0) - tree_uv.min(0)
    first = str(rng.choice(["pacemaker", "icd", "lvad", "spine"], p=[0.3, 0.3, 0.2, 0.2]))
    body0, heart0 = sc.body_static.copy(), sc.heart_static.copy()
    # a construct that cannot hide enough of this tree gives way to a pacemaker can
    tries = [(first, sc_) for sc_ in (1.0, 1.25, 1.5, 1.8, 2.2, 2.7, 3.3)]
    if first != "pacemaker":
        tries += [("pacemaker", sc_) for sc_ in (1.0, 1.25, 1.5, 1.8, 2.2, 2.7, 3.3)]
    for kind, scale in tries:
        sc.meta["device"] = kind
        sc.body_static[:], sc.heart_static[:] = body0, heart0
        c = c0 + rng.normal(0, 0.08, 2) * ext
        ang = rng.uniform(0, math.pi)
        if kind in ("pacemaker", "icd"):
            a = min(0.5 * max(ext.max() * 0.55, (60 if kind == "icd" else 48) * px) * scale, 0.33 * S)
            b = a * rng.uniform(0.7, 0.95)
            can = _superellipse(c, a, b, ang, p=0.35)
            _poly(sc.body_static, can, rng.uniform(2.5, 4.0))
            _poly(sc.body_static, _superellipse(c + [0.15 * a, 0], 0.55 * a, 0.6 * b, ang, 0.4), 1.0)
            hdr = _superellipse(c + np.array([math.cos(ang), math.sin(ang)]) * -1.15 * a, 0.25 * a, 0.7 * b, ang, 0.5)
            _poly(sc.body_static, hdr, 0.7)
            tip = c - np.array([math.cos(ang), math.sin(ang)]) * 1.3 * a
            for _ in range(int(rng.integers(1, 4))):  # leads curl through the heart
                end = c0 + rng.normal(0, 0.35, 2) * ext
                path = _bezier(tip, c0 + rng.normal(0, 0.5, 2) * ext, end, 48)
                lead = (path, np.full(48, rng.uniform(1.0, 1.4) * px), np.zeros(48))
                idx, d, r, _ = _raster([lead], S)
                sc.heart_static.ravel()[idx] += _chord(d, r) / px * rng.uniform(1.5, 2.5)
                if kind == "icd":  # shock coil: thick, very dense
                    k0 = int(rng.integers(10, 30))
                    coil = (path[k0:k0 + 16], np.full(16, 2.2 * px * scale ** 0.5), np.zeros(16))
                    idx, d, r, _ = _raster([coil], S)
                    sc.heart_static.ravel()[idx] += _chord(d, r) / px * 3.0
        elif kind == "lvad":
            rad = min(0.5 * max(ext.max() * 0.5, 55 * px) * scale, 0.33 * S)
            _stamp(sc.body_static, rng.uniform(3.0, 4.5), lambda cv, c=c, rad=rad: cv2.circle(
                cv, tuple(_fx(c)), int(rad * 16), 255, -1, cv2.LINE_AA, 4))
            _stamp(sc.body_static, -1.0, lambda cv, c=c, rad=rad: cv2.circle(
                cv, tuple(_fx(c)), int(rad * 0.6 * 16), 255, max(int(rad * 0.1), 1), cv2.LINE_AA, 4))
            end = c + rng.normal(0, 1, 2) * S
            _poly(sc.body_static, _bezier(c, 0.5 * (c + end) + rng.normal(0, 0.2 * S, 2), end),
                  2.5, thick=max(5 * px, 2), closed=False)
            out = c + rng.normal(0, 0.6, 2) * ext
            _poly(sc.body_static, _bezier(c, 0.5 * (c + out), out), 0.6, thick=14 * px, closed=False)
        else:  # posterior spinal fusion: rods, pedicle screws, cross-links
            _, d = _spine_line(sc)
            n = np.array([-d[1], d[0]])
            half = max(ext.max() * 0.6, 120 * px) * 0.5 * scale
            sep = rng.uniform(16, 24) * px * scale
            for sg in (-1, 1):
                rod = np.array([c + sg * n * sep - d * half, c + sg * n * sep + d * half])
                _poly(sc.body_static, rod, rng.uniform(2.5, 3.5), thick=max(6 * px * scale ** 0.5, 2), closed=False)
            lv = np.arange(-half, half, rng.uniform(24, 30) * px * scale)
            for t in lv:
                for sg in (-1, 1):
                    head = c + sg * n * sep + d * t
                    tipp = c + sg * n * sep * 0.2 + d * (t + rng.normal(0, 3 * px))
                    _poly(sc.body_static, np.array([head, tipp]), 2.5, thick=max(7 * px * scale ** 0.5, 2),
                          closed=False)
                    _poly(sc.body_static, _superellipse(head, 6 * px * scale, 5 * px * scale, ang, 0.5), 1.5)
            for t in lv[:-1]:  # interbody cages between levels
                cg = c + d * (t + 0.5 * (lv[1] - lv[0]))
                _poly(sc.body_static, _superellipse(cg, sep * 0.8, (lv[1] - lv[0]) * 0.22,
                                                    math.atan2(n[1], n[0]), 0.5), rng.uniform(1.3, 2.2))
            if rng.random() < 0.8:
                t = rng.uniform(-half, half) * 0.5
                _poly(sc.body_static, np.array([c - n * sep + d * t, c + n * sep + d * t]), 2.5,
                      thick=max(5 * px, 2), closed=False)
        cov = _coverage(sc, lay)
        sc.meta["device_coverage"] = round(cov, 3)
        if cov >= sc.meta.get("coverage_target", 0.6):
            break


# ----------------------------------------------------------------------------- kinds


def _pts(vessels):
    return np.concatenate([v.pts for v in vessels if len(v.r)])


def _fit_camera(sc, pts, ppm_range, view, extent):
    """Camera for a view; zoom (pixels per mm at 512) within ppm_range so pts span ``extent``."""
    a, b = view
    lo, hi = (sc.S / 512 * x for x in ppm_range)
    sc.cam = Camera(sc.rng, a, b, sc.S, 0.5 * (lo + hi), pts.mean(0))
    sc.cam.fit(pts, extent, lo, hi)
    sc.meta.update(primary_angle=round(float(a), 1), secondary_angle=round(float(b), 1), flip=sc.cam.flip)


def _coronary(sc, side, mode, extent=None):
    """A coronary run: tree, engaged catheter and a bolus shaped by ``mode``.

    mode: normal | none (catheter only) | faint | reflux | stopped.
    """
    rng, a = sc.rng, sc.ana
    tree = a.left_tree(rng) if side == "left" else a.right_tree(rng)
    if mode == "normal" and rng.random() < 0.12:
        _occlude(rng, tree)
    extent = rng.uniform(0.7, 1.3) if extent is None else extent  # real runs: the tree often leaves the field
    _fit_camera(sc, _pts(tree), (2.0, 3.4), _coronary_view(rng, side), extent)
    t_inj, transit = _timing(rng, sc.dur)
    if mode == "stopped":  # the run ends while contrast is still in the proximal tree
        t_inj = max(sc.dur - rng.uniform(0.0, 0.35) * transit - rng.uniform(0.1, 0.3), 0.3 * sc.dur)
    bolus = _normal_bolus(rng, t_inj, sc.dur)
    speed = max(float(v.s.max()) for v in tree if len(v.s)) / transit
    ost = a.lm_ost if side == "left" else a.rca_ost
    into = _unit(tree[0].pts[min(4, len(tree[0].pts) - 1)] - ost)
    tip = ost
    if mode == "reflux":  # not engaged: tip backs out into the sinus
        tip = ost - into * rng.uniform(4, 12) + rng.normal(0, 3, 3)
    cath = _catheter(sc, tip, into, "femoral" if rng.random() < 0.6 else "radial")
    if mode == "faint":
        bolus.peak = rng.uniform(0.04, 0.15)  # stays >2.5x below the faintest satisfactory run
    prefilled = rng.random() < 0.5
    lumen = Bolus((-1e3,), dur=1e9) if prefilled else \
        Bolus((t_inj - 0.25,), dur=1e9, rise=0.2, peak=bolus.peak if mode != "none" else 0.0)
    _add_catheter(sc, cath, lumen)
    lay = None
    if mode == "reflux":
        bolus.peak = rng.uniform(0.1, 0.35)
        lay = sc.add_contrast(tree, bolus, speed, max_s=rng.uniform(5, 25))
        puffs = (t_inj,) + tuple(t_inj + rng.uniform(0.3, max(sc.dur - t_inj, 0.4), rng.integers(0, 3)))
        root = Bolus(tuple(sorted(puffs)), dur=rng.uniform(0.3, 0.8), rise=0.1, wash=rng.uniform(0.3, 0.7),
                     peak=rng.uniform(0.1, 0.25))
        sc.add_contrast([a.aorta()], root, rng.uniform(250, 500), max_s=rng.uniform(30, 70))
    elif mode != "none":
        lay = sc.add_contrast(tree, bolus, speed)
    sc.meta.update(side=side, t_inj=round(t_inj, 3), transit=round(transit, 3))
    return tree, lay


def _satisfactory_extras(sc, tree, lay):
    """Small foreign objects; undone if they happen to hide much of the tree."""
    body, heart = sc.body_static.copy(), sc.heart_static.copy()
    _small_extras(sc, tree)
    if _coverage(sc, lay) > 0.1:
        sc.body_static[:], sc.heart_static[:] = body, heart


def _build_left(sc):
    tree, lay = _coronary(sc, "left", "normal")
    _satisfactory_extras(sc, tree, lay)


def _build_right(sc):
    tree, lay = _coronary(sc, "right", "normal")
    _satisfactory_extras(sc, tree, lay)


def _side(sc):
    return "left" if sc.rng.random() < 0.6 else "right"


def _build_mode(mode):
    def build(sc):
        tree, _ = _coronary(sc, _side(sc), mode)
        _small_extras(sc, tree)
    return build


def _build_device(sc):
    tree, lay = _coronary(sc, _side(sc), "normal", extent=sc.rng.uniform(0.4, 0.75))
    _small_extras(sc, tree)
    sc.meta["coverage_target"] = sc.rng.uniform(0.55, 0.85)
    _big_device(sc, lay, sc.cam.project(_pts(tree)))


def _build_graft(sc):
    rng, a = sc.rng, sc.ana
    H = a.H
    lima = rng.random() < 0.35
    side = "left" if lima or rng.random() < 0.6 else "right"
    tree = a.left_tree(rng) if side == "left" else a.right_tree(rng)
    names = ("LAD",) if lima else (("LAD", "OM", "D") if side == "left" else ("RCA", "PDA"))
    ti = int(rng.choice([i for i, v in enumerate(tree) if v.name in names and len(v.r) > 8]))
    tv = tree[ti]
    i = int(len(tv.r) * (rng.uniform(0.6, 0.85) if tv.name == "RCA" else rng.uniform(0.3, 0.65)))
    T = tv.pts[i]
    out = _unit(T - (H.B + H.u * ((T - H.B) @ H.u)))  # away from the long axis
    z = a.ao0[2]
    if lima:
        top = np.array([rng.uniform(35, 55), rng.uniform(-5, 15), z + rng.uniform(110, 140)])
        st = a.sternum
        ctrl = [top, [st[0] + rng.uniform(25, 40), st[1] - rng.uniform(10, 25), z + 70],
                [st[0] + rng.uniform(20, 40), st[1] - rng.uniform(10, 25), rng.uniform(-20, 20)],
                T + out * rng.uniform(15, 30), T]
        r0, r1 = rng.uniform(1.0, 1.3), rng.uniform(0.8, 1.0)
    else:
        ost = a.ao0 + a.r_ao * _unit(H.e_ant + [rng.uniform(-0.3, 0.6), 0, 0]) + [0, 0, rng.uniform(25, 55)]
        ctrl = [ost, ost + 45 * _unit(H.e_ant + rng.normal(0, 0.4, 3) + [0, 0, 0.3]),
                T + out * rng.uniform(25, 45), T]
        r0 = rng.uniform(1.8, 2.6)
        r1 = r0 * rng.uniform(0.85, 1.0)
    gp = _spline(ctrl, 160, 5)
    bend = _smooth(rng.normal(0, 1, (160, 3)), 10)  # grafts wander; not a straight rod
    gp = gp + bend / (np.abs(bend).max() + 1e-9) * rng.uniform(4, 10) * np.sin(np.linspace(0, math.pi, 160))[:, None]
    graft = Vessel(gp, np.linspace(r0, r1, 160), _arclen(gp), name="graft")
    if rng.random() < 0.3:
        _stenose(rng, graft)
    glen = graft.s[-1]
    i0 = max(0, i - int(len(tv.r) * rng.uniform(0.05, 0.3)))  # retrograde filling
    native = [Vessel(tv.pts[i0:], tv.r[i0:], glen + np.abs(tv.s[i0:] - tv.s[i]), depth=1)]
    for j, v in enumerate(tree):
        if v.parent == ti and v.at >= i0:
            off = glen + abs(tv.s[v.at] - tv.s[i]) - tv.s[v.at]
            for k in _subtree(tree, j):
                d = tree[k]
                native.append(Vessel(d.pts, d.r, d.s + off, depth=d.depth - tv.depth + 1))
    _fit_camera(sc, _pts([graft] + native), (1.6, 3.4), _coronary_view(rng, side), rng.uniform(0.75, 1.1))
    t_inj, transit = _timing(rng, sc.dur)
    bolus = _normal_bolus(rng, t_inj, sc.dur)
    speed = max(float(v.s.max()) for v in native if len(v.s)) / transit
    sc.add_contrast([graft] + native, bolus, speed)
    into = _unit(gp[4] - gp[0])
    if lima:  # catheter sits in the left subclavian, which fills too
        sub = _spline([[20, -35, z + 95], [40, -10, z + 125], top, [95, 10, z + 140]], 40, 2)
        sc.add_contrast([Vessel(sub, np.full(40, 4.0), _arclen(sub))],
                        Bolus((t_inj,), dur=bolus.dur, rise=0.2, wash=0.6, peak=rng.uniform(0.2, 0.5)), 300.0)
        cath = _catheter(sc, top, into, "arch", via=[[28, -25, z + 105]])
    else:
        cath = _catheter(sc, ost, into, "femoral" if rng.random() < 0.6 else "radial")
        if rng.random() < 0.3:  # graft ostium marker ring
            e1 = _unit(np.cross(into, [0.3, 1, 0.2]))
            e2 = np.cross(into, e1)
            t = np.linspace(0, 2 * math.pi, 40)
            ring = ost + 5 * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
            sc.add_metal([Vessel(ring, np.full(40, 0.6), _arclen(ring))], 2.0)
    _add_catheter(sc, cath, Bolus((-1e3,), dur=1e9) if rng.random() < 0.5 else Bolus((t_inj - 0.25,), dur=1e9))
    guv = sc.cam.project(gp)
    _clips(sc, guv, int(rng.integers(6, 16)) if lima else int(rng.integers(0, 5)))
    _small_extras(sc, None, sternotomy=rng.random() < 0.6)
    sc.meta.update(side=side, graft="LIMA" if lima else "SVG", target=tv.name, t_inj=round(t_inj, 3))


def _lv_points(rng, a):
    """Surface of the LV cavity: a 'bullet' (blunt base, tapered apex); returns points and half-width (mm)."""
    H = a.H
    alen = 0.42 * H.L * rng.uniform(0.9, 1.1)
    b = 0.6 * H.R * rng.uniform(0.85, 1.15)
    c = b * rng.uniform(0.75, 0.95)
    t, ph = np.meshgrid(np.linspace(-1, 1, 25), np.linspace(0, 2 * math.pi, 24))
    f = np.where(t > 0, np.sqrt(np.clip(1 - t ** 2, 0, 1)), np.sqrt(np.clip(1 - t ** 4, 0, 1)))
    pts = a.lv_c + (t * alen)[..., None] * H.u + (f * b * np.cos(ph))[..., None] * H.e_ant + \
        (f * c * np.sin(ph))[..., None] * H.e_left
    return pts.reshape(-1, 3), b


def _lv_layer(sc, bolus, lv=None, from_uv=None):
    """LV cavity as a thick projected 'bullet' with trabeculated, papillary-muscle edges."""
    rng, S, px = sc.rng, sc.S, sc.px
    pts, b = _lv_points(rng, sc.ana) if lv is None else lv
    uv = sc.cam.project(pts)
    mask = np.zeros((S, S), np.float32)
    _poly(mask, cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2), 1.0)
    m8 = (mask > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    dmax = max(float(dist.max()), 1.0)
    prof = np.sqrt(np.clip(1 - (1 - dist / dmax) ** 2, 0, 1))
    tex = cv2.GaussianBlur(rng.standard_normal((S, S)).astype(np.float32), (0, 0), 3 * px + 0.5)
    prof *= 1 + 0.6 * tex / (tex.std() + 1e-6) * 0.25 * (1 - prof) ** 0.5
    for _ in range(2):  # papillary muscles: elongated filling defects
        cc = uv.mean(0) + rng.normal(0, 0.15, 2) * dmax
        _stamp(prof, -0.35, lambda cv, cc=cc: cv2.ellipse(
            cv, tuple(_fx(cc)), tuple(_fx([dmax * 0.5, dmax * 0.12])), rng.uniform(0, 180), 0, 360, 255, -1,
            cv2.LINE_AA, 4))
    prof = cv2.GaussianBlur(np.clip(prof, 0, None), (0, 0), max(1.5 * px, 0.5)) * mask
    idx = np.flatnonzero(prof > 0.02)
    src = uv.mean(0) if from_uv is None else from_uv
    arr = np.hypot(idx % S - src[0], idx // S - src[1]) / px / rng.uniform(60, 150)
    att = prof.ravel()[idx] * 2 * b * sc.k_iod
    sc.layers.append(Layer(idx, att.astype(np.float32), arr.astype(np.float32), bolus, "lv"))
    sc.lv_center = uv.mean(0)
    return uv


def _power_bolus(rng, t_inj, dur, peak):
    return Bolus((t_inj,), dur=min(rng.uniform(1.5, 3.0), max(0.6 * dur, 0.5)), rise=rng.uniform(0.15, 0.35),
                 wash=rng.uniform(1.0, 2.5), peak=peak)


def _build_ventriculogram(sc):
    rng, a = sc.rng, sc.ana
    H = a.H
    u = rng.random()
    view = ((-30 + rng.uniform(-10, 10), rng.uniform(-10, 10)) if u < 0.6 else
            (rng.uniform(40, 60), rng.uniform(-5, 20)) if u < 0.9 else (rng.uniform(-50, 70), rng.uniform(-30, 30)))
    lv = _lv_points(rng, a)
    _fit_camera(sc, np.concatenate([lv[0], a.ao0[None]]), (1.3, 3.0), view, rng.uniform(0.5, 0.8))
    t_inj, _ = _timing(rng, sc.dur)
    # peak chosen so the full cavity attenuates 0.8-1.8 (dark, not a black hole)
    bolus = _power_bolus(rng, t_inj, sc.dur, rng.uniform(0.7, 1.6) / (1.2 * H.R * sc.k_iod))
    tip = a.lv_c + rng.uniform(0.0, 0.3) * 0.42 * H.L * H.u
    cath = _catheter(sc, tip, H.u + rng.normal(0, 0.3, 3), "femoral" if rng.random() < 0.7 else "radial",
                     pigtail=True, via=[a.ao0 + 10 * _unit(a.aorta_ctrl[1] - a.ao0)])
    _lv_layer(sc, bolus, lv, from_uv=sc.cam.project(tip[None])[0])
    aorta = a.aorta()
    sc.add_contrast([aorta], Bolus((t_inj + rng.uniform(0.3, 0.6),), dur=bolus.dur, rise=0.3, wash=1.5,
                                   peak=bolus.peak * rng.uniform(0.15, 0.35)),
                    rng.uniform(200, 400), max_s=rng.uniform(40, 110))
    if rng.random() < 0.2:  # mitral regurgitation fills the left atrium
        la = H.B - 0.25 * H.L * H.u - 0.3 * H.R * H.e_ant + 0.1 * H.R * H.e_left
        blob = Vessel(np.array([la, la + 0.5 * sc.cam.right]), np.full(2, rng.uniform(18, 25)), np.zeros(2))
        sc.add_contrast([blob],
                        Bolus((t_inj + 0.5,), dur=bolus.dur, rise=0.5, wash=2.0, peak=bolus.peak * 0.25), 1.0)
    _add_catheter(sc, cath, Bolus((-1e3,), dur=1e9))
    _small_extras(sc, None)
    sc.meta.update(t_inj=round(t_inj, 3))


def _build_aortogram(sc):
    rng, a = sc.rng, sc.ana
    aorta = a.aorta()
    top = int(np.argmax(aorta.pts[:, 2]))
    branches = []
    for dj, dx, r in ((-10, -15, 6.0), (0, 0, 4.0), (12, 15, 4.5)):  # innominate, LCC, LSA
        j = int(np.clip(top + dj, 0, len(aorta.r) - 1))
        st = aorta.pts[j] + [0, 0, 0.7 * a.r_ao]
        bp = _spline([st, st + [dx, rng.uniform(-10, 10), 40], st + [2 * dx, rng.uniform(-15, 15), 110]], 40, 2)
        branches.append(Vessel(bp, np.full(40, r * rng.uniform(0.85, 1.15)), aorta.s[j] + _arclen(bp),
                               depth=1))
    view = (rng.uniform(25, 65), rng.uniform(-15, 15)) if rng.random() < 0.7 else _coronary_view(rng, "left")
    near = aorta.pts[aorta.s < 230]
    _fit_camera(sc, np.concatenate([near, a.H.shell()[::3]]), (1.2, 2.4), view, rng.uniform(0.75, 1.0))
    t_inj, _ = _timing(rng, sc.dur)
    bolus = _power_bolus(rng, t_inj, sc.dur, rng.uniform(0.9, 2.0) / (2.4 * a.r_ao * sc.k_iod))
    speed = rng.uniform(250, 500)
    sc.add_contrast([aorta] + branches, bolus, speed)
    if rng.random() < 0.6:  # ostia and proximal coronaries fill a little from the root
        for tree in (a.left_tree(rng), a.right_tree(rng)):
            sc.add_contrast(tree, Bolus((t_inj + 0.1,), dur=bolus.dur, rise=0.3, wash=1.0,
                                                  peak=rng.uniform(0.15, 0.35)), 150.0, max_s=rng.uniform(15, 45))
    if rng.random() < 0.2:  # aortic regurgitation: faint LV
        _lv_layer(sc, Bolus((t_inj + 0.5,), dur=bolus.dur, rise=0.6, wash=2.0, peak=rng.uniform(0.1, 0.4) / (0.84 * a.H.R * sc.k_iod)))
    up = _unit(a.aorta_ctrl[1] - a.ao0)
    tip = a.ao0 + up * rng.uniform(12, 22) + rng.normal(0, 3, 3)
    cath = _catheter(sc, tip, -up + rng.normal(0, 0.3, 3), "femoral" if rng.random() < 0.7 else "radial",
                     pigtail=True)
    _add_catheter(sc, cath, Bolus((-1e3,), dur=1e9))
    _small_extras(sc, None)
    sc.meta.update(t_inj=round(t_inj, 3))


_BUILDERS = {
    "left_coronary": _build_left,
    "right_coronary": _build_right,
    "ventriculogram": _build_ventriculogram,
    "aortogram": _build_aortogram,
    "catheter_only": _build_mode("none"),
    "faint_contrast": _build_mode("faint"),
    "reflux": _build_mode("reflux"),
    "stopped_early": _build_mode("stopped"),
    "bypass_graft": _build_graft,
    "device_obstruction": _build_device,
}
assert set(_BUILDERS) == set(KINDS), "every catalogued kind needs a builder"


# ----------------------------------------------------------------------------- motion


class _Motion:
    """Cardiac (smooth non-rigid warp around the heart) and respiratory (translation) motion."""

    G = 16  # coarse grid for displacement fields; upsampled per frame

    def __init__(self, sc):
        rng, S, px, H = sc.rng, sc.S, sc.px, sc.ana.H
        self.S = S
        self.hr = rng.uniform(55, 105) / 60.0
        self.ph0 = rng.uniform()
        shell = sc.cam.project(H.shell())
        self.hc = sc.cam.project((H.B + 0.45 * H.L * H.u)[None])[0]
        rad = 0.5 * float((shell.max(0) - shell.min(0)).max())
        g = (np.arange(self.G) + 0.5) * S / self.G - 0.5
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
            kx, ky = rng.normal(0, 2.5 / S, 2) * 2 * math.pi
            amp = rng.normal(0, 1, 2) * rng.uniform(0.5, 2.5) * px
            field += np.sin(kx * GX + ky * GY + rng.uniform(0, 6.3))[..., None] * amp
        self.field = field * self.w[..., None]
        if sc.lv_center is not None:
            self.lv_contract, _, _ = radial(sc.lv_center, rad * rng.uniform(0.9, 1.4))
            self.k_lv = rng.uniform(0.2, 0.35)
        _, d = _spine_line(sc)
        self.resp_dir = _unit(d + rng.normal(0, 0.3, 2))
        self.resp_amp = rng.uniform(0.5, 4.0) * px
        self.resp_f, self.resp_ph = 1 / rng.uniform(3, 6), rng.uniform(0, 6.3)
        self.drift = rng.normal(0, 0.7, 2) * px
        pan = _unit(rng.normal(0, 1, 2)) * rng.uniform(10, 40) * px / sc.dur  # table panning, px/s
        self.pan = pan if rng.random() < 0.12 else np.zeros(2)
        base = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(S, dtype=np.float32))
        self.base = np.stack(base, -1)

    def beat(self, t):
        ph = (t * self.hr + self.ph0 + 0.02 * math.sin(2 * math.pi * 0.15 * t)) % 1.0
        if ph < 0.3:
            return float(_smoothstep(ph / 0.3))
        if ph < 0.55:
            return float(1 - _smoothstep((ph - 0.3) / 0.25))
        return 0.0

    def body_shift(self, t):
        return (self.resp_dir * self.resp_amp * math.sin(2 * math.pi * self.resp_f * t + self.resp_ph)
                + self.drift * t + self.pan * t)

    def affine(self, t):
        v = self.body_shift(t)
        return np.float32([[1, 0, v[0]], [0, 1, v[1]]])

    def _map(self, disp):
        full = cv2.resize(disp.astype(np.float32), (self.S, self.S), interpolation=cv2.INTER_LINEAR)
        return self.base + full

    def heart_map(self, t):
        c = self.beat(t)
        # remap samples the source: sampling further out makes the content contract
        disp = c * (self.k * self.contract + self.k_tw * self.twist - self.w[..., None] * self.T + self.field)
        return self._map(disp - 0.8 * self.body_shift(t))

    def lv_map(self, t):
        c = self.beat(t)
        return self._map(c * self.k_lv * self.lv_contract - 0.8 * self.body_shift(t))


# ----------------------------------------------------------------------------- display chain


class _Display:
    """Detector and vendor look: field shape, noise, blur, edge enhancement, LUT, text."""

    def __init__(self, rng, S, meta, n_frames, fps):
        self.S = S
        Y, X = np.mgrid[:S, :S].astype(np.float32)
        px = S / 512
        self.att = np.zeros((S, S), np.float32)  # detector-fixed attenuation (vignetting, wedge)
        alpha = np.ones((S, S), np.float32)
        # flat-panel systems (most real runs): no round field, seldom a visible shutter; the
        # periphery is only a little darker (heel effect, vignetting)
        r_c = np.hypot(X - S / 2 + rng.normal(0, 0.05) * S, Y - S / 2 + rng.normal(0, 0.05) * S) / (0.5 * S)
        self.att += rng.uniform(0.0, 0.35) * r_c ** rng.uniform(2, 4)
        self.att += rng.normal(0, 0.12) * (X / S - 0.5) + rng.normal(0, 0.12) * (Y / S - 0.5)
        if rng.random() < 0.07:  # image intensifier: circular field, darker periphery
            c = S / 2 + rng.normal(0, 0.02, 2) * S
            R = rng.uniform(0.46, 0.62) * S
            r = np.hypot(X - c[0], Y - c[1])
            alpha *= _smoothstep((R - r) / max(2 * px, 0.6))
            self.att += rng.uniform(0, 0.4) * (r / R) ** 2
        shutter = rng.random()
        if shutter < 0.15:  # black collimator shutters
            ins = rng.uniform(0, 0.1, 4) * S * (rng.random(4) < 0.5)
            e = max(1.5 * px, 0.5)
            alpha *= _smoothstep((X - ins[0]) / e) * _smoothstep((S - 1 - ins[1] - X) / e)
            alpha *= _smoothstep((Y - ins[2]) / e) * _smoothstep((S - 1 - ins[3] - Y) / e)
        elif shutter < 0.45:  # semi-transparent collimator leaves: a darker band, not black
            side = int(rng.integers(0, 4))
            depth = rng.uniform(0.03, 0.15) * S
            coord = (X, S - 1 - X, Y, S - 1 - Y)[side]
            self.att += rng.uniform(0.4, 1.2) * _smoothstep((depth - coord) / (rng.uniform(2, 10) * px + 0.5))
        if rng.random() < 0.2:  # wedge filter over a lung field
            ang = rng.uniform(0, 2 * math.pi)
            dd = (X - S / 2) * math.cos(ang) + (Y - S / 2) * math.sin(ang) - rng.uniform(0.1, 0.4) * S
            self.att += rng.uniform(0.3, 0.8) * _smoothstep(dd / (rng.uniform(2, 15) * px + 0.5))
        self.field = alpha > 0.5
        self.alpha = np.round(alpha * 255).astype(np.uint8)
        border = rng.uniform(5, 25) if rng.random() < 0.3 else 0
        self.border = np.round((255 - self.alpha.astype(np.float32)) * border / 255).astype(np.uint8)
        self.inv_sqrt_n0 = 1 / math.sqrt(rng.uniform(4000, 16000) * (512 / S) ** 2)
        self.blur = rng.uniform(0.8, 1.8) * px
        self.edge = rng.uniform(0.2, 1.2) if rng.random() < 0.7 else 0.0
        self.edge_k = max(int(rng.uniform(4, 12) * px) | 1, 3)
        self.recursive = rng.uniform(0.5, 0.85) if rng.random() < 0.4 else 1.0
        # scatter and veiling glare: a blurred share of the transmitted light lifts dark areas
        self.scatter = rng.uniform(0.05, 0.3)
        self.scatter_sigma = rng.uniform(0.05, 0.15) * S
        self.lo_m, self.hi_m = rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.8)
        self.min_width, self.mid_shift = rng.uniform(1.2, 2.2), rng.uniform(-0.1, 0.2)
        gamma = rng.uniform(0.8, 1.6)
        # grey mapping of real systems: stored levels sit low and narrow (real runs: p01 ~0.20,
        # p50 ~0.44, p99 ~0.69 of the stored range); a few systems use the full range
        if rng.random() < 0.8:
            out_lo, out_hi = rng.uniform(15, 60), rng.uniform(140, 205)
        else:
            out_lo, out_hi = rng.uniform(0, 25), rng.uniform(200, 255)
        v = 1 - np.arange(4096) / 4095.0  # 1 = least attenuation = brightest
        if rng.random() < 0.5:  # vendor S-curve
            v = 0.5 * v + 0.5 * _smoothstep(v)
        self.lut = np.round(out_lo + (out_hi - out_lo) * v ** gamma).astype(np.uint8)
        # lossy compression of the archive or video path (8-bit JPEG), quality per system
        self.jpeg_quality = int(rng.uniform(55, 95)) if rng.random() < 0.55 else 0
        self.ramp = rng.uniform(-0.15, 0.15) if rng.random() < 0.25 else 0.0
        self.ramp_n = int(rng.integers(1, 3))
        self.overlay, self.ov_mask, self.counter = self._text(rng, S, meta, n_frames, fps)
        if rng.random() < 0.2:  # small annotation boxes burned in (e.g. a lesion marked in review)
            boxes = np.zeros((S, S), np.uint8)
            col = int(rng.choice([int(rng.uniform(200, 255)), int(rng.uniform(0, 30))]))
            for _ in range(int(rng.integers(1, 4))):
                w, h = rng.uniform(0.03, 0.12, 2) * S
                x0, y0 = rng.uniform(0.15, 0.8, 2) * S
                cv2.rectangle(boxes, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), 255,
                              max(int(rng.integers(1, 3) * px), 1))
            self.overlay = np.where(boxes > 0, np.uint8(col), self.overlay)
            self.ov_mask = (boxes > 0) if self.ov_mask is None else (self.ov_mask | (boxes > 0))

    def window(self, A0):
        """Automatic brightness: window on the central field, where exposure control measures."""
        S = self.S
        centre = np.zeros_like(self.field)
        centre[S // 4: 3 * S // 4, S // 4: 3 * S // 4] = True
        vals = A0[self.field & centre][::3]
        if vals.size < 16:
            vals = A0.ravel()
        lo, hi = np.percentile(vals, [2, 98])
        lo, hi = float(lo - self.lo_m), float(hi + self.hi_m)
        if hi - lo < self.min_width:  # a flat central region must not stretch noise over the whole range
            mid = 0.5 * (lo + hi) + self.mid_shift * self.min_width
            lo, hi = mid - self.min_width / 2, mid + self.min_width / 2
        self.lo, self.hi = lo, hi

    def _text(self, rng, S, meta, n, fps):
        ov = np.zeros((S, S), np.uint8)
        if S < 128 or rng.random() < 0.7:  # most archived runs carry their annotations as overlays, not pixels
            return ov, None, None
        a, b = meta.get("primary_angle", 0), meta.get("secondary_angle", 0)
        lines = [f"{'LAO' if a >= 0 else 'RAO'} {abs(a):.0f}  {'CRA' if b >= 0 else 'CAU'} {abs(b):.0f}",
                 f"{fps:g} fps", "PHANTOM^SYNTH", "01-Jan-2026", f"kV {rng.uniform(70, 105):.0f}",
                 f"mA {rng.uniform(300, 900):.0f}", "CATH LAB", f"FOV {rng.choice([17, 20, 22, 25])} cm",
                 f"Ser {rng.integers(1, 30)}", "Cine"]
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX]))
        scale = S / 512 * (rng.uniform(0.35, 0.55) if font != cv2.FONT_HERSHEY_PLAIN else rng.uniform(0.8, 1.2))
        col = int(rng.uniform(170, 255))
        lh = int(max(cv2.getTextSize("Ag", font, scale, 1)[0][1] * 1.8, 6))
        for corner in rng.choice(4, size=int(rng.integers(1, 4)), replace=False):
            k = int(rng.integers(1, 4))
            picks = rng.choice(len(lines), size=k, replace=False)
            for j, li in enumerate(picks):
                txt = lines[li]
                w = cv2.getTextSize(txt, font, scale, 1)[0][0]
                x = 6 if corner in (0, 2) else S - w - 6
                y = lh * (j + 1) if corner in (0, 1) else S - 6 - lh * (k - 1 - j)
                cv2.putText(ov, txt, (int(x), int(y)), font, scale, col, 1, cv2.LINE_AA)
        if rng.random() < 0.3:  # orientation marker
            cv2.putText(ov, rng.choice(["L", "R", "H"]), (int(S * 0.9), int(S * 0.5)), font, scale * 1.5, col, 1,
                        cv2.LINE_AA)
        if rng.random() < 0.25:  # ruler
            x0, y0 = int(S * rng.uniform(0.05, 0.1)), int(S * rng.uniform(0.3, 0.7))
            for i in range(11):
                ln = int(S * (0.02 if i % 5 == 0 else 0.01))
                cv2.line(ov, (x0, y0 + i * int(S * 0.02)), (x0 + ln, y0 + i * int(S * 0.02)), col, 1)
        counter = None
        if rng.random() < 0.3:
            counter = (font, scale, col, (int(S * rng.uniform(0.7, 0.8)), int(S - 8)))
        return ov, ov > 0, counter

    def _scatter(self, L):
        """Scatter and veiling glare: a wide blur of the transmitted intensity added back."""
        S = self.S
        small = max(S // 8, 8)
        inten = cv2.exp(-np.minimum(L, 12.0))
        low = cv2.resize(inten, (small, small), interpolation=cv2.INTER_AREA)
        low = cv2.GaussianBlur(low, (0, 0), max(self.scatter_sigma * small / S, 0.5))
        low = cv2.resize(low, (S, S), interpolation=cv2.INTER_LINEAR)
        return -cv2.log(cv2.addWeighted(inten, 1 - self.scatter, low, self.scatter, 0) + np.float32(1e-6))

    def finish(self, L, i, n, prev, noise=None):
        """Attenuation-domain frame (and its quantum noise) -> displayed uint8.

        The focal spot and the scintillator blur the image; the noise is added after most of
        that blur, as real detectors show it (fine-grained).
        """
        if self.scatter > 0:
            L = self._scatter(L)
        if self.blur > 0.3:
            k = 2 * math.ceil(2.5 * self.blur) + 1
            L = cv2.GaussianBlur(L, (k, k), self.blur)
        if noise is not None:
            L = L + cv2.GaussianBlur(noise, (0, 0), 0.6)
        if self.recursive < 1.0 and prev is not None:
            L = cv2.addWeighted(L, self.recursive, prev, 1 - self.recursive, 0)
        keep = L
        if self.edge > 0:
            low = cv2.boxFilter(cv2.boxFilter(L, -1, (self.edge_k, self.edge_k)), -1, (self.edge_k, self.edge_k))
            L = cv2.addWeighted(L, 1 + self.edge, low, -self.edge, 0)
        q = (L - self.lo) * (4095.0 / (self.hi - self.lo))
        q = np.clip(q, 0, 4095).astype(np.uint16)
        out = np.take(self.lut, q)
        out = cv2.add(cv2.multiply(out, self.alpha, scale=1 / 255), self.border)
        if self.ov_mask is not None:
            np.copyto(out, self.overlay, where=self.ov_mask)
        if self.counter is not None:
            font, scale, col, org = self.counter
            cv2.putText(out, f"{i + 1}/{n}", org, font, scale, col, 1, cv2.LINE_AA)
        if self.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return out, keep


# ----------------------------------------------------------------------------- public API


def _rng(kind, seed):
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(kind.encode())]))


def render_clip_meta(kind: str, seed: int, n_frames: int, frame_rate_hz: float, size: int = 512):
    """Render a clip and return (frames uint8 (n, size, size), metadata dict)."""
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {sorted(KINDS)}")
    if n_frames < 1 or frame_rate_hz <= 0 or size < 16:
        raise ValueError("n_frames >= 1, frame_rate_hz > 0 and size >= 16 are required")
    rng = _rng(kind, seed)
    S, fps = int(size), float(frame_rate_hz)
    sc = Scene(rng, S, n_frames / fps, Anatomy(rng), k_iod=rng.uniform(0.2, 0.36))
    _BUILDERS[kind](sc)
    bg, dia, heart_shadow = _background(sc)
    mot = _Motion(sc)
    disp = _Display(rng, S, sc.meta, n_frames, fps)
    disp.window(bg + dia + heart_shadow + disp.att)
    body = bg + dia + sc.body_static
    heart_base = heart_shadow + sc.heart_static
    heart_layers = [ly for ly in sc.layers if ly.motion != "lv"]
    lv_layers = [ly for ly in sc.layers if ly.motion == "lv"]
    pad = 32
    bank = rng.standard_normal((3, S + pad, S + pad), dtype=np.float32)
    frames = np.empty((n_frames, S, S), np.uint8)
    prev = None
    for i in range(n_frames):
        t = i / fps
        iod = np.zeros((S, S), np.float32)
        flat = iod.ravel()
        for ly in heart_layers:  # overlapping contrast layers combine by maximum (no dark junction blobs)
            flat[ly.idx] = np.maximum(flat[ly.idx], ly.att * ly.bolus(t - ly.arr))
        A = cv2.remap(heart_base + iod, mot.heart_map(t), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if lv_layers:
            lv = np.zeros((S, S), np.float32)
            for ly in lv_layers:
                lv.ravel()[ly.idx] += ly.att * ly.bolus(t - ly.arr)
            A += cv2.remap(lv, mot.lv_map(t), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        A += cv2.warpAffine(body, mot.affine(t), (S, S), borderMode=cv2.BORDER_REPLICATE)
        A += disp.att
        if i < disp.ramp_n:  # exposure control settling on the first frames
            A += disp.ramp * (disp.ramp_n - i) / disp.ramp_n
        k, oy, ox = rng.integers(0, 3), rng.integers(0, pad), rng.integers(0, pad)
        noise = bank[k, oy:oy + S, ox:ox + S]
        std = cv2.exp(np.minimum(A, 5.0) * np.float32(0.5))
        frames[i], prev = disp.finish(A, i, n_frames, prev, noise * std * np.float32(disp.inv_sqrt_n0))
    if kind == "catheter_only" and n_frames > 4 and rng.random() < 0.35:
        # a run's pre-contrast frames played to the run's length (forwards, or to and fro)
        m = int(rng.integers(3, max(4, n_frames // 3)))
        i = np.arange(n_frames)
        order = i % m if rng.random() < 0.5 else m - 1 - np.abs(i % (2 * m - 2) - (m - 1))
        frames = frames[order]
        sc.meta["looped_frames"] = m
    meta = dict(sc.meta, kind=kind, seed=int(seed), heart_rate_bpm=round(mot.hr * 60, 1), size=S,
                frame_rate_hz=fps, n_frames=int(n_frames))
    meta.pop("coverage_target", None)
    return frames, meta


def render_clip(kind: str, seed: int, n_frames: int, frame_rate_hz: float, size: int = 512) -> np.ndarray:
    """Render one phantom clip: uint8 array (n_frames, size, size), dark = dense (MONOCHROME2)."""
    return render_clip_meta(kind, seed, n_frames, frame_rate_hz, size)[0]
