"""One builder per kind of clip (``BUILDERS``): what each kind puts in the scene.

Every kind is drawn in the same world (anatomy, devices, background and display
are shared); only what the paper's criteria look at differs.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .anatomy import Vessel, occlude, stenose, subtree
from .devices import add_catheter, big_device, catheter, coverage, small_extras, surgical_clips
from .drawing import poly, stamp, to_fixed
from .geometry import arclen, smooth, spline, unit
from .kinds import KINDS
from .projection import Camera, coronary_view
from .scene import Bolus, Layer


def run_timing(rng, dur):
    """Injection start, filling transit time (s) for a normal run; scaled for short clips."""
    t_inj = min(rng.uniform(0.8, 2.2), rng.uniform(0.12, 0.3) * dur)
    transit = min(rng.uniform(0.6, 1.6), rng.uniform(0.3, 0.45) * dur)
    return t_inj, transit


def normal_bolus(rng, t_inj, dur):
    return Bolus((t_inj,), dur=min(rng.uniform(1.8, 3.8), max(0.6 * dur, 0.5)), rise=rng.uniform(0.15, 0.35),
                 wash=rng.uniform(0.5, 1.5), peak=rng.uniform(0.75, 1.25))


def centre_points(vessels):
    return np.concatenate([v.pts for v in vessels if len(v.r)])


def fit_camera(scene, pts, ppm_range, view, extent):
    """Camera for a view; zoom (pixels per mm at 512) within ppm_range so pts span ``extent``."""
    a, b = view
    lo, hi = (scene.size / 512 * x for x in ppm_range)
    scene.cam = Camera(scene.rng, a, b, scene.size, 0.5 * (lo + hi), pts.mean(0))
    scene.cam.fit(pts, extent, lo, hi)
    scene.meta.update(primary_angle=round(float(a), 1), secondary_angle=round(float(b), 1), flip=scene.cam.flip)


def _coronary(scene, side, mode, extent=None):
    """A coronary run: tree, engaged catheter and a bolus shaped by ``mode``.

    mode: normal | none (catheter only) | faint | reflux | stopped.
    """
    rng, a = scene.rng, scene.anatomy
    tree = a.left_tree(rng) if side == "left" else a.right_tree(rng)
    if mode == "normal" and rng.random() < 0.12:
        occlude(rng, tree)
    extent = rng.uniform(0.7, 1.3) if extent is None else extent  # real runs: the tree often leaves the field
    fit_camera(scene, centre_points(tree), (2.0, 3.4), coronary_view(rng, side), extent)
    t_inj, transit = run_timing(rng, scene.dur)
    if mode == "stopped":  # the run ends while contrast is still in the proximal tree
        t_inj = max(scene.dur - rng.uniform(0.0, 0.35) * transit - rng.uniform(0.1, 0.3), 0.3 * scene.dur)
    bolus = normal_bolus(rng, t_inj, scene.dur)
    speed = max(float(v.s.max()) for v in tree if len(v.s)) / transit
    ost = a.lm_ost if side == "left" else a.rca_ost
    into = unit(tree[0].pts[min(4, len(tree[0].pts) - 1)] - ost)
    tip = ost
    if mode == "reflux":  # not engaged: tip backs out into the sinus
        tip = ost - into * rng.uniform(4, 12) + rng.normal(0, 3, 3)
    cath = catheter(scene, tip, into, "femoral" if rng.random() < 0.6 else "radial")
    if mode == "faint":
        bolus.peak = rng.uniform(0.04, 0.15)  # stays >2.5x below the faintest satisfactory run
    prefilled = rng.random() < 0.5
    lumen = Bolus((-1e3,), dur=1e9) if prefilled else \
        Bolus((t_inj - 0.25,), dur=1e9, rise=0.2, peak=bolus.peak if mode != "none" else 0.0)
    add_catheter(scene, cath, lumen)
    lay = None
    if mode == "reflux":
        bolus.peak = rng.uniform(0.1, 0.35)
        lay = scene.add_contrast(tree, bolus, speed, max_s=rng.uniform(5, 25))
        puffs = (t_inj,) + tuple(t_inj + rng.uniform(0.3, max(scene.dur - t_inj, 0.4), rng.integers(0, 3)))
        root = Bolus(tuple(sorted(puffs)), dur=rng.uniform(0.3, 0.8), rise=0.1, wash=rng.uniform(0.3, 0.7),
                     peak=rng.uniform(0.1, 0.25))
        scene.add_contrast([a.aorta()], root, rng.uniform(250, 500), max_s=rng.uniform(30, 70))
    elif mode != "none":
        lay = scene.add_contrast(tree, bolus, speed)
    scene.meta.update(side=side, t_inj=round(t_inj, 3), transit=round(transit, 3))
    return tree, lay


def _satisfactory_extras(scene, tree, lay):
    """Small foreign objects; undone if they happen to hide much of the tree."""
    body, heart = scene.body_static.copy(), scene.heart_static.copy()
    small_extras(scene, tree)
    if coverage(scene, lay) > 0.1:
        scene.body_static[:], scene.heart_static[:] = body, heart


def _build_left(scene):
    tree, lay = _coronary(scene, "left", "normal")
    _satisfactory_extras(scene, tree, lay)


def _build_right(scene):
    tree, lay = _coronary(scene, "right", "normal")
    _satisfactory_extras(scene, tree, lay)


def _side(scene):
    return "left" if scene.rng.random() < 0.6 else "right"


def _build_mode(mode):
    def build(scene):
        tree, _ = _coronary(scene, _side(scene), mode)
        small_extras(scene, tree)
    return build


def _build_device(scene):
    tree, lay = _coronary(scene, _side(scene), "normal", extent=scene.rng.uniform(0.4, 0.75))
    small_extras(scene, tree)
    scene.meta["coverage_target"] = scene.rng.uniform(0.55, 0.85)
    big_device(scene, lay, scene.cam.project(centre_points(tree)))


def _build_graft(scene):
    rng, a = scene.rng, scene.anatomy
    heart = a.heart
    lima = rng.random() < 0.35
    side = "left" if lima or rng.random() < 0.6 else "right"
    tree = a.left_tree(rng) if side == "left" else a.right_tree(rng)
    names = ("LAD",) if lima else (("LAD", "OM", "D") if side == "left" else ("RCA", "PDA"))
    ti = int(rng.choice([i for i, v in enumerate(tree) if v.name in names and len(v.r) > 8]))
    tv = tree[ti]
    i = int(len(tv.r) * (rng.uniform(0.6, 0.85) if tv.name == "RCA" else rng.uniform(0.3, 0.65)))
    T = tv.pts[i]
    out = unit(T - (heart.base + heart.axis * ((T - heart.base) @ heart.axis)))  # away from the long axis
    z = a.ao0[2]
    if lima:
        top = np.array([rng.uniform(35, 55), rng.uniform(-5, 15), z + rng.uniform(110, 140)])
        st = a.sternum
        ctrl = [top, [st[0] + rng.uniform(25, 40), st[1] - rng.uniform(10, 25), z + 70],
                [st[0] + rng.uniform(20, 40), st[1] - rng.uniform(10, 25), rng.uniform(-20, 20)],
                T + out * rng.uniform(15, 30), T]
        r0, r1 = rng.uniform(1.0, 1.3), rng.uniform(0.8, 1.0)
    else:
        ost = a.ao0 + a.r_ao * unit(heart.e_ant + [rng.uniform(-0.3, 0.6), 0, 0]) + [0, 0, rng.uniform(25, 55)]
        ctrl = [ost, ost + 45 * unit(heart.e_ant + rng.normal(0, 0.4, 3) + [0, 0, 0.3]),
                T + out * rng.uniform(25, 45), T]
        r0 = rng.uniform(1.8, 2.6)
        r1 = r0 * rng.uniform(0.85, 1.0)
    gp = spline(ctrl, 160, 5)
    bend = smooth(rng.normal(0, 1, (160, 3)), 10)  # grafts wander; not a straight rod
    gp = gp + bend / (np.abs(bend).max() + 1e-9) * rng.uniform(4, 10) * np.sin(np.linspace(0, math.pi, 160))[:, None]
    graft = Vessel(gp, np.linspace(r0, r1, 160), arclen(gp), name="graft")
    if rng.random() < 0.3:
        stenose(rng, graft)
    glen = graft.s[-1]
    i0 = max(0, i - int(len(tv.r) * rng.uniform(0.05, 0.3)))  # retrograde filling
    native = [Vessel(tv.pts[i0:], tv.r[i0:], glen + np.abs(tv.s[i0:] - tv.s[i]), depth=1)]
    for j, v in enumerate(tree):
        if v.parent == ti and v.at >= i0:
            off = glen + abs(tv.s[v.at] - tv.s[i]) - tv.s[v.at]
            for k in subtree(tree, j):
                d = tree[k]
                native.append(Vessel(d.pts, d.r, d.s + off, depth=d.depth - tv.depth + 1))
    fit_camera(scene, centre_points([graft] + native), (1.6, 3.4), coronary_view(rng, side), rng.uniform(0.75, 1.1))
    t_inj, transit = run_timing(rng, scene.dur)
    bolus = normal_bolus(rng, t_inj, scene.dur)
    speed = max(float(v.s.max()) for v in native if len(v.s)) / transit
    scene.add_contrast([graft] + native, bolus, speed)
    into = unit(gp[4] - gp[0])
    if lima:  # catheter sits in the left subclavian, which fills too
        sub = spline([[20, -35, z + 95], [40, -10, z + 125], top, [95, 10, z + 140]], 40, 2)
        scene.add_contrast([Vessel(sub, np.full(40, 4.0), arclen(sub))],
                           Bolus((t_inj,), dur=bolus.dur, rise=0.2, wash=0.6, peak=rng.uniform(0.2, 0.5)), 300.0)
        cath = catheter(scene, top, into, "arch", via=[[28, -25, z + 105]])
    else:
        cath = catheter(scene, ost, into, "femoral" if rng.random() < 0.6 else "radial")
        if rng.random() < 0.3:  # graft ostium marker ring
            e1 = unit(np.cross(into, [0.3, 1, 0.2]))
            e2 = np.cross(into, e1)
            t = np.linspace(0, 2 * math.pi, 40)
            ring = ost + 5 * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)
            scene.add_metal([Vessel(ring, np.full(40, 0.6), arclen(ring))], 2.0)
    add_catheter(scene, cath, Bolus((-1e3,), dur=1e9) if rng.random() < 0.5 else Bolus((t_inj - 0.25,), dur=1e9))
    guv = scene.cam.project(gp)
    surgical_clips(scene, guv, int(rng.integers(6, 16)) if lima else int(rng.integers(0, 5)))
    small_extras(scene, None, sternotomy=rng.random() < 0.6)
    scene.meta.update(side=side, graft="LIMA" if lima else "SVG", target=tv.name, t_inj=round(t_inj, 3))


def _lv_points(rng, a):
    """Surface of the LV cavity: a 'bullet' (blunt base, tapered apex); returns points and half-width (mm)."""
    heart = a.heart
    alen = 0.42 * heart.length * rng.uniform(0.9, 1.1)
    b = 0.6 * heart.radius * rng.uniform(0.85, 1.15)
    c = b * rng.uniform(0.75, 0.95)
    t, ph = np.meshgrid(np.linspace(-1, 1, 25), np.linspace(0, 2 * math.pi, 24))
    f = np.where(t > 0, np.sqrt(np.clip(1 - t ** 2, 0, 1)), np.sqrt(np.clip(1 - t ** 4, 0, 1)))
    pts = a.lv_c + (t * alen)[..., None] * heart.axis + (f * b * np.cos(ph))[..., None] * heart.e_ant + \
        (f * c * np.sin(ph))[..., None] * heart.e_left
    return pts.reshape(-1, 3), b


def _lv_layer(scene, bolus, lv=None, from_uv=None):
    """LV cavity as a thick projected 'bullet' with trabeculated, papillary-muscle edges."""
    rng, size, px = scene.rng, scene.size, scene.px
    pts, b = _lv_points(rng, scene.anatomy) if lv is None else lv
    uv = scene.cam.project(pts)
    mask = np.zeros((size, size), np.float32)
    poly(mask, cv2.convexHull(uv.astype(np.float32)).reshape(-1, 2), 1.0)
    m8 = (mask > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    dmax = max(float(dist.max()), 1.0)
    prof = np.sqrt(np.clip(1 - (1 - dist / dmax) ** 2, 0, 1))
    tex = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 3 * px + 0.5)
    prof *= 1 + 0.6 * tex / (tex.std() + 1e-6) * 0.25 * (1 - prof) ** 0.5
    for _ in range(2):  # papillary muscles: elongated filling defects
        cc = uv.mean(0) + rng.normal(0, 0.15, 2) * dmax
        stamp(prof, -0.35, lambda cv, cc=cc: cv2.ellipse(
            cv, tuple(to_fixed(cc)), tuple(to_fixed([dmax * 0.5, dmax * 0.12])), rng.uniform(0, 180), 0, 360, 255, -1,
            cv2.LINE_AA, 4))
    prof = cv2.GaussianBlur(np.clip(prof, 0, None), (0, 0), max(1.5 * px, 0.5)) * mask
    idx = np.flatnonzero(prof > 0.02)
    src = uv.mean(0) if from_uv is None else from_uv
    arr = np.hypot(idx % size - src[0], idx // size - src[1]) / px / rng.uniform(60, 150)
    att = prof.ravel()[idx] * 2 * b * scene.k_iod
    scene.layers.append(Layer(idx, att.astype(np.float32), arr.astype(np.float32), bolus, "lv"))
    scene.lv_center = uv.mean(0)
    return uv


def _power_bolus(rng, t_inj, dur, peak):
    return Bolus((t_inj,), dur=min(rng.uniform(1.5, 3.0), max(0.6 * dur, 0.5)), rise=rng.uniform(0.15, 0.35),
                 wash=rng.uniform(1.0, 2.5), peak=peak)


def _build_ventriculogram(scene):
    rng, a = scene.rng, scene.anatomy
    heart = a.heart
    u = rng.random()
    view = ((-30 + rng.uniform(-10, 10), rng.uniform(-10, 10)) if u < 0.6 else
            (rng.uniform(40, 60), rng.uniform(-5, 20)) if u < 0.9 else (rng.uniform(-50, 70), rng.uniform(-30, 30)))
    lv = _lv_points(rng, a)
    fit_camera(scene, np.concatenate([lv[0], a.ao0[None]]), (1.3, 3.0), view, rng.uniform(0.5, 0.8))
    t_inj, _ = run_timing(rng, scene.dur)
    # peak chosen so the full cavity attenuates 0.8-1.8 (dark, not a black hole)
    bolus = _power_bolus(rng, t_inj, scene.dur, rng.uniform(0.7, 1.6) / (1.2 * heart.radius * scene.k_iod))
    tip = a.lv_c + rng.uniform(0.0, 0.3) * 0.42 * heart.length * heart.axis
    cath = catheter(scene, tip, heart.axis + rng.normal(0, 0.3, 3), "femoral" if rng.random() < 0.7 else "radial",
                    pigtail=True, via=[a.ao0 + 10 * unit(a.aorta_ctrl[1] - a.ao0)])
    _lv_layer(scene, bolus, lv, from_uv=scene.cam.project(tip[None])[0])
    aorta = a.aorta()
    scene.add_contrast([aorta], Bolus((t_inj + rng.uniform(0.3, 0.6),), dur=bolus.dur, rise=0.3, wash=1.5,
                                      peak=bolus.peak * rng.uniform(0.15, 0.35)),
                       rng.uniform(200, 400), max_s=rng.uniform(40, 110))
    if rng.random() < 0.2:  # mitral regurgitation fills the left atrium
        la = (heart.base - 0.25 * heart.length * heart.axis - 0.3 * heart.radius * heart.e_ant
              + 0.1 * heart.radius * heart.e_left)
        blob = Vessel(np.array([la, la + 0.5 * scene.cam.right]), np.full(2, rng.uniform(18, 25)), np.zeros(2))
        scene.add_contrast([blob],
                           Bolus((t_inj + 0.5,), dur=bolus.dur, rise=0.5, wash=2.0, peak=bolus.peak * 0.25), 1.0)
    add_catheter(scene, cath, Bolus((-1e3,), dur=1e9))
    small_extras(scene, None)
    scene.meta.update(t_inj=round(t_inj, 3))


def _build_aortogram(scene):
    rng, a = scene.rng, scene.anatomy
    aorta = a.aorta()
    top = int(np.argmax(aorta.pts[:, 2]))
    branches = []
    for dj, dx, r in ((-10, -15, 6.0), (0, 0, 4.0), (12, 15, 4.5)):  # innominate, LCC, LSA
        j = int(np.clip(top + dj, 0, len(aorta.r) - 1))
        st = aorta.pts[j] + [0, 0, 0.7 * a.r_ao]
        bp = spline([st, st + [dx, rng.uniform(-10, 10), 40], st + [2 * dx, rng.uniform(-15, 15), 110]], 40, 2)
        branches.append(Vessel(bp, np.full(40, r * rng.uniform(0.85, 1.15)), aorta.s[j] + arclen(bp),
                               depth=1))
    view = (rng.uniform(25, 65), rng.uniform(-15, 15)) if rng.random() < 0.7 else coronary_view(rng, "left")
    near = aorta.pts[aorta.s < 230]
    fit_camera(scene, np.concatenate([near, a.heart.shell()[::3]]), (1.2, 2.4), view, rng.uniform(0.75, 1.0))
    t_inj, _ = run_timing(rng, scene.dur)
    bolus = _power_bolus(rng, t_inj, scene.dur, rng.uniform(0.9, 2.0) / (2.4 * a.r_ao * scene.k_iod))
    speed = rng.uniform(250, 500)
    scene.add_contrast([aorta] + branches, bolus, speed)
    if rng.random() < 0.6:  # ostia and proximal coronaries fill a little from the root
        for tree in (a.left_tree(rng), a.right_tree(rng)):
            scene.add_contrast(tree, Bolus((t_inj + 0.1,), dur=bolus.dur, rise=0.3, wash=1.0,
                                                  peak=rng.uniform(0.15, 0.35)), 150.0, max_s=rng.uniform(15, 45))
    if rng.random() < 0.2:  # aortic regurgitation: faint LV
        _lv_layer(scene, Bolus((t_inj + 0.5,), dur=bolus.dur, rise=0.6, wash=2.0,
                               peak=rng.uniform(0.1, 0.4) / (0.84 * a.heart.radius * scene.k_iod)))
    up = unit(a.aorta_ctrl[1] - a.ao0)
    tip = a.ao0 + up * rng.uniform(12, 22) + rng.normal(0, 3, 3)
    cath = catheter(scene, tip, -up + rng.normal(0, 0.3, 3), "femoral" if rng.random() < 0.7 else "radial",
                    pigtail=True)
    add_catheter(scene, cath, Bolus((-1e3,), dur=1e9))
    small_extras(scene, None)
    scene.meta.update(t_inj=round(t_inj, 3))


BUILDERS = {
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
assert set(BUILDERS) == set(KINDS), "every catalogued kind needs a builder"
