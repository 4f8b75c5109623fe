"""Keep only the vein grafts (SVG) of an `angiogate synth --kinds bypass_graft` set.

Candidate 11's extra data (training-state/README.md). The bundled model's
misses among bypass-graft phantoms are mostly vein grafts (seed 771: 25 of 64
SVG missed, 3 of 36 LIMA), so this set adds SVGs only. Which graft a clip
holds is not in labels.csv; it is recomputed here from the clip's seed by
building the clip's scene again (the same draws `angiogate synth` made), and
labels.csv is rewritten to list the SVG clips only (the others stay on disk,
unlisted, so training never reads them). labels.all.csv keeps the original.

    python training-state/vein_grafts.py DIR SEED

SEED is the --seed the set was made with. Not part of the package.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from angiogate.synth import phantom
from angiogate.synth.anatomy import Anatomy
from angiogate.synth.builders import BUILDERS
from angiogate.synth.scene import Scene


def graft_type(kind: str, clip_seed: int, frames: int, fps: float, size: int) -> str:
    rng = phantom._rng(kind, clip_seed)  # the draws render_clip_meta makes, up to the scene
    scene = Scene(rng, size, frames / fps, Anatomy(rng), k_iod=rng.uniform(0.2, 0.36))
    BUILDERS[kind](scene)
    return scene.meta["graft"]


def main(folder: str, seed: int) -> None:
    d = Path(folder)
    src = d / "labels.all.csv"
    if not src.exists():
        shutil.copyfile(d / "labels.csv", src)
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    size = int(json.loads((d / "synth.json").read_text())["size"])
    kept = []
    for i, row in enumerate(rows):  # rows are in the generator's job order
        if row["kind"] != "bypass_graft":
            raise SystemExit(f"{row['file']}: {row['kind']}, not bypass_graft")
        clip_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        if graft_type(row["kind"], clip_seed, int(row["frames"]), float(row["frame_rate_hz"]), size) == "SVG":
            kept.append(row)
    with open(d / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    print(f"{d}: kept {len(kept)} vein grafts of {len(rows)} clips")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
