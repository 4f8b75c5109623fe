"""The classifier's networks and the checkpoint file that carries them.

Networks are made by builder functions with their shape at the call site
(pytorchvideo's `create_x3d`, torchvision's video ResNets). One linear head
gives 2 + len(reason_classes) logits: the first two are the binary
satisfactory/unsatisfactory output, the rest the reason head. A checkpoint
is a torch file holding the weights and everything needed to use them
(architecture, input size, normalisation, threshold, version, reasons).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from angiogate.clip.preprocess import check_channels
# Re-exported: what a checkpoint says about itself needs no torch (`info.py`).
from angiogate.engines.info import BUNDLED_MODEL, REASON_CLASSES, ModelInfo, file_digest  # noqa: F401

CHECKPOINT_FORMAT = "angiogate-checkpoint/1"


ARCHITECTURES = ("x3d_s", "r3d_18", "r2d_18", "r3d_152", "r2d_152")


class FrameAveraged2D(nn.Module):
    """A 2D image network applied to every frame; the clip's logits are the frames' mean.

    This is the paper's 2D baseline. It takes the same (B, 3, T, H, W) clips as
    the 3D networks, so the serving path does not care which kind it runs.
    """

    def __init__(self, frame_network: nn.Module):
        super().__init__()
        self.frame_network = frame_network

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = clips.shape
        per_frame = clips.transpose(1, 2).reshape(batch * frames, channels, height, width)
        logits = self.frame_network(per_frame)
        return logits.view(batch, frames, -1).mean(dim=1)


def build_network(arch: str, *, num_frames: int, crop_size: int, num_outputs: int) -> nn.Module:
    """A freshly initialised network producing `num_outputs` logits per clip.

    Every network takes float32 clips (B, 3, num_frames, crop_size, crop_size).
    x3d_s: pytorchvideo X3D-S (the paper's pick). r3d_18 / r3d_152: 3D ResNets
    (torchvision VideoResNet; 152 = Bottleneck blocks [3, 8, 36, 3] with full
    3x3x3 convolutions, torchvision's r3d_18 recipe scaled to ResNet-152's
    depth). r2d_18 / r2d_152: torchvision 2D ResNets per frame, logits averaged.
    """
    if arch == "x3d_s":
        with warnings.catch_warnings():  # pytorchvideo 0.1.5 still calls torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from pytorchvideo.models.x3d import create_x3d

        return create_x3d(input_clip_length=num_frames, input_crop_size=crop_size,
                          model_num_class=num_outputs, head_activation=None)
    if arch == "r3d_18":
        from torchvision.models.video import r3d_18

        return r3d_18(weights=None, num_classes=num_outputs)
    if arch == "r3d_152":
        from torchvision.models.video.resnet import BasicStem, Bottleneck, Conv3DSimple, VideoResNet

        return VideoResNet(block=Bottleneck, conv_makers=[Conv3DSimple] * 4, layers=[3, 8, 36, 3],
                           stem=BasicStem, num_classes=num_outputs)
    if arch == "r2d_18":
        from torchvision.models import resnet18

        return FrameAveraged2D(resnet18(weights=None, num_classes=num_outputs))
    if arch == "r2d_152":
        from torchvision.models import resnet152

        return FrameAveraged2D(resnet152(weights=None, num_classes=num_outputs))
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def save_checkpoint(path: Path, network: nn.Module, info: ModelInfo) -> Path:
    """Write a checkpoint atomically (temp file, fsync, rename), its weights on the CPU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # Weights on the CPU whatever device trained them, so the file loads anywhere.
    state_dict = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "info": asdict(info), "state_dict": state_dict}
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelInfo]:
    """Load a checkpoint into a network in eval mode on the CPU."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an angiogate checkpoint ({CHECKPOINT_FORMAT})")
    raw = dict(payload["info"])
    raw["reason_classes"] = tuple(raw.get("reason_classes", REASON_CLASSES))
    info = ModelInfo(**raw)
    check_channels(info.input_channels)  # a checkpoint from a newer release fails here, not per clip
    network = build_network(info.arch, num_frames=info.num_frames, crop_size=info.crop_size,
                            num_outputs=info.num_outputs)
    network.load_state_dict(payload["state_dict"])
    network.eval()
    return network, info
