"""The naive scorer `angiogate score` is measured against (issue 16: >= 6x, timed as whole processes).

What a first script would do with the paper's recipe: one clip at a time,
pydicom decodes every frame (`pixel_array`), 16 frames sampled evenly,
resized to 160x160 grey, X3D-S in torch fp32 eager. The network is
untrained: its weights change no operation's cost, and this is a timing
baseline, not a judge. Run as a child so interpreter start, the torch import
and the model build count, as they do for `score`:

    python -m angiogate.bench.naive FILE_OR_FOLDER...

It prints one JSON line per clip.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PAPER_FRAMES = 16
PAPER_SIZE = 160


def _files(arguments: list[str]) -> list[Path]:
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        found += sorted(p for p in path.rglob("*.dcm")) if path.is_dir() else [path]
    return found


def main(arguments: list[str]) -> int:
    import numpy as np
    import pydicom
    import torch
    import torch.nn.functional as F

    from angiogate.engines.model import build_network

    torch.manual_seed(0)
    network = build_network("x3d_s", num_frames=PAPER_FRAMES, crop_size=PAPER_SIZE, num_outputs=2).eval()
    for path in _files(arguments):
        pixels = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float32)
        frames = pixels if pixels.ndim == 3 else pixels[None]
        picked = np.linspace(0, len(frames) - 1, PAPER_FRAMES).round().astype(int)
        clip = torch.from_numpy(frames[picked]).unsqueeze(1)                      # T,1,H,W
        clip = F.interpolate(clip, size=(PAPER_SIZE, PAPER_SIZE), mode="bilinear", align_corners=False)
        clip = (clip - clip.mean()) / (clip.std() + 1e-6)
        clip = clip.repeat(1, 3, 1, 1).permute(1, 0, 2, 3).unsqueeze(0)            # 1,3,T,H,W
        with torch.inference_mode():
            probability = torch.softmax(network(clip), dim=1)[0, 1].item()
        print(json.dumps({"path": str(path), "p_unsatisfactory": round(probability, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
