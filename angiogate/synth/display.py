"""The detector and the vendor's look: field shape, scatter, blur, noise, edge enhancement, grey
mapping, burned-in text and boxes, lossy compression.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .geometry import smoothstep


class Display:
    """Detector and vendor look: field shape, noise, blur, edge enhancement, LUT, text."""

    def __init__(self, rng, size, meta, n_frames, fps):
        self.size = size
        Y, X = np.mgrid[:size, :size].astype(np.float32)
        px = size / 512
        self.att = np.zeros((size, size), np.float32)  # detector-fixed attenuation (vignetting, wedge)
        alpha = np.ones((size, size), np.float32)
        # flat-panel systems (most real runs): no round field, seldom a visible shutter; the
        # periphery is only a little darker (heel effect, vignetting)
        r_c = np.hypot(X - size / 2 + rng.normal(0, 0.05) * size,
                       Y - size / 2 + rng.normal(0, 0.05) * size) / (0.5 * size)
        self.att += rng.uniform(0.0, 0.35) * r_c ** rng.uniform(2, 4)
        self.att += rng.normal(0, 0.12) * (X / size - 0.5) + rng.normal(0, 0.12) * (Y / size - 0.5)
        if rng.random() < 0.07:  # image intensifier: circular field, darker periphery
            c = size / 2 + rng.normal(0, 0.02, 2) * size
            R = rng.uniform(0.46, 0.62) * size
            r = np.hypot(X - c[0], Y - c[1])
            alpha *= smoothstep((R - r) / max(2 * px, 0.6))
            self.att += rng.uniform(0, 0.4) * (r / R) ** 2
        shutter = rng.random()
        if shutter < 0.15:  # black collimator shutters
            ins = rng.uniform(0, 0.1, 4) * size * (rng.random(4) < 0.5)
            e = max(1.5 * px, 0.5)
            alpha *= smoothstep((X - ins[0]) / e) * smoothstep((size - 1 - ins[1] - X) / e)
            alpha *= smoothstep((Y - ins[2]) / e) * smoothstep((size - 1 - ins[3] - Y) / e)
        elif shutter < 0.45:  # semi-transparent collimator leaves: a darker band, not black
            side = int(rng.integers(0, 4))
            depth = rng.uniform(0.03, 0.15) * size
            coord = (X, size - 1 - X, Y, size - 1 - Y)[side]
            self.att += rng.uniform(0.4, 1.2) * smoothstep((depth - coord) / (rng.uniform(2, 10) * px + 0.5))
        if rng.random() < 0.2:  # wedge filter over a lung field
            ang = rng.uniform(0, 2 * math.pi)
            dd = (X - size / 2) * math.cos(ang) + (Y - size / 2) * math.sin(ang) - rng.uniform(0.1, 0.4) * size
            self.att += rng.uniform(0.3, 0.8) * smoothstep(dd / (rng.uniform(2, 15) * px + 0.5))
        self.field = alpha > 0.5
        self.alpha = np.round(alpha * 255).astype(np.uint8)
        border = rng.uniform(5, 25) if rng.random() < 0.3 else 0
        self.border = np.round((255 - self.alpha.astype(np.float32)) * border / 255).astype(np.uint8)
        self.inv_sqrt_n0 = 1 / math.sqrt(rng.uniform(4000, 16000) * (512 / size) ** 2)
        self.blur = rng.uniform(0.8, 1.8) * px
        self.edge = rng.uniform(0.2, 1.2) if rng.random() < 0.7 else 0.0
        self.edge_k = max(int(rng.uniform(4, 12) * px) | 1, 3)
        self.recursive = rng.uniform(0.5, 0.85) if rng.random() < 0.4 else 1.0
        # scatter and veiling glare: a blurred share of the transmitted light lifts dark areas
        self.scatter = rng.uniform(0.05, 0.3)
        self.scatter_sigma = rng.uniform(0.05, 0.15) * size
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
        if rng.random() < 0.5:  # vendor size-curve
            v = 0.5 * v + 0.5 * smoothstep(v)
        self.lut = np.round(out_lo + (out_hi - out_lo) * v ** gamma).astype(np.uint8)
        # lossy compression of the archive or video path (8-bit JPEG), quality per system
        self.jpeg_quality = int(rng.uniform(55, 95)) if rng.random() < 0.55 else 0
        self.ramp = rng.uniform(-0.15, 0.15) if rng.random() < 0.25 else 0.0
        self.ramp_n = int(rng.integers(1, 3))
        self.overlay, self.ov_mask, self.counter = self._text(rng, size, meta, n_frames, fps)
        if rng.random() < 0.2:  # small annotation boxes burned in (e.g. a lesion marked in review)
            boxes = np.zeros((size, size), np.uint8)
            col = int(rng.choice([int(rng.uniform(200, 255)), int(rng.uniform(0, 30))]))
            for _ in range(int(rng.integers(1, 4))):
                w, h = rng.uniform(0.03, 0.12, 2) * size
                x0, y0 = rng.uniform(0.15, 0.8, 2) * size
                cv2.rectangle(boxes, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), 255,
                              max(int(rng.integers(1, 3) * px), 1))
            self.overlay = np.where(boxes > 0, np.uint8(col), self.overlay)
            self.ov_mask = (boxes > 0) if self.ov_mask is None else (self.ov_mask | (boxes > 0))

    def window(self, body_attenuation):
        """Automatic brightness: window on the central field, where exposure control measures."""
        size = self.size
        centre = np.zeros_like(self.field)
        centre[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
        vals = body_attenuation[self.field & centre][::3]
        if vals.size < 16:
            vals = body_attenuation.ravel()
        lo, hi = np.percentile(vals, [2, 98])
        lo, hi = float(lo - self.lo_m), float(hi + self.hi_m)
        if hi - lo < self.min_width:  # a flat central region must not stretch noise over the whole range
            mid = 0.5 * (lo + hi) + self.mid_shift * self.min_width
            lo, hi = mid - self.min_width / 2, mid + self.min_width / 2
        self.lo, self.hi = lo, hi

    def _text(self, rng, size, meta, n, fps):
        ov = np.zeros((size, size), np.uint8)
        if size < 128 or rng.random() < 0.7:  # most archived runs carry their annotations as overlays, not pixels
            return ov, None, None
        a, b = meta.get("primary_angle", 0), meta.get("secondary_angle", 0)
        lines = [f"{'LAO' if a >= 0 else 'RAO'} {abs(a):.0f}  {'CRA' if b >= 0 else 'CAU'} {abs(b):.0f}",
                 f"{fps:g} fps", "PHANTOM^SYNTH", "01-Jan-2026", f"kV {rng.uniform(70, 105):.0f}",
                 f"mA {rng.uniform(300, 900):.0f}", "CATH LAB", f"FOV {rng.choice([17, 20, 22, 25])} cm",
                 f"Ser {rng.integers(1, 30)}", "Cine"]
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX]))
        scale = size / 512 * (rng.uniform(0.35, 0.55) if font != cv2.FONT_HERSHEY_PLAIN else rng.uniform(0.8, 1.2))
        col = int(rng.uniform(170, 255))
        lh = int(max(cv2.getTextSize("Ag", font, scale, 1)[0][1] * 1.8, 6))
        for corner in rng.choice(4, size=int(rng.integers(1, 4)), replace=False):
            k = int(rng.integers(1, 4))
            picks = rng.choice(len(lines), size=k, replace=False)
            for j, li in enumerate(picks):
                txt = lines[li]
                w = cv2.getTextSize(txt, font, scale, 1)[0][0]
                x = 6 if corner in (0, 2) else size - w - 6
                y = lh * (j + 1) if corner in (0, 1) else size - 6 - lh * (k - 1 - j)
                cv2.putText(ov, txt, (int(x), int(y)), font, scale, col, 1, cv2.LINE_AA)
        if rng.random() < 0.3:  # orientation marker
            cv2.putText(ov, rng.choice(["L", "R", "H"]), (int(size * 0.9), int(size * 0.5)), font, scale * 1.5, col, 1,
                        cv2.LINE_AA)
        if rng.random() < 0.25:  # ruler
            x0, y0 = int(size * rng.uniform(0.05, 0.1)), int(size * rng.uniform(0.3, 0.7))
            for i in range(11):
                ln = int(size * (0.02 if i % 5 == 0 else 0.01))
                cv2.line(ov, (x0, y0 + i * int(size * 0.02)), (x0 + ln, y0 + i * int(size * 0.02)), col, 1)
        counter = None
        if rng.random() < 0.3:
            counter = (font, scale, col, (int(size * rng.uniform(0.7, 0.8)), int(size - 8)))
        return ov, ov > 0, counter

    def _scatter(self, L):
        """Scatter and veiling glare: a wide blur of the transmitted intensity added back."""
        size = self.size
        small = max(size // 8, 8)
        inten = cv2.exp(-np.minimum(L, 12.0))
        low = cv2.resize(inten, (small, small), interpolation=cv2.INTER_AREA)
        low = cv2.GaussianBlur(low, (0, 0), max(self.scatter_sigma * small / size, 0.5))
        low = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
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
