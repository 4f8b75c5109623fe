"""Inference engines: run the classifier on a batch of preprocessed clips.

The judge talks to an `InferenceEngine` only: give it float32 clips shaped
(B, 3, T, S, S), get back the probability of `unsatisfactory` per clip and
the reason-head probabilities. Torch (CUDA when present, else CPU) is the
engine today; faster CPU engines plug in behind the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from angiogate.judge.model import ModelInfo, file_digest, load_checkpoint


@dataclass(frozen=True)
class Prediction:
    unsatisfactory_probability: np.ndarray  # (B,)
    reason_probabilities: np.ndarray        # (B, len(reason_classes))


class InferenceEngine(Protocol):
    info: ModelInfo
    name: str
    version: str

    def predict(self, clips: np.ndarray) -> Prediction: ...


def split_logits(logits: torch.Tensor, n_reasons: int) -> Prediction:
    binary = torch.softmax(logits[:, :2].float(), dim=1)[:, 1]
    reasons = torch.softmax(logits[:, 2:2 + n_reasons].float(), dim=1) if n_reasons else logits[:, :0]
    return Prediction(binary.cpu().numpy(), reasons.cpu().numpy())


class TorchEngine:
    """The checkpoint's network in PyTorch, fp32, on CUDA or CPU."""

    def __init__(self, checkpoint: Path, *, device: str = "auto", threads: int = 0):
        if threads > 0:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        network, info = load_checkpoint(checkpoint)
        self.network = network.to(self.device)
        self.info = info
        self.name = f"torch-{self.device.type}"
        # The version names the weights exactly: same name, other bytes is a new version.
        self.version = f"{info.version}+{file_digest(checkpoint)[:12]}"

    @torch.inference_mode()
    def predict(self, clips: np.ndarray) -> Prediction:
        batch = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32)).to(self.device)
        logits = self.network(batch)
        return split_logits(logits, len(self.info.reason_classes))


def open_engine(checkpoint: Path, *, engine: str = "torch", device: str = "auto", threads: int = 0) -> InferenceEngine:
    if engine == "torch":
        return TorchEngine(checkpoint, device=device, threads=threads)
    raise ValueError(f"unknown inference engine {engine!r}")
