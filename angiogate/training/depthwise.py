"""A depthwise 3D convolution whose backward pass is fast on the CPU.

X3D-S's 3x3x3 (and stem 5x1x1) convolutions are depthwise (groups = channels).
PyTorch's CPU backward for a grouped Conv3d fell to a slow reference path
(`aten::convolution_backward`): on a 2-core EPYC it was ~95% of a training
step, while the forward of the same layer (oneDNN) takes milliseconds. In
fp32, torch 2.14.1 no longer does (a whole step: 6.63 s PyTorch's, 6.27 s
this); in bf16 autocast it still does (14.23 s PyTorch's, 3.68 s this), and
bf16 is how a CPU with native bf16 trains (`angiogate.training.device`).

`DepthwiseConv3dFunction` keeps PyTorch's forward and computes the same
gradients with fast ops:
  - d input: the forward depthwise convolution of the output gradient with the
    flipped kernel (for a strided layer, phase by phase: each phase's input
    positions from its own taps, on the output's grid);
  - d weight: the correlation of the padded input with the output gradient,
    itself a depthwise convolution (the gradient as the kernel), strided layers
    split by phase so that no (slow) dilated convolution is needed;
  - d bias: the output gradient summed per channel.
The result equals the reference to float rounding (tests/test_train_speed.py).

`use_fast_depthwise(network)` swaps it into every depthwise Conv3d of a
network in place; parameter names and the checkpoint's state dict do not
change. Only training uses it; serving runs forward passes alone.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


class DepthwiseConv3dFunction(torch.autograd.Function):
    """conv3d(x, weight, bias, stride, padding, groups=C) with a fast backward; dilation 1."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, bias, stride, padding):
        if torch.is_autocast_enabled("cpu"):  # keep the input as the convolution takes it: no recast
            x = x.to(torch.get_autocast_dtype("cpu"))  # in the backward, half the bytes saved
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv3d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # under the forward's autocast state: bf16 in, bf16 out
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        channels = x.shape[1]
        kernel = weight.shape[2:]
        grad_x = grad_w = grad_b = None
        layout = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) \
            else torch.contiguous_format
        grad_out = grad_out.contiguous(memory_format=layout)
        if ctx.needs_input_grad[0]:
            if stride == (1, 1, 1):
                grad_x = F.conv3d(grad_out, weight.flip(2, 3, 4), None, 1,
                                  tuple(k - 1 - p for k, p in zip(kernel, padding)), 1, channels)
            else:
                grad_x = _strided_input_grad(grad_out, weight, x.shape, stride, padding, layout)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, kernel, stride, padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None, None


def _phases(size: int, stride: int, padding: int) -> list[tuple[int, int, int, int]]:
    """Along one axis of a strided layer: for each phase r (input positions i with (i + p) mod s
    = r), the first such i, its index q = (i + p - r) / s in the phase's output, and how many."""
    phases = []
    for r in range(stride):
        first = (r - padding) % stride
        count = len(range(first, size, stride))
        if count:
            phases.append((r, first, (first + padding - r) // stride, count))
    return phases


def _strided_input_grad(grad_out, weight, shape, stride, padding, layout) -> torch.Tensor:
    """d loss / d input of a strided depthwise conv3d, phase by phase.

    The input positions of one phase per axis (every s-th, from its offset) take their
    gradient from the kernel taps of that phase alone (w[r::s]): a stride-1 ("full")
    depthwise convolution of the output gradient with those taps flipped, as large as the
    output. A stride of 2 in height and width makes four such convolutions on the output's
    grid rather than one over the input's grid with zeros between (4x the work), and no
    zero-filled copy."""
    channels = shape[1]
    grad_x = torch.empty(shape, dtype=grad_out.dtype, memory_format=layout)
    axes = [_phases(n, s, p) for n, s, p in zip(shape[2:], stride, padding)]
    for (rt, it, qt, ct), (rh, ih, qh, ch), (rw, iw, qw, cw) in itertools.product(*axes):
        taps = weight[:, :, rt::stride[0], rh::stride[1], rw::stride[2]]
        target = grad_x[:, :, it::stride[0], ih::stride[1], iw::stride[2]]
        if 0 in taps.shape:  # a stride longer than the kernel: positions no tap reaches
            target.zero_()
            continue
        full = F.conv3d(grad_out, taps.flip(2, 3, 4), None, 1, tuple(n - 1 for n in taps.shape[2:]), 1, channels)
        # Positions past the last window reached by no output: zeros beyond `full`.
        short = [max(0, q + c - n) for q, c, n in zip((qt, qh, qw), (ct, ch, cw), full.shape[2:])]
        if any(short):
            full = F.pad(full, (0, short[2], 0, short[1], 0, short[0]))
        target.copy_(full[:, :, qt:qt + ct, qh:qh + ch, qw:qw + cw])
    return grad_x


def _weight_grad(x, grad_out, kernel, stride, padding) -> torch.Tensor:
    """d loss / d weight of a depthwise conv3d: per channel, the correlation of the padded
    input with the output gradient, summed over the batch.

    Computed as one depthwise conv3d with batch x channels groups (the gradient is the
    kernel). A strided layer's taps are split by phase (the input's every s-th element from
    offset 0..s-1) so that no dilated convolution is needed: PyTorch's dilated CPU
    convolution is the slow path this module avoids. The convolution pads: no zero-filled
    copy of the input is written first."""
    batch, channels = x.shape[:2]
    groups = channels * batch
    # As (1, C x N, T, H, W) laid out channels-last (group c x N + n innermost): from a
    # channels-last x (N, T, H, W, C in memory) the copy only swaps the two small innermost
    # axes, and oneDNN's depthwise kernels take this layout. Channel-major (C, N, T, H, W)
    # took about 1.5x as long per layer.
    grouped = x.permute(2, 3, 4, 1, 0).contiguous()
    grouped = grouped.view(1, *grouped.shape[:3], groups).permute(0, 4, 1, 2, 3)
    # (C x N, 1, T', H', W') in one copy, contiguous as a convolution's weight must be
    kernel_g = grad_out.transpose(0, 1).reshape(groups, 1, *grad_out.shape[2:])
    grad_w = x.new_empty((channels, 1, *kernel))
    per_axis = [[_tap_phase(a, n, o, s, p, k) for a in range(min(s, k))]
                for n, o, s, p, k in zip(x.shape[2:], grad_out.shape[2:], stride, padding, kernel)]
    for (at, st, pt, ot, tt), (ah, sh, ph, oh, th), (aw, sw, pw, ow, tw) in itertools.product(*per_axis):
        part = grouped[:, :, st::stride[0], sh::stride[1], sw::stride[2]]
        out = F.conv3d(part, kernel_g, None, 1, (pt, ph, pw), 1, groups)
        out = out[0, :, ot:ot + tt, oh:oh + th, ow:ow + tw].reshape(channels, batch, tt, th, tw).sum(1)
        grad_w[:, 0, at::stride[0], ah::stride[1], aw::stride[2]] = out
    return grad_w


def _tap_phase(phase: int, size: int, out_size: int, stride: int, padding: int, kernel: int):
    """Along one axis, the taps phase, phase + s, ... of a strided layer's kernel meet the
    input's every s-th element from `start`, shifted right by d = ceil((p - phase) / s)
    (the padding). Returns (phase, start, the convolution's symmetric padding, where the
    taps' correlations start in its output, how many taps)."""
    start = (phase - padding) % stride
    shift = (start - (phase - padding)) // stride
    length = len(range(start, size, stride))
    taps = len(range(phase, kernel, stride))
    pad = max(shift, taps - shift - length + out_size - 1, 0)
    return phase, start, pad, pad - shift, taps


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv3d) and module.groups > 1 and module.groups == module.in_channels
            == module.out_channels and _triple(module.dilation) == (1, 1, 1)
            and not isinstance(module.padding, str) and module.padding_mode == "zeros"
            and all(p <= k - 1 for p, k in zip(_triple(module.padding), module.kernel_size)))


class FastDepthwiseConv3d(nn.Conv3d):
    """An nn.Conv3d (same parameters and state dict) whose CPU training pass uses
    `DepthwiseConv3dFunction`; on CUDA, or without autograd, the plain conv3d runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return super().forward(x)
        return DepthwiseConv3dFunction.apply(x, self.weight, self.bias, _triple(self.stride),
                                             _triple(self.padding))


def use_fast_depthwise(network: nn.Module) -> int:
    """Make every depthwise Conv3d of `network` a `FastDepthwiseConv3d`, in place; returns how many.

    Only the modules' class changes: weights, names and state dicts stay as they were."""
    count = 0
    for module in network.modules():
        if is_depthwise(module) and type(module) is nn.Conv3d:
            module.__class__ = FastDepthwiseConv3d
            count += 1
    return count
