"""synth.json beside a phantom data set: which generator made it, with which settings.

`angiogate synth` writes it next to labels.csv; training reads it so a model
card can name the phantom generator's version and the command that makes
the same clips again (generation is deterministic by seed).

The generator's version is a digest of the modules that decide what a clip
holds (the renderer's modules, catalogue, generator, DICOM writer); this
module, the contact sheet and the realism statistics are left out, since
they change no clip.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

MANIFEST = "synth.json"
_CONTENT_MODULES = ("phantom.py", "anatomy.py", "background.py", "builders.py", "devices.py", "display.py",
                    "drawing.py", "geometry.py", "motion.py", "projection.py", "raster.py", "scene.py",
                    "kinds.py", "generate.py", "dicom_writer.py")
_NOT_CONTENT = ("__init__.py", "manifest.py", "contact_sheet.py", "realism.py")  # change no clip


def generator_version() -> str:
    """`angiogate.synth@<sha256[:12]>` of the modules that shape the clips."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _CONTENT_MODULES:
        digest.update(name.encode() + (here / name).read_bytes())
    return f"angiogate.synth@{digest.hexdigest()[:12]}"


def synth_command(outdir: str | Path, *, per_kind: int, seed: int, size: int, kinds: list[str] | None,
                  syntaxes: list[str] | None) -> str:
    """The `angiogate synth` command line that writes this data set."""
    parts = ["angiogate", "synth", str(outdir), "--per-kind", str(per_kind), "--seed", str(seed)]
    if size != 512:
        parts += ["--size", str(size)]
    if kinds:
        parts += ["--kinds", ",".join(kinds)]
    for syntax in syntaxes or ():
        parts += ["--syntax", syntax]
    return shlex.join(parts)


def write_manifest(outdir: str | Path, *, per_kind: int, seed: int, size: int, kinds: list[str] | None,
                   syntaxes: list[str] | None, clips: int) -> Path:
    outdir = Path(outdir)
    payload = {"generator": generator_version(), "per_kind": per_kind, "seed": seed, "size": size,
               "kinds": list(kinds) if kinds else None, "syntaxes": list(syntaxes) if syntaxes else None,
               "clips": clips, "command": synth_command(outdir, per_kind=per_kind, seed=seed, size=size,
                                                        kinds=kinds, syntaxes=syntaxes)}
    path = outdir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's synth.json, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
