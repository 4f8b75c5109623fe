"""The classifier in PyTorch: the checkpoint's network in fp32, on CUDA or the CPU.

The reference every export is checked against, and the engine that serves
when there is a GPU, no OpenVINO, or no export yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from angiogate.engines.base import Prediction, checkpoint_version, split_logits
from angiogate.engines.model import file_digest, load_checkpoint


class TorchEngine:
    """The checkpoint's network in PyTorch, fp32, on CUDA or CPU."""

    precision = "fp32"

    def __init__(self, checkpoint: Path, *, device: str = "auto", threads: int = 0):
        if threads > 0:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        network, info = load_checkpoint(checkpoint)
        self.network = network.to(self.device)
        self.info = info
        self.digest = file_digest(checkpoint)
        self.name = f"torch-{self.device.type}"
        self.version = f"{checkpoint_version(info, self.digest)}/{self.name}/fp32"

    @torch.inference_mode()
    def predict(self, clips: np.ndarray) -> Prediction:
        batch = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32)).to(self.device)
        logits = self.network(batch).float().cpu().numpy()
        return split_logits(logits, len(self.info.reason_classes))
