"""From frontend features to one (B, T, hidden_size) stream: projection for one modality, fusion for two.

Both streams arrive at 25 fps. They are aligned by cutting both to the shorter one: a sample keeps the frames that
both of its streams have (its frame mask is the AND of the two masks).
"""

import torch
from torch import nn

from .configuration_mmavsr import MMAVSRConfig


def align_streams(
    video: torch.Tensor, video_mask: torch.Tensor | None, audio: torch.Tensor, audio_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cut (B, Tv, Dv) and (B, Ta, Da) to the common length; the mask keeps the frames both streams have."""
    length = min(video.shape[1], audio.shape[1])
    video, audio = video[:, :length], audio[:, :length]
    masks = [m[:, :length] for m in (video_mask, audio_mask) if m is not None]
    mask = None
    if masks:
        mask = masks[0] if len(masks) == 1 else masks[0] & masks[1]
    return video, audio, mask


class MMAVSRProjector(nn.Module):
    """One modality: a linear map from the frontend width to the Conformer width (auto_avsr's `proj_encoder`)."""

    def __init__(self, input_size: int, config: MMAVSRConfig):
        super().__init__()
        self.linear = nn.Linear(input_size, config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class MMAVSRConcatFusion(nn.Module):
    """auto_avsr's audio-visual fusion: concatenate, then Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, video_size: int, audio_size: int, config: MMAVSRConfig):
        super().__init__()
        self.fc1 = nn.Linear(video_size + audio_size, config.fusion_hidden_size)
        self.norm = nn.BatchNorm1d(config.fusion_hidden_size)
        self.fc2 = nn.Linear(config.fusion_hidden_size, config.hidden_size)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = self.fc1(torch.cat([video, audio], dim=-1))
        x = torch.relu(self.norm(x.transpose(1, 2)).transpose(1, 2))
        return self.fc2(x)


class MMAVSRAddFusion(nn.Module):
    """Project each stream to the Conformer width and add them."""

    def __init__(self, video_size: int, audio_size: int, config: MMAVSRConfig):
        super().__init__()
        self.video_proj = nn.Linear(video_size, config.hidden_size)
        self.audio_proj = nn.Linear(audio_size, config.hidden_size)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.video_proj(video) + self.audio_proj(audio)


class MMAVSRGatedFusion(nn.Module):
    """Project each stream; a learned per-channel gate g in (0, 1) from both mixes them: g * video + (1 - g) * audio."""

    def __init__(self, video_size: int, audio_size: int, config: MMAVSRConfig):
        super().__init__()
        self.video_proj = nn.Linear(video_size, config.hidden_size)
        self.audio_proj = nn.Linear(audio_size, config.hidden_size)
        self.gate = nn.Linear(2 * config.hidden_size, config.hidden_size)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        video, audio = self.video_proj(video), self.audio_proj(audio)
        gate = torch.sigmoid(self.gate(torch.cat([video, audio], dim=-1)))
        return gate * video + (1.0 - gate) * audio


FUSION_CLASSES = {"concat": MMAVSRConcatFusion, "add": MMAVSRAddFusion, "gated": MMAVSRGatedFusion}
