"""Phantoms against real coronary runs, and golden pixels per phantom kind.

The realism test renders a few satisfactory phantoms the way a real Siemens run
is recorded (512x512, 7.5 fps, 30 frames), measures them with
angiogate.synth.realism (the definitions of shared/realism/measure.py) and
fails when a phantom median leaves the real runs' p10-p90 range on the
statistics that matter (see docs/realism.md for why these). The real figures
are read from ../shared/realism/real_stats.json; without it the test fails (peers.missing).

The golden test pins the rendered pixels of every kind at 64x64 so that a
refactor of the renderer can show it draws the same clips. A deliberate change
of what the renderer draws updates GOLDEN (print it with
``python tests/test_realism.py``) and says so in the commit. The digests hold
for one numpy and OpenCV build (the renderer's JPEG pass uses OpenCV's
libjpeg): after an upgrade of either, check a failure against the previous
commit before believing the renderer changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from angiogate.synth import KINDS, render_clip
from peers import need
from angiogate.synth.realism import clip_statistics, summarise, thin

REAL_STATS = Path(__file__).resolve().parents[2] / "shared" / "realism" / "real_stats.json"

# the statistics that say whether a phantom looks like a real run (docs/realism.md)
MATTER = ("dark_fraction", "skeleton_px", "width_px_median", "texture_std", "spectrum_slope", "noise_std",
          "black_fraction", "p50", "p99")

GOLDEN_ARGS = dict(seed=1, n_frames=6, frame_rate_hz=7.5, size=64)
# Floating point in numpy/OpenCV's SIMD paths is not bit-identical across CPUs: the same code
# draws a left coronary's bytes differently on an AVX-512 bf16/VNNI AMD EPYC (session 10)
# than on the AVX2 EPYC and the Xeon these were recorded on. Each such CPU's digest is listed;
# any other digest is a change of the renderer (or a CPU not seen yet: then add it, after
# checking the other kinds still match).
OTHER_CPUS = {
    "left_coronary": {"7841dc54fa79a72fd050eb4601b2a1a4bd43ff4a4218a71c3012d62c489551a0"},
}
GOLDEN = {
    "left_coronary": "9df8fb8cdd1b419aea80db04c93b60e251111e2333efb1c37bd5a8b2363f8d06",
    "right_coronary": "e1ccfe9872b7f0589efe8b8cf0f1cf53307f91d42505de7b06ff8100766963b5",
    "ventriculogram": "900d688bb9baf1d3d855c622507b767b1d5e21c2413242397d84d47993513b81",
    "aortogram": "fb7229e201c3ed4d078bcd0d6260fbc36ed7a9d2408e4d794c2acc20eedddfe1",
    "catheter_only": "212fde8341f886e42dfdd4f96ede7cbf5d47b7ce94b728d900c05a3ba209642d",
    "faint_contrast": "3ac5a7be9807e9f43570d34d495dd22b4f83ca75f10bc0b10e9a04b02100824e",
    "reflux": "9556ccb1e9d3c9712828156e82917fc0ddcdd260ec2f02157977a0c12372c565",
    "stopped_early": "02371e16cd47ad60369f2ed0389cc97c86c0181907fe18df3caae834e58d054d",
    "bypass_graft": "a52b0a26289c6238786d0b5b6a5b3e0a87e20227598225b58771cbb1e3ee4b5a",
    "device_obstruction": "087e47de2d7cea7ae59fbcccb61b8990d6481e18178c56f8393715267e3ca8b9",
}


def _digest(kind: str) -> str:
    clip = render_clip(kind, **GOLDEN_ARGS)
    return hashlib.sha256(clip.tobytes() + str(clip.shape).encode()).hexdigest()


@pytest.mark.parametrize("kind", list(KINDS))
def test_golden_pixels(kind):
    digest = _digest(kind)
    assert digest in {GOLDEN[kind], *OTHER_CPUS.get(kind, ())}, \
        f"{kind}: the renderer draws different pixels than it did (sha256 {digest})"


def test_thinning_gives_a_one_pixel_line():
    mask = np.zeros((40, 60), bool)
    mask[15:22, 5:55] = True  # a bar 7 px thick
    skel = thin(mask)
    assert skel[:, 10:50].sum(0).max() == 1 and 35 <= skel.sum() <= 55


@pytest.fixture(scope="module")
def phantom_summary():
    rows = []
    for seed in range(4):
        for kind in ("left_coronary", "right_coronary"):
            rows.append(clip_statistics(render_clip(kind, 500 + seed, 30, 7.5, 512), 7.5))
    return summarise(rows)


@pytest.mark.parametrize("name", MATTER)
def test_phantom_medians_within_real_range(phantom_summary, name):
    need(REAL_STATS.exists(), f"{REAL_STATS} is absent: no real figures to compare with")
    real = json.loads(REAL_STATS.read_text())["real"][name]
    got = phantom_summary[name]["median"]
    assert real["p10"] <= got <= real["p90"], (
        f"{name}: phantom median {got:.4g} outside the real p10-p90 {real['p10']:.4g}-{real['p90']:.4g}")


if __name__ == "__main__":
    for k in KINDS:
        print(f'    "{k}": "{_digest(k)}",')
