"""Where training and evaluation run, and in what precision: one code path for CUDA and the CPU.

`model.device` (auto | cpu | cuda; `retrain --device`, `evaluate --device`) picks the device:
auto takes CUDA when a GPU is present, else the CPU; cuda without a GPU is an error naming the
key rather than a silent CPU run. On CUDA the forward passes run under `torch.autocast`
(float16) and the loss is scaled by a `GradScaler`, so fp16 gradients do not underflow; on the
CPU both are disabled (fp32, the same calls). Checkpoints hold their weights on the CPU
(`angiogate.engines.model.save_checkpoint`), so a model trained on a GPU serves anywhere.
"""

from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda")


def training_device(config_device: str, cuda_available: bool) -> str:
    """'cuda' or 'cpu' for `model.device` (`config_device`) on a machine with or without CUDA."""
    if config_device not in DEVICES:
        raise ValueError(f"model.device must be one of {', '.join(DEVICES)}, not {config_device!r}")
    if config_device == "cuda" and not cuda_available:
        raise ValueError("model.device (or --device) is cuda but torch sees no CUDA device here; "
                         "use auto or cpu")
    if config_device == "auto":
        return "cuda" if cuda_available else "cpu"
    return config_device


def mixed_precision(device: str):
    """The forward pass's context: float16 autocast on CUDA, nothing (fp32) on the CPU."""
    if device == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled on CUDA only; disabled it passes the loss and the step through."""
    return torch.amp.GradScaler("cuda", enabled=device == "cuda")
