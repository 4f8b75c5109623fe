"""Where training and evaluation run, and in what precision: one code path for CUDA and the CPU.

`model.device` (auto | cpu | cuda; `retrain --device`, `evaluate --device`) picks the device:
auto takes CUDA when a GPU is present, else the CPU; cuda without a GPU is an error naming the
key rather than a silent CPU run. On CUDA the forward passes run under `torch.autocast`
(float16) and the loss is scaled by a `GradScaler`, so fp16 gradients do not underflow. On a
CPU that computes bfloat16 natively (avx512_bf16 or amx_bf16 in its flags, read at run time)
they run under `torch.autocast` in bfloat16: the same call, no scaler needed (bf16 has fp32's
range); any other CPU stays in fp32 (emulated bf16 is slower than fp32). The weights, the
optimiser and the loss stay fp32 throughout. Checkpoints hold their weights on the CPU
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


def autocast_dtype(device: str, *, training: bool = True, cpu_bf16: bool | None = None) -> torch.dtype | None:
    """The dtype forward passes autocast to on `device`: float16 on CUDA; on the CPU bfloat16 for
    training steps when it computes bf16 natively (`cpu_bf16`, default: this CPU's flags), and
    None (fp32) for scoring, where the served model's fp32 numbers set the threshold."""
    if device == "cuda":
        return torch.float16
    if not training:
        return None
    if cpu_bf16 is None:
        from angiogate.engines.cpu import native_bf16

        cpu_bf16 = native_bf16()
    return torch.bfloat16 if cpu_bf16 else None


def precision_name(device: str) -> str:
    """How training steps run on `device` here: 'fp16 mixed precision', 'bf16 mixed precision' or 'fp32'."""
    return {torch.float16: "fp16 mixed precision", torch.bfloat16: "bf16 mixed precision"}.get(
        autocast_dtype(device), "fp32")


def mixed_precision(device: str, *, training: bool = True, cpu_bf16: bool | None = None):
    """The forward pass's context: autocast to `autocast_dtype(...)`, or nothing (fp32) when None."""
    dtype = autocast_dtype(device, training=training, cpu_bf16=cpu_bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def grad_scaler(device: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled on CUDA only; disabled it passes the loss and the step through."""
    return torch.amp.GradScaler("cuda", enabled=device == "cuda")
