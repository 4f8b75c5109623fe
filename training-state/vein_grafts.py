"""Keep only the vein grafts (SVG) of an `angiogate synth --kinds bypass_graft` set.

Candidate 11's extra data (training-state/README.md). The bundled model's
misses among bypass-graft phantoms are mostly vein grafts (seed 771: 25 of 64
SVG missed, 3 of 36 LIMA), so this set adds SVGs only. Which graft a clip
holds is not in labels.csv; it is recomputed here by rendering the clip again
from its seed (`render_clip_meta`, as `angiogate synth` did), and
labels.csv is rewritten to list the SVG clips only (the others stay on disk,
unlisted, so training never reads them). labels.all.csv keeps the original.

    python training-state/vein_grafts.py DIR [TARGET,...]

With targets (e.g. `LAD,RCA`, candidate 15's set), only vein grafts to those
arteries are kept: the two the bundled model misses most (seed 771: AUC 0.78
and 0.85). The set's seed and size are read from its synth.json. Not part of
the package.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from angiogate.synth.phantom import render_clip_meta


def main(folder: str, targets: str = "") -> None:
    d = Path(folder)
    wanted = set(filter(None, targets.split(",")))
    src = d / "labels.all.csv"
    if not src.exists():
        shutil.copyfile(d / "labels.csv", src)
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    made = json.loads((d / "synth.json").read_text())
    seed, size = int(made["seed"]), int(made["size"])
    kept = []
    for i, row in enumerate(rows):  # rows are in the generator's job order
        if row["kind"] != "bypass_graft":
            raise SystemExit(f"{row['file']}: {row['kind']}, not bypass_graft")
        clip_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])  # as generate.py draws it
        _, meta = render_clip_meta(row["kind"], clip_seed, int(row["frames"]), float(row["frame_rate_hz"]), size)
        if meta["graft"] == "SVG" and (not wanted or meta.get("target") in wanted):
            kept.append(row)
    with open(d / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    to = f" to {', '.join(sorted(wanted))}" if wanted else ""
    print(f"{d}: kept {len(kept)} vein grafts{to} of {len(rows)} clips")


if __name__ == "__main__":
    main(*sys.argv[1:3])
