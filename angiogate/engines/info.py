"""What a checkpoint says about itself, without torch: its facts, its classes, its file's digest.

Kept apart from `model.py` (the networks, which need torch) so the OpenVINO
path (`angiogate score`, a gate on the CPU) starts without importing torch:
an export's sidecar carries a `ModelInfo`, and exports are keyed by
`file_digest`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REASON_CLASSES = ("non_coronary", "no_contrast", "partial", "device", "graft")
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "default.pt"


@dataclass
class ModelInfo:
    """What a checkpoint says about itself (everything but the weights)."""

    arch: str
    num_frames: int
    crop_size: int
    mean: float
    std: float
    threshold: float
    version: str
    reason_classes: tuple[str, ...] = REASON_CLASSES
    description: str = ""
    input_channels: str = "grey"  # angiogate.clip.preprocess.INPUT_CHANNELS
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return 2 + len(self.reason_classes)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
