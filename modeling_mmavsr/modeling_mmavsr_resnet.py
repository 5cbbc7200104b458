"""Building blocks of auto_avsr's ResNet frontends (shared by the video and the audio frontend).

The blocks honour padding: every temporal convolution sees zeros beyond a sample's real length, exactly as if the sample
were alone, so a padded batch gives each sample the features it gets on its own.
"""

import torch
from torch import nn

from .configuration_mmavsr import MMAVSRConfig


def make_activation(name: str, channels: int) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    return nn.PReLU(num_parameters=channels)


def _conv(dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(*args, **kwargs)


def _batch_norm(dims: int, channels: int) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)


def mask_steps(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # x: (B, C, T); mask: (B, T) with True on real steps
    return x if mask is None else x * mask.unsqueeze(1).to(x.dtype)


def downsample_mask(mask: torch.Tensor | None, stride: int) -> torch.Tensor | None:
    return mask if mask is None or stride == 1 else mask[:, ::stride]


class MMAVSRBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a residual), in 1-D (audio) or 2-D (per video frame)."""

    def __init__(self, dims: int, in_channels: int, channels: int, stride: int, activation: str):
        super().__init__()
        self.stride = stride
        self.conv1 = _conv(dims, in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _batch_norm(dims, channels)
        self.relu1 = make_activation(activation, channels)
        self.conv2 = _conv(dims, channels, channels, 3, padding=1, bias=False)
        self.bn2 = _batch_norm(dims, channels)
        self.relu2 = make_activation(activation, channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                _conv(dims, in_channels, channels, 1, stride=stride, bias=False), _batch_norm(dims, channels)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # 1-D: x (B, C, T) whose steps beyond `mask` are zero; 2-D: x (N, C, H, W) and no mask
        out_mask = downsample_mask(mask, self.stride)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(mask_steps(out, out_mask)))
        residual = x if self.downsample is None else self.downsample(x)
        return mask_steps(self.relu2(out + residual), out_mask)


class MMAVSRResNetTrunk(nn.Module):
    """Four stages of basic blocks (64, 128, 256, 512 channels for `frontend_channels=64`), strides 1, 2, 2, 2."""

    def __init__(self, dims: int, config: MMAVSRConfig):
        super().__init__()
        channels = config.frontend_channels
        in_channels = channels
        for stage, num_blocks in enumerate(config.frontend_layers):
            out_channels = channels * 2**stage
            blocks = []
            for index in range(num_blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(MMAVSRBasicBlock(dims, in_channels, out_channels, stride, config.frontend_activation))
                in_channels = out_channels
            self.add_module(f"layer{stage + 1}", nn.ModuleList(blocks))
        self.num_stages = len(config.frontend_layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        for stage in range(self.num_stages):
            for block in getattr(self, f"layer{stage + 1}"):
                x = block(x, mask)
                mask = downsample_mask(mask, block.stride)
        return x, mask
