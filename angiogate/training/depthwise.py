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
    flipped kernel (for a strided layer, of the output gradient spread back onto
    the input grid with zeros between);
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
            spread = grad_out
            if stride != (1, 1, 1):
                # Put each output gradient back where its window started; the remainder
                # of the input the strided windows never reached gets zeros on the right.
                size = [(o - 1) * s + 1 for o, s in zip(grad_out.shape[2:], stride)]
                extra = [i + 2 * p - k - (z - 1) for i, p, k, z in zip(x.shape[2:], padding, kernel, size)]
                spread = grad_out.new_zeros(grad_out.shape[:2] + tuple(n + e for n, e in zip(size, extra)))
                spread = spread.contiguous(memory_format=layout)
                spread[:, :, :size[0]:stride[0], :size[1]:stride[1], :size[2]:stride[2]] = grad_out
            grad_x = F.conv3d(spread, weight.flip(2, 3, 4), None, 1,
                              tuple(k - 1 - p for k, p in zip(kernel, padding)), 1, channels)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, kernel, stride, padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None, None


def _weight_grad(x, grad_out, kernel, stride, padding) -> torch.Tensor:
    """d loss / d weight of a depthwise conv3d: per channel, the correlation of the padded
    input with the output gradient, summed over the batch.

    Computed as one depthwise conv3d with batch x channels groups (the gradient is the
    kernel). A strided layer's taps are split by phase (the input's every s-th element from
    offset 0..s-1) so that no dilated convolution is needed: PyTorch's dilated CPU
    convolution is the slow path this module avoids."""
    batch, channels = x.shape[:2]
    # Zero-padded in one copy, as (1, C x N, T + 2p, H + 2p, W + 2p) laid out channels-last
    # (group c x N + n innermost): from a channels-last x (N, T, H, W, C in memory) the copy
    # only swaps the two small innermost axes, and oneDNN's depthwise kernels take this layout.
    # Channel-major (C, N, T, H, W) took about 1.5x as long per layer (copies 17% of a step).
    (pt, ph, pw), (t, h, w) = padding, x.shape[2:]
    padded = x.new_zeros((1, t + 2 * pt, h + 2 * ph, w + 2 * pw, channels, batch))
    padded[0, pt:pt + t, ph:ph + h, pw:pw + w] = x.permute(2, 3, 4, 1, 0)
    padded = padded.view(*padded.shape[:4], channels * batch).permute(0, 4, 1, 2, 3)
    kernel_g = grad_out.permute(2, 3, 4, 1, 0).reshape(*grad_out.shape[2:], channels * batch)
    kernel_g = kernel_g.permute(3, 0, 1, 2).unsqueeze(1)  # (C x N, 1, T', H', W')
    grad_w = x.new_zeros((channels, 1, *kernel))
    phases = [(a, b, c) for a in range(min(stride[0], kernel[0])) for b in range(min(stride[1], kernel[1]))
              for c in range(min(stride[2], kernel[2]))]
    for phase in phases:
        part = padded[:, :, phase[0]::stride[0], phase[1]::stride[1], phase[2]::stride[2]]
        taps = [len(range(p, k, s)) for p, k, s in zip(phase, kernel, stride)]
        out = F.conv3d(part, kernel_g, None, 1, 0, 1, channels * batch)
        out = out[0, :, :taps[0], :taps[1], :taps[2]].reshape(channels, batch, *taps).sum(1)
        grad_w[:, 0, phase[0]::stride[0], phase[1]::stride[1], phase[2]::stride[2]] = out
    return grad_w


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
