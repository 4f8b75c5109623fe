"""Patient anatomy in 3-D millimetres: the heart, its coronary trees, the aorta, spine and sternum.

Coronary vessels are tubes on the heart's surface (``Heart.surf``); a tree is a list of
``Vessel`` with parent links, branching generation and path length from the ostium.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import arclen, smooth, smoothstep, spline, unit


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
    of the long axis from the base (AV groove, 0) to the apex (1); off = mm
    above (+) or below (-) the epicardial surface.

    radius, length: mm; axis: unit vector from base to apex; e_ant, e_left:
    unit vectors across it (anterior, patient's left); base: centre of the AV
    groove plane (the origin).
    """

    def __init__(self, rng):
        self.radius = rng.uniform(40, 52)
        self.length = rng.uniform(85, 105)
        az, el = math.radians(rng.uniform(35, 60)), math.radians(rng.uniform(25, 45))
        self.axis = unit([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
        a = np.array([0.0, 1.0, 0.0])
        self.e_ant = unit(a - a.dot(self.axis) * self.axis)
        e_left = np.cross(self.axis, self.e_ant)
        self.e_left = e_left if e_left[0] > 0 else -e_left
        self.base = np.zeros(3)

    def rho(self, hf):
        hf = np.asarray(hf, float)
        body = np.sqrt(np.clip(1 - np.clip(hf, 0, None) ** 2, 0, 1)) * (0.78 + 0.22 * smoothstep(hf / 0.35))
        atria = 0.78 * np.clip(1 + 0.9 * hf, 0.2, 1)  # above the AV groove
        return self.radius * np.where(hf >= 0, body, atria)

    def surf(self, th, hf, off=0.0):
        th, hf, off = np.broadcast_arrays(np.asarray(th, float), np.asarray(hf, float), np.asarray(off, float))
        rad = (self.rho(hf) + off)[..., None]
        ring = np.cos(th)[..., None] * self.e_ant + np.sin(th)[..., None] * self.e_left
        return self.base + (hf * self.length)[..., None] * self.axis + rad * ring

    def shell(self):
        th, hf = np.meshgrid(np.linspace(-math.pi, math.pi, 24), np.linspace(-0.35, 1.0, 14))
        return self.surf(th, hf, 4.0).reshape(-1, 3)


def surface_vessel(heart, rng, knots, r0, r1, n=64, wig=0.05):
    """A tortuous vessel through surface knots (th, hf, off), n samples, radius tapering r0 -> r1 (mm)."""
    k = np.asarray(knots, float)
    seg = np.hypot(np.diff(k[:, 0]) * heart.radius, np.diff(k[:, 1]) * heart.length) + 1e-6
    sk = np.concatenate([[0], np.cumsum(seg)]) / seg.sum()
    s = np.linspace(0, 1, n)
    th, hf, off = (np.interp(s, sk, k[:, j]) for j in range(3))
    env = smoothstep(s * 5)  # the start stays on its parent
    for _ in range(3):  # tortuosity
        f, ph = rng.uniform(1.5, 7), rng.uniform(0, 2 * math.pi)
        amp = wig * rng.uniform(0.3, 1.0) * 3 / f
        th = th + amp * np.sin(2 * math.pi * f * s + ph) * env
        hf = hf + amp * (heart.radius / heart.length) * np.cos(2 * math.pi * f * s + ph) * env
    th, hf, off = smooth(th, 2.5), smooth(hf, 2.5), smooth(off, 2.5)
    pts = heart.surf(th, hf, off)
    r = r0 * (r1 / r0) ** (s ** rng.uniform(0.7, 1.3))
    return Vessel(pts, r, arclen(pts), th, hf, off)


def branch(heart, rng, tree, parent_index, frac, d_theta, d_height, r0, r1, d_offset=0.0, n=48, wig=0.05,
           name=""):
    """Add a side branch of ``tree[parent_index]`` leaving at fraction ``frac`` of its length.

    It runs d_theta (radians about the long axis), d_height (fraction of the long axis) and
    d_offset (mm off the surface) from where it leaves; returns its index in ``tree``.
    """
    p = tree[parent_index]
    i = int(np.clip(round(frac * (len(p.r) - 1)), 1, len(p.r) - 1))
    a = (p.th[i], p.hf[i], p.off[i])
    m1, m2 = rng.uniform(0.3, 0.45), rng.uniform(0.55, 0.75)
    bend = rng.uniform(-0.15, 0.15)
    knots = [a, (a[0] + d_theta * m1 + bend * abs(d_height), a[1] + d_height * m1 * 1.1, a[2] + d_offset * 0.5),
             (a[0] + d_theta * m2, a[1] + d_height * m2, a[2] + d_offset * 0.9),
             (a[0] + d_theta, a[1] + d_height, a[2] + d_offset)]
    v = surface_vessel(heart, rng, knots, min(r0, 0.85 * p.r[i]), r1, n, wig)
    v.parent, v.at, v.depth, v.name = parent_index, i, p.depth + 1, name
    v.s = v.s + p.s[i]
    tree.append(v)
    return len(tree) - 1


def stenose(rng, v):
    c, w, sev = rng.uniform(0.15, 0.8), rng.uniform(0.02, 0.06), rng.uniform(0.3, 0.7)
    x = np.linspace(0, 1, len(v.r))
    v.r = v.r * (1 - sev * np.exp(-0.5 * ((x - c) / w) ** 2))


class Anatomy:
    """Heart, aortic root, ostia, aorta, spine and sternum of one phantom patient."""

    def __init__(self, rng):
        self.heart = heart = Heart(rng)
        self.r_ao = rng.uniform(13, 17)
        self.th_b, self.hf_b = rng.uniform(0.3, 0.6), rng.uniform(-0.04, 0.04)
        self.bif = heart.surf(self.th_b, self.hf_b, 3.0)
        guess = heart.base + np.array([-12.0, 6.0, 22.0]) - 0.1 * heart.length * heart.axis
        self.lm_len = rng.uniform(7, 15)
        self.ao0 = self.bif + (self.r_ao + self.lm_len) * unit(guess - self.bif)
        self.lm_ost = self.ao0 + self.r_ao * unit(self.bif - self.ao0)
        self.rca_start = (rng.uniform(-0.5, -0.3), rng.uniform(-0.03, 0.04))
        p = heart.surf(*self.rca_start, 3.0)
        self.rca_ost = self.ao0 + self.r_ao * unit(p - self.ao0)
        a0 = self.ao0
        z = a0[2]
        self.aorta_ctrl = np.array([
            a0 - 4 * heart.axis, a0 + [-6, 9, 35], [a0[0] + 2, a0[1] - 8, z + 72], [22, -40, z + 85],
            [30, -68, z + 50], [31, -75, -40], [32, -78, -320]])
        self.spine = np.array([rng.uniform(-12, 8), rng.uniform(-115, -90)])  # x, y of the body axis
        self.sternum = np.array([rng.uniform(-8, 8), rng.uniform(70, 95)])
        self.lv_c = (heart.base + 0.48 * heart.length * heart.axis + 0.22 * heart.radius * heart.e_left
                     - 0.12 * heart.radius * heart.e_ant)

    def aorta(self, n=160):
        pts = spline(self.aorta_ctrl, n, n / 30)
        s = arclen(pts)
        r = self.r_ao * (1 + 0.22 * np.exp(-0.5 * ((s - 8) / 8) ** 2)) * np.interp(s, [0, 120, 250], [1, 0.95, 0.8])
        return Vessel(pts, r, s, name="aorta")

    # ---- coronary trees ------------------------------------------------------

    def left_tree(self, rng):
        heart = self.heart
        lm_r = rng.uniform(2.0, 2.6)
        mid = 0.5 * (self.lm_ost + self.bif) + rng.normal(0, 1.5, 3)
        pts = spline([self.lm_ost, mid, self.bif], 24, 2)
        n = len(pts)
        lm = Vessel(pts, np.full(n, lm_r), arclen(pts), np.full(n, self.th_b), np.full(n, self.hf_b),
                    np.full(n, 3.0), name="LM")
        tree = [lm]
        tb, hb = self.th_b, self.hf_b
        lad = surface_vessel(heart, rng, [(tb, hb, 3), (rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.2), 2.5),
                                          (rng.uniform(-0.1, 0.1), rng.uniform(0.45, 0.6), 2.0),
                                          (rng.uniform(-0.2, 0.05), rng.uniform(0.92, 1.02), 1.5)],
                             lm_r * rng.uniform(0.75, 0.9), rng.uniform(0.45, 0.7), 90, 0.04)
        dominant_left = rng.random() < 0.12
        th_end = rng.uniform(2.9, 3.2) if dominant_left else rng.uniform(1.6, 2.6)
        lcx = surface_vessel(heart, rng, [(tb, hb, 3), (tb + rng.uniform(0.35, 0.6), rng.uniform(-0.02, 0.06), 3),
                                          (0.5 * (tb + th_end), rng.uniform(0.0, 0.1), 3),
                                          (th_end, rng.uniform(0.02, 0.14), 3)],
                             lm_r * rng.uniform(0.65, 0.85), rng.uniform(0.5, 0.8), 80, 0.03)
        for v, nm in ((lad, "LAD"), (lcx, "LCx")):
            v.parent, v.at, v.depth, v.name = 0, n - 1, 1, nm
            v.s = v.s + lm.s[-1]
            tree.append(v)
        for f in np.sort(rng.uniform(0.1, 0.6, rng.integers(2, 5))):  # diagonals
            d = branch(heart, rng, tree, 1, f, rng.uniform(0.5, 1.3), rng.uniform(0.25, 0.5),
                       rng.uniform(0.7, 1.2), rng.uniform(0.35, 0.5), name="D")
            if rng.random() < 0.5:
                branch(heart, rng, tree, d, rng.uniform(0.3, 0.7), rng.uniform(-0.3, 0.5), rng.uniform(0.1, 0.25),
                       0.6, 0.3, n=24, name="twig")
        for f in rng.uniform(0.12, 0.6, rng.integers(2, 5)):  # septals dive into the septum
            branch(heart, rng, tree, 1, f, rng.uniform(-0.35, -0.05), rng.uniform(0.06, 0.2),
                   rng.uniform(0.4, 0.65), 0.25, d_offset=-rng.uniform(10, 22), n=24, wig=0.02, name="S")
        for f in np.sort(rng.uniform(0.2, 0.85, rng.integers(2, 5))):  # obtuse marginals
            o = branch(heart, rng, tree, 2, f, rng.uniform(-0.3, 0.3), rng.uniform(0.4, 0.75),
                       rng.uniform(0.7, 1.2), rng.uniform(0.35, 0.5), name="OM")
            if rng.random() < 0.4:
                branch(heart, rng, tree, o, rng.uniform(0.3, 0.7), rng.uniform(-0.4, 0.4), rng.uniform(0.1, 0.3),
                       0.6, 0.3, n=24, name="twig")
        if rng.random() < 0.25:  # ramus intermedius
            branch(heart, rng, tree, 0, 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.4, 0.7),
                   rng.uniform(0.9, 1.3), 0.45, name="RI")
        if dominant_left:
            branch(heart, rng, tree, 2, 1.0, rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.7), 1.1, 0.45, name="PDA")
        return self._finish(rng, tree)

    def right_tree(self, rng):
        heart = self.heart
        r0 = rng.uniform(1.5, 2.0)
        non_dominant = rng.random() < 0.1
        th_end = rng.uniform(-1.9, -1.4) if non_dominant else -math.pi + rng.uniform(-0.1, 0.15)
        ts, hs = self.rca_start
        rca = surface_vessel(heart, rng, [(ts, hs, 3),
                                          (-math.pi / 2 + rng.uniform(-0.25, 0.2), rng.uniform(0.03, 0.14), 3),
                                          (th_end, rng.uniform(0.0, 0.1), 3)],
                             r0, r0 * rng.uniform(0.5, 0.7), 100, 0.04)
        lead = spline([self.rca_ost, 0.5 * (self.rca_ost + rca.pts[0]) + rng.normal(0, 2, 3), rca.pts[0]], 12, 1)
        m = len(lead) - 1
        rca.pts = smooth(np.concatenate([lead[:-1], rca.pts]), 2.0)
        rca.r = np.concatenate([np.full(m, r0), rca.r])
        rca.th = np.concatenate([np.full(m, ts), rca.th])
        rca.hf = np.concatenate([np.full(m, hs), rca.hf])
        rca.off = np.concatenate([np.full(m, 3.0), rca.off])
        rca.s, rca.name = arclen(rca.pts), "RCA"
        tree = [rca]
        if not non_dominant:
            branch(heart, rng, tree, 0, 1.0, rng.uniform(-0.15, 0.15), rng.uniform(0.5, 0.75),
                   rng.uniform(0.9, 1.3), 0.45, name="PDA")
            branch(heart, rng, tree, 0, 1.0, -rng.uniform(0.35, 0.8), rng.uniform(0.05, 0.25),
                   rng.uniform(0.8, 1.1), 0.4, name="PL")
        for f in rng.uniform(0.25, 0.8, rng.integers(2, 5)):  # acute marginals run over the RV
            branch(heart, rng, tree, 0, f, rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.6),
                   rng.uniform(0.6, 1.0), 0.35, name="AM")
        if rng.random() < 0.7:
            branch(heart, rng, tree, 0, rng.uniform(0.08, 0.15), rng.uniform(0.4, 0.8), rng.uniform(0.05, 0.2),
                   rng.uniform(0.5, 0.8), 0.3, n=30, name="conus")
        if rng.random() < 0.5:
            branch(heart, rng, tree, 0, rng.uniform(0.08, 0.2), -rng.uniform(0.1, 0.5), -rng.uniform(0.2, 0.35),
                   rng.uniform(0.4, 0.6), 0.3, n=30, name="SAN")
        return self._finish(rng, tree)

    def _finish(self, rng, tree):
        # Real runs show dense trees: every named branch carries side branches, and the larger
        # twigs carry twigs of their own (real runs: ~190 skeleton branch points at 512 px).
        n_named = len(tree)
        for parent_index in range(n_named):
            v = tree[parent_index]
            if v.name in ("LM", "SAN", "conus") or v.r.mean() < 0.45:
                continue
            for _ in range(int(rng.integers(2, 6))):
                t = branch(self.heart, rng, tree, parent_index, rng.uniform(0.2, 0.95), rng.uniform(-0.5, 0.5),
                           rng.uniform(0.06, 0.25), rng.uniform(0.5, 0.8), 0.3, n=24, name="twig")
                if rng.random() < 0.45:
                    branch(self.heart, rng, tree, t, rng.uniform(0.3, 0.8), rng.uniform(-0.35, 0.35),
                           rng.uniform(0.04, 0.14), 0.45, 0.25, n=16, name="twig")
        # calibre: vessel sizes vary between patients (real widths ~7 px median, 13 px p90 at 512)
        cal = rng.uniform(1.1, 1.55)
        for v in tree:
            v.r = v.r * cal
        for _ in range(rng.integers(0, 3)):
            stenose(rng, tree[rng.integers(0, len(tree))])
        return tree


def subtree(tree, root):
    """Indices of vessel ``root`` and all its descendants."""
    out, todo = [], [root]
    while todo:
        i = todo.pop()
        out.append(i)
        todo += [j for j, v in enumerate(tree) if v.parent == i]
    return out


def occlude(rng, tree):
    """A chronic total occlusion: cut one vessel (and what hangs off it)."""
    i = int(rng.integers(1, len(tree)))
    v = tree[i]
    cut = int(len(v.r) * rng.uniform(0.3, 0.7))
    for f in ("pts", "r", "s", "th", "hf", "off"):
        setattr(v, f, getattr(v, f)[:cut])
    drop = {j for j in range(len(tree)) if tree[j].parent == i and tree[j].at >= cut}
    for j in list(drop):
        drop |= set(subtree(tree, j))
    for j in drop:
        tree[j].r = tree[j].r[:0]
        tree[j].pts, tree[j].s = tree[j].pts[:0], tree[j].s[:0]
