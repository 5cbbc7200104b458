"""From encoder features to one (B, T, hidden_size) stream: projection for one modality, fusion for two.

Temporal alignment. Every encoder delivers 25 fps, the video frame rate, before fusion:
- video encoders run per frame (ResNet, ViT, CLIP-ViT: one feature per frame); ViViT gives one feature per tubelet of
  `tubelet_size[0]` frames, repeated for each of its frames (`repeat_frames`), so frame t gets tubelet t // tubelet_t;
- the ResNet1D audio frontend pools 640 samples (40 ms) per frame; Whisper and WavLM give 50 Hz features (20 ms), and
  each pair of them is averaged (`pool_pairs`): audio frame t covers 40 ms starting at t * 40 ms, like video frame t.
The two streams of a sample may still differ by a frame or two (rounding of the encoders' strides, a wave a little
longer than the video): `align_streams` cuts both to the shorter, so a sample keeps the frames both of its streams have
(its frame mask is the AND of the two masks). A difference above `config.max_stream_length_difference` frames means
mismatched inputs (wrong frame rate, another file) and raises a ValueError.
"""

import torch
from torch import nn

from .configuration_mmavsr import MMAVSRConfig


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool mask, True on the first `lengths[b]` steps."""
    return torch.arange(max_length, device=lengths.device)[None] < lengths[:, None]


def pool_pairs(features: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """50 Hz -> 25 fps: average frames (2t, 2t+1) of (B, T, D) into (B, ceil(T / 2), D).

    A sample with an odd number of real frames keeps its last frame alone (never averaged with padding). Returns the
    pooled features and the pooled lengths (None when `lengths` is None).
    """
    batch_size, num_frames, dim = features.shape
    if num_frames % 2:
        features = nn.functional.pad(features, (0, 0, 0, 1))
    if lengths is None:
        weights = torch.ones(batch_size, features.shape[1], device=features.device, dtype=features.dtype)
        weights[:, num_frames:] = 0
    else:
        weights = lengths_to_mask(lengths, features.shape[1]).to(features.dtype)
    summed = (features * weights[..., None]).view(batch_size, -1, 2, dim).sum(2)
    counts = weights.view(batch_size, -1, 2).sum(2).clamp_min(1.0)
    pooled = summed / counts[..., None]  # (B, ceil(T / 2), D)
    return pooled, None if lengths is None else torch.div(lengths + 1, 2, rounding_mode="floor")


def repeat_frames(features: torch.Tensor, factor: int, num_frames: int) -> torch.Tensor:
    """(B, T', D) at 25 / factor fps -> (B, num_frames, D) at 25 fps: each step repeated `factor` times, then cut."""
    return features.repeat_interleave(factor, dim=1)[:, :num_frames]


def align_streams(
    video: torch.Tensor,
    video_mask: torch.Tensor | None,
    audio: torch.Tensor,
    audio_mask: torch.Tensor | None,
    max_difference: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Cut (B, Tv, Dv) and (B, Ta, Da) at 25 fps to the common length; the mask keeps the frames both streams have.

    Raises a ValueError when a sample's video and audio lengths (from the masks, else the tensors) differ by more than
    `max_difference` frames.
    """
    if max_difference is not None:
        video_lengths = video_mask.sum(-1) if video_mask is not None else torch.full((video.shape[0],), video.shape[1])
        audio_lengths = audio_mask.sum(-1) if audio_mask is not None else torch.full((audio.shape[0],), audio.shape[1])
        difference = (video_lengths.cpu() - audio_lengths.cpu()).abs()
        if (difference > max_difference).any():
            row = int(difference.argmax())
            raise ValueError(
                f"Sample {row} has {int(video_lengths[row])} video frames but {int(audio_lengths[row])} audio frames "
                f"at 25 fps, more than `max_stream_length_difference` ({max_difference}) apart: are both streams of "
                "the same utterance, the video at 25 fps and the audio at 16 kHz?"
            )
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
