"""Catheters, wires and foreign objects: ECG electrodes, sternal wires, surgical clips, valve rings,
stents, and the large devices (pacemaker, ICD, LVAD, spinal fusion) that hide a tree.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import Vessel
from .background import spine_line
from .drawing import bezier, poly, stamp, superellipse, to_fixed
from .geometry import arclen, spline, unit
from .raster import chord, raster


def catheter(scene, target, into, route="femoral", pigtail=False, via=()):
    """Catheter centre line from outside the field to ``target`` (tip pointing ``into``).

    Femoral catheters climb the descending aorta and come over the arch; radial
    ones come down from the right subclavian. The tube is returned as a Vessel
    whose s is the distance from the tip.
    """
    rng, a = scene.rng, scene.anatomy
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
    into = unit(into)
    path += [0.5 * (path[-1] + target) + rng.normal(0, 4, 3), target - 8 * into, target, target + 2 * into]
    pts = spline(path, 260, 9.0)  # catheters bend smoothly
    if pigtail:  # a loop of ~8 mm radius at the tip
        e1 = unit(np.cross(into, rng.normal(size=3)))
        e2 = np.cross(into, e1)
        rad = rng.uniform(6, 9)
        ang = np.linspace(0, 2 * math.pi * rng.uniform(0.8, 1.1), 40)
        ctr = pts[-1] + rad * e1
        loop = ctr - rad * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2) + \
            (ang / (2 * math.pi))[:, None] * into * 3
        pts = np.concatenate([pts, loop[1:]])
    s = arclen(pts)
    r = np.full(len(pts), rng.choice([0.83, 1.0, 1.17]))  # 5/6/7 F
    return Vessel(pts, r, s[-1] - s, name="catheter")


def add_catheter(scene, cath, lumen_bolus):
    wall = scene.rng.uniform(0.5, 1.1)  # braid + plastic, per mm of wall
    scene.add_metal([cath], wall, "heart", r_in_frac=0.72,
                    lumen=(lumen_bolus, scene.rng.uniform(400, 900)))


def wire(scene, vessels, per_mm=3.0, r=0.18):
    """A thin radio-opaque wire along the given centre lines (guide wire, pacing lead)."""
    pts = np.concatenate([v.pts for v in vessels])
    w = Vessel(pts, np.full(len(pts), r), arclen(pts))
    scene.add_metal([w], per_mm, "heart")


def ecg_electrodes(scene, k):
    rng, size, px = scene.rng, scene.size, scene.px
    for _ in range(k):
        c = rng.uniform(0.05, 0.95, 2) * size
        img = scene.body_static
        r = rng.uniform(4, 6) * px
        stamp(img, rng.uniform(0.1, 0.3), lambda cv, c=c, r=r: cv2.circle(
            cv, tuple(to_fixed(c)), int(r * 16), 255, max(int(0.8 * px), 1), cv2.LINE_AA, 4))
        stamp(img, rng.uniform(0.6, 1.2), lambda cv, c=c: cv2.circle(
            cv, tuple(to_fixed(c)), int(2.0 * px * 16), 255, -1, cv2.LINE_AA, 4))
        end = c + rng.normal(0, 1, 2) * size
        poly(img, bezier(c, 0.5 * (c + end) + rng.normal(0, 0.15 * size, 2), end), rng.uniform(0.2, 0.5),
             thick=max(0.7 * px, 1), closed=False)


def sternal_wires(scene):
    rng, px = scene.rng, scene.px
    zs = np.arange(rng.uniform(40, 80), -90, -rng.uniform(24, 34))[: int(rng.integers(4, 8))]
    _, d = spine_line(scene)
    ang = math.atan2(d[0], -d[1])  # loops lie across the sternum
    dens = rng.uniform(0.6, 1.2)
    for z in zs:
        c = scene.cam.project(np.array([[*scene.anatomy.sternum, z]]))[0] + rng.normal(0, 1.5 * px, 2)
        a, b = rng.uniform(6, 10) * px, rng.uniform(1.0, 2.5) * px
        loop = superellipse(c, a, b, ang + rng.normal(0, 0.15), p=1.0)
        poly(scene.body_static, loop, dens, thick=max(0.8 * px, 1))
        knot = c + rng.choice([-1, 1]) * a * np.array([math.cos(ang), math.sin(ang)])
        twist = np.array([knot, knot + rng.normal(0, 1.5 * px, 2), knot + rng.normal(0, 1.5 * px, 2)])
        poly(scene.body_static, twist, dens * 1.3, thick=max(1.2 * px, 1), closed=False)


def surgical_clips(scene, pts_uv, n, spread_mm=5.0, img=None):
    """Surgical hemoclips: small dense V shapes near a path (pixels)."""
    rng, px = scene.rng, scene.px
    img = scene.heart_static if img is None else img
    if len(pts_uv) == 0:
        return
    for i in rng.choice(len(pts_uv), size=min(n, len(pts_uv)), replace=False):
        c = pts_uv[i] + rng.normal(0, spread_mm * px, 2)
        ang = rng.uniform(0, 2 * math.pi)
        ln, op = rng.uniform(3, 6) * px, rng.uniform(0.1, 0.4)
        tip = c
        p1 = c + ln * np.array([math.cos(ang - op), math.sin(ang - op)])
        p2 = c + ln * np.array([math.cos(ang + op), math.sin(ang + op)])
        poly(img, np.array([p1, tip, p2]), rng.uniform(0.7, 1.4), thick=max(0.7 * px, 1), closed=False)


def valve_ring(scene):
    a, rng = scene.anatomy, scene.rng
    ax = unit(a.aorta_ctrl[1] - a.ao0)
    e1 = unit(np.cross(ax, [1.0, 0.3, 0.2]))
    e2 = np.cross(ax, e1)
    t = np.linspace(0, 2 * math.pi, 60)
    ring = a.ao0 + 11 * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
    v = Vessel(ring, np.full(60, rng.uniform(0.8, 1.4)), arclen(ring))
    scene.add_metal([v], rng.uniform(1.0, 2.0), "heart")


def small_extras(scene, tree=None, sternotomy=None):
    """Foreign objects that leave the vessels visible; drawn in every kind alike."""
    rng = scene.rng
    if rng.random() < 0.35:
        ecg_electrodes(scene, int(rng.integers(1, 4)))
    sternotomy = rng.random() < 0.2 if sternotomy is None else sternotomy  # many native runs follow surgery
    if sternotomy:
        sternal_wires(scene)
        if rng.random() < 0.5:  # clips left from an old bypass operation
            ln = scene.cam.project(np.array([[*scene.anatomy.sternum, z] for z in np.linspace(-60, 80, 20)]))
            surgical_clips(scene, ln + [rng.uniform(15, 30) * scene.px, 0], int(rng.integers(2, 7)), 6.0,
                           scene.body_static)
    if rng.random() < 0.05:
        valve_ring(scene)
    if tree is not None and rng.random() < 0.2:  # coronary guide wire down the main vessel
        main = tree[1] if len(tree) > 1 and tree[0].name == "LM" else tree[0]
        wire(scene, [tree[0], main] if main is not tree[0] else [main])
    if tree is not None and rng.random() < 0.15:  # an implanted stent: faint mesh tube
        v = tree[int(rng.integers(0, min(3, len(tree))))]
        if len(v.r) > 10:
            i0 = int(rng.integers(0, len(v.r) // 2))
            seg = Vessel(v.pts[i0:i0 + max(len(v.r) // 5, 3)], v.r[i0:i0 + max(len(v.r) // 5, 3)] * 1.05, v.s[:1])
            seg.s = arclen(seg.pts)
            scene.add_metal([seg], rng.uniform(0.2, 0.5), "heart", r_in_frac=0.8)


def coverage(scene, layers):
    """Fraction of coronary contrast (by attenuation) lying under dense metal."""
    if not layers:
        return 0.0
    metal = (scene.body_static + scene.heart_static).ravel() > 1.2
    hid = sum(float((ly.att * metal[ly.idx]).sum()) for ly in layers)
    return hid / (sum(float(ly.att.sum()) for ly in layers) + 1e-9)


def big_device(scene, lay, tree_uv):
    """Pacemaker/ICD, LVAD or spinal hardware placed to hide most of the tree."""
    rng, px, size = scene.rng, scene.px, scene.size
    c0 = np.average(tree_uv, axis=0)
    ext = tree_uv.max(0) - tree_uv.min(0)
    first = str(rng.choice(["pacemaker", "icd", "lvad", "spine"], p=[0.3, 0.3, 0.2, 0.2]))
    body0, heart0 = scene.body_static.copy(), scene.heart_static.copy()
    # a construct that cannot hide enough of this tree gives way to a pacemaker can
    tries = [(first, sc_) for sc_ in (1.0, 1.25, 1.5, 1.8, 2.2, 2.7, 3.3)]
    if first != "pacemaker":
        tries += [("pacemaker", sc_) for sc_ in (1.0, 1.25, 1.5, 1.8, 2.2, 2.7, 3.3)]
    for kind, scale in tries:
        scene.meta["device"] = kind
        scene.body_static[:], scene.heart_static[:] = body0, heart0
        c = c0 + rng.normal(0, 0.08, 2) * ext
        ang = rng.uniform(0, math.pi)
        if kind in ("pacemaker", "icd"):
            a = min(0.5 * max(ext.max() * 0.55, (60 if kind == "icd" else 48) * px) * scale, 0.33 * size)
            b = a * rng.uniform(0.7, 0.95)
            can = superellipse(c, a, b, ang, p=0.35)
            poly(scene.body_static, can, rng.uniform(2.5, 4.0))
            poly(scene.body_static, superellipse(c + [0.15 * a, 0], 0.55 * a, 0.6 * b, ang, 0.4), 1.0)
            hdr = superellipse(c + np.array([math.cos(ang), math.sin(ang)]) * -1.15 * a, 0.25 * a, 0.7 * b, ang, 0.5)
            poly(scene.body_static, hdr, 0.7)
            tip = c - np.array([math.cos(ang), math.sin(ang)]) * 1.3 * a
            for _ in range(int(rng.integers(1, 4))):  # leads curl through the heart
                end = c0 + rng.normal(0, 0.35, 2) * ext
                path = bezier(tip, c0 + rng.normal(0, 0.5, 2) * ext, end, 48)
                lead = (path, np.full(48, rng.uniform(1.0, 1.4) * px), np.zeros(48))
                idx, d, r, _ = raster([lead], size)
                scene.heart_static.ravel()[idx] += chord(d, r) / px * rng.uniform(1.5, 2.5)
                if kind == "icd":  # shock coil: thick, very dense
                    k0 = int(rng.integers(10, 30))
                    coil = (path[k0:k0 + 16], np.full(16, 2.2 * px * scale ** 0.5), np.zeros(16))
                    idx, d, r, _ = raster([coil], size)
                    scene.heart_static.ravel()[idx] += chord(d, r) / px * 3.0
        elif kind == "lvad":
            rad = min(0.5 * max(ext.max() * 0.5, 55 * px) * scale, 0.33 * size)
            stamp(scene.body_static, rng.uniform(3.0, 4.5), lambda cv, c=c, rad=rad: cv2.circle(
                cv, tuple(to_fixed(c)), int(rad * 16), 255, -1, cv2.LINE_AA, 4))
            stamp(scene.body_static, -1.0, lambda cv, c=c, rad=rad: cv2.circle(
                cv, tuple(to_fixed(c)), int(rad * 0.6 * 16), 255, max(int(rad * 0.1), 1), cv2.LINE_AA, 4))
            end = c + rng.normal(0, 1, 2) * size
            poly(scene.body_static, bezier(c, 0.5 * (c + end) + rng.normal(0, 0.2 * size, 2), end),
                 2.5, thick=max(5 * px, 2), closed=False)
            out = c + rng.normal(0, 0.6, 2) * ext
            poly(scene.body_static, bezier(c, 0.5 * (c + out), out), 0.6, thick=14 * px, closed=False)
        else:  # posterior spinal fusion: rods, pedicle screws, cross-links
            _, d = spine_line(scene)
            n = np.array([-d[1], d[0]])
            half = max(ext.max() * 0.6, 120 * px) * 0.5 * scale
            sep = rng.uniform(16, 24) * px * scale
            for sg in (-1, 1):
                rod = np.array([c + sg * n * sep - d * half, c + sg * n * sep + d * half])
                poly(scene.body_static, rod, rng.uniform(2.5, 3.5), thick=max(6 * px * scale ** 0.5, 2), closed=False)
            lv = np.arange(-half, half, rng.uniform(24, 30) * px * scale)
            for t in lv:
                for sg in (-1, 1):
                    head = c + sg * n * sep + d * t
                    tipp = c + sg * n * sep * 0.2 + d * (t + rng.normal(0, 3 * px))
                    poly(scene.body_static, np.array([head, tipp]), 2.5, thick=max(7 * px * scale ** 0.5, 2),
                         closed=False)
                    poly(scene.body_static, superellipse(head, 6 * px * scale, 5 * px * scale, ang, 0.5), 1.5)
            for t in lv[:-1]:  # interbody cages between levels
                cg = c + d * (t + 0.5 * (lv[1] - lv[0]))
                poly(scene.body_static, superellipse(cg, sep * 0.8, (lv[1] - lv[0]) * 0.22,
                                                     math.atan2(n[1], n[0]), 0.5), rng.uniform(1.3, 2.2))
            if rng.random() < 0.8:
                t = rng.uniform(-half, half) * 0.5
                poly(scene.body_static, np.array([c - n * sep + d * t, c + n * sep + d * t]), 2.5,
                     thick=max(5 * px, 2), closed=False)
        cov = coverage(scene, lay)
        scene.meta["device_coverage"] = round(cov, 3)
        if cov >= scene.meta.get("coverage_target", 0.6):
            break
