"""A small test model that decides something: its scores spread from near 0 to near 1.

The tiny untrained X3D-S scores every clip about 0.5 (0.4994-0.5003), so an
export that output a constant would pass an agreement check on it. This one
is the same tiny X3D-S (8 frames of 64x64) with its last layer fitted in
closed form (ridge regression on the pooled features) to the labels of the
clips it is given: P(unsatisfactory) is high for unsatisfactory phantoms and
low for satisfactory ones, so AUC and decisions at the threshold mean
something, and a constant or a broken export fails the bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MARGIN_LOGIT = 3.0  # fitted logit of a clip: +3 unsatisfactory, -3 satisfactory (P about 0.95 / 0.05)


def make_deciding_checkpoint(path: Path, clips, config, *, ridge: float = 1e-2) -> Path:
    """Save to `path` a tiny X3D-S whose head separates `clips` (LabelledClip) by their labels."""
    import torch

    from angiogate.clip.input import model_input
    from angiogate.engines.model import ModelInfo, build_network, save_checkpoint

    torch.manual_seed(0)
    info = ModelInfo(arch="x3d_s", num_frames=8, crop_size=64, mean=0.45, std=0.225, threshold=0.5,
                     version="x3d_s-deciding-test")
    network = build_network("x3d_s", num_frames=8, crop_size=64, num_outputs=info.num_outputs).eval()
    head = network.blocks[-1].proj
    inputs = torch.from_numpy(np.stack([model_input(clip.path, info, config) for clip in clips]))
    captured = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    with torch.inference_mode():
        network(inputs)
    hook.remove()
    features = captured[0].reshape(len(clips), -1).double()
    centre = features.mean(dim=0)
    scale = features.std(dim=0).clamp_min(1e-6)
    standard = (features - centre) / scale
    targets = torch.tensor([MARGIN_LOGIT if clip.target else -MARGIN_LOGIT for clip in clips], dtype=torch.float64)
    # Dual ridge (fewer clips than features): w = X^T (X X^T + lambda n I)^-1 y.
    gram = standard @ standard.T
    weights = standard.T @ torch.linalg.solve(gram + ridge * len(clips) * torch.eye(len(clips), dtype=gram.dtype),
                                              targets)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = (weights / scale).float()
        head.bias[1] = float(-(weights / scale) @ centre)
    return save_checkpoint(path, network, info)
