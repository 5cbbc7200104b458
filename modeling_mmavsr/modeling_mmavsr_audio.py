"""Audio encoders: auto_avsr's ResNet18-1D frontend for raw 16 kHz waves."""

import torch
from torch import nn

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_resnet import MMAVSRResNetTrunk, mask_steps, make_activation


class MMAVSRAudioResNet(nn.Module):
    """Raw 16 kHz wave (B, S) -> features (B, S // 640, 8 * frontend_channels) at 25 fps.

    As in auto_avsr, the trailing `S % audio_samples_per_frame` samples of each utterance are dropped.
    """

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        channels = config.frontend_channels
        self.samples_per_frame = config.audio_samples_per_frame
        # the first conv (stride 4) and three stride-2 stages give 32x; the average pool does the rest
        self.pool_size = self.samples_per_frame // 32
        self.conv1 = nn.Conv1d(1, channels, kernel_size=80, stride=4, padding=38, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu = make_activation(config.frontend_activation, channels)
        self.trunk = MMAVSRResNetTrunk(1, config)

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.samples_per_frame, rounding_mode="floor")

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None):
        num_frames = input_values.shape[1] // self.samples_per_frame
        x = input_values[:, : num_frames * self.samples_per_frame].unsqueeze(1)  # (B, 1, S)
        mask = None
        if attention_mask is not None:
            frames = self.output_lengths(attention_mask.sum(-1))
            samples = frames * self.samples_per_frame
            # keep only each utterance's whole frames, exactly what it keeps alone
            x = mask_steps(x, torch.arange(x.shape[-1], device=x.device)[None] < samples[:, None])
            mask = torch.arange(x.shape[-1] // 4, device=x.device)[None] < (samples // 4)[:, None]  # after stride 4
        x = mask_steps(self.relu(self.bn1(self.conv1(x))), mask)
        x, _ = self.trunk(x, mask)
        x = nn.functional.avg_pool1d(x, kernel_size=self.pool_size, stride=self.pool_size)
        return x.transpose(1, 2)  # (B, T, C)
