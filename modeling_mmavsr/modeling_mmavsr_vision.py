"""Vision encoders: auto_avsr's 3D-conv + ResNet18 frontend for mouth-ROI videos."""

import torch
from torch import nn

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_resnet import MMAVSRResNetTrunk, make_activation


class MMAVSRVideoResNet(nn.Module):
    """Mouth-ROI video (B, T, 1, H, W) -> per-frame features (B, T, 8 * frontend_channels) at the video frame rate."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        channels = config.frontend_channels
        self.conv3d = nn.Conv3d(1, channels, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False)
        self.norm3d = nn.BatchNorm3d(channels)
        self.act3d = make_activation(config.frontend_activation, channels)
        self.pool3d = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.trunk = MMAVSRResNetTrunk(2, config)

    def forward(self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None):
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if video_attention_mask is not None:
            # padded frames must be zeros, as the temporal padding of the 3D conv is for a lone clip
            pixel_values_videos = pixel_values_videos * video_attention_mask[:, :, None, None, None].to(
                pixel_values_videos.dtype
            )
        x = pixel_values_videos.transpose(1, 2)  # (B, C, T, H, W)
        x = self.pool3d(self.act3d(self.norm3d(self.conv3d(x))))
        x = x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H', W')
        x, _ = self.trunk(x)
        x = x.mean(dim=(2, 3))  # global average pool
        return x.view(batch_size, num_frames, -1)
