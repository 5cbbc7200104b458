"""Vision encoders: auto_avsr's 3D-conv + ResNet18 frontend; pretrained ViT, ViViT and CLIP-ViT; timm backbones
(`modeling_mmavsr_timm`).

Each maps a 25 fps video (B, T, C, H, W) with its `video_attention_mask` (B, T) to features (B, T, output_size), one
per frame. The pretrained encoders see only real frames (ViT, CLIP-ViT) or windows holding some (ViViT), so padding
neither costs compute nor changes a sample's features.
"""

import torch
from torch import nn
from transformers import CLIPVisionModel, PreTrainedConfig, ViTModel, VivitModel

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_fusion import repeat_frames
from .modeling_mmavsr_pretrained import MMAVSRPretrainedEncoder
from .modeling_mmavsr_resnet import MMAVSRResNetTrunk, make_activation
from .modeling_mmavsr_timm import MMAVSRTimmEncoder


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
        self.output_size = config.frontend_output_size

    def forward(self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None):
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if video_attention_mask is not None:
            # padded frames must be zeros, as the temporal padding of the 3D conv is for a lone clip
            pixel_values_videos = pixel_values_videos * video_attention_mask[:, :, None, None, None].to(
                pixel_values_videos.dtype
            )
        x = pixel_values_videos.transpose(1, 2)  # (B, C, T, H, W)
        x = self.conv3d(x) if x.device.type != "cpu" else self.conv3d_as_conv2d(x)
        x = self.pool3d(self.act3d(self.norm3d(x)))
        x = x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H', W')
        x, _ = self.trunk(x)
        x = x.mean(dim=(2, 3))  # global average pool
        return x.view(batch_size, num_frames, -1)

    def conv3d_as_conv2d(self, x: torch.Tensor) -> torch.Tensor:
        """`self.conv3d(x)` computed as a 2D convolution of each frame's stack of temporal neighbours (the same weights,
        reshaped): the same result, several times faster on CPU, where oneDNN's 3D kernels are slow for one channel."""
        weight = self.conv3d.weight  # (out, C, kT, kH, kW)
        out_channels, _, kernel_t = weight.shape[:3]
        batch_size, channels, num_frames, height, width = x.shape
        pad_t = self.conv3d.padding[0]
        windows = nn.functional.pad(x, (0, 0, 0, 0, pad_t, pad_t)).unfold(2, kernel_t, 1)  # (B, C, T, H, W, kT)
        windows = windows.permute(0, 2, 1, 5, 3, 4).reshape(batch_size * num_frames, channels * kernel_t, height, width)
        y = nn.functional.conv2d(
            windows,
            weight.reshape(out_channels, channels * kernel_t, *weight.shape[3:]),
            stride=self.conv3d.stride[1:],
            padding=self.conv3d.padding[1:],
        )
        return y.view(batch_size, num_frames, out_channels, *y.shape[-2:]).transpose(1, 2)  # (B, out, T, H', W')


def _check_frames(pixel_values_videos: torch.Tensor, encoder_config: PreTrainedConfig, choice: str):
    """A clear error when the frames do not have the channels and size the pretrained encoder was built for."""
    size = encoder_config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = encoder_config.num_channels
    if tuple(pixel_values_videos.shape[2:]) != (channels, height, width):
        raise ValueError(
            f"vision_encoder={choice!r} takes frames of {channels} channels and {height}x{width} pixels (its "
            f"`vision_config`), got `pixel_values_videos` of shape {tuple(pixel_values_videos.shape)}; use the video "
            f"processor's {choice!r} preset."
        )


class MMAVSRViTEncoder(MMAVSRPretrainedEncoder):
    """ViT on each frame: (B, T, 3, H, W) -> (B, T, hidden_size), the CLS token or the mean of the patch tokens."""

    model_class = ViTModel
    model_kwargs = {"add_pooling_layer": False}
    choice = "vit"

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config.vision_config, frozen=config.freeze_vision_encoder)
        self.pooling = config.vision_pooling
        self.output_size = config.vision_config.hidden_size

    def pool(self, outputs) -> torch.Tensor:
        if self.pooling == "cls":
            return outputs.last_hidden_state[:, 0]
        return outputs.last_hidden_state[:, 1:].mean(1)

    def forward(self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None):
        _check_frames(pixel_values_videos, self.encoder.config, self.choice)
        batch_size, num_frames = pixel_values_videos.shape[:2]
        frames = pixel_values_videos.flatten(0, 1)  # (B*T, C, H, W)
        real = None if video_attention_mask is None else video_attention_mask.flatten().bool()
        with self.maybe_no_grad():
            outputs = self.encoder(pixel_values=frames if real is None else frames[real])
            pooled = self.pool(outputs)  # (frames run, D)
        if real is not None:
            # padded frames get zeros (the fusion's mask hides them)
            pooled = pooled.new_zeros(batch_size * num_frames, pooled.shape[-1]).index_put((real,), pooled)
        return pooled.view(batch_size, num_frames, -1)


class MMAVSRCLIPViTEncoder(MMAVSRViTEncoder):
    """CLIP's vision tower on each frame: `cls` pooling is CLIP's pooled output (the CLS token after its layer norm)."""

    model_class = CLIPVisionModel
    model_kwargs = {}
    choice = "clip-vit"

    def pool(self, outputs) -> torch.Tensor:
        if self.pooling == "cls":
            return outputs.pooler_output
        return outputs.last_hidden_state[:, 1:].mean(1)


class MMAVSRViViTEncoder(MMAVSRPretrainedEncoder):
    """ViViT on windows of `vision_config.num_frames` frames: (B, T, 3, H, W) -> (B, T, hidden_size) at 25 fps.

    The video is cut into consecutive windows (the last one zero-padded), the length ViViT's position embeddings
    were trained on. Each window gives `num_frames / tubelet_size[0]` time steps (the mean of each step's patch
    tokens); every step is repeated for the `tubelet_size[0]` frames of its tubelet to return to 25 fps, and the result
    is cut to T frames. Padded frames are zeroed first, as a sample's last window is zero-padded when it is alone.
    """

    model_class = VivitModel
    model_kwargs = {"add_pooling_layer": False}

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config.vision_config, frozen=config.freeze_vision_encoder)
        vision_config = config.vision_config
        self.window = vision_config.num_frames
        self.tubelet_frames = vision_config.tubelet_size[0]
        if self.window % self.tubelet_frames:
            raise ValueError(
                f"vision_config.num_frames ({self.window}) must be a multiple of tubelet_size[0] ({self.tubelet_frames})."
            )
        self.output_size = vision_config.hidden_size

    def forward(self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None):
        _check_frames(pixel_values_videos, self.encoder.config, "vivit")
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if video_attention_mask is not None:
            pixel_values_videos = pixel_values_videos * video_attention_mask[:, :, None, None, None].to(
                pixel_values_videos.dtype
            )
            lengths = video_attention_mask.sum(-1)
        else:
            lengths = torch.full((batch_size,), num_frames, device=pixel_values_videos.device)
        num_windows = -(-num_frames // self.window)
        padded = nn.functional.pad(pixel_values_videos, (0, 0, 0, 0, 0, 0, 0, num_windows * self.window - num_frames))
        windows = padded.view(batch_size * num_windows, self.window, *padded.shape[2:])  # (B*W, window, C, H, W)
        # run only the windows that hold real frames
        starts = torch.arange(num_windows, device=lengths.device) * self.window
        real = (starts[None] < lengths[:, None]).flatten()
        steps = self.window // self.tubelet_frames
        with self.maybe_no_grad():
            tokens = self.encoder(pixel_values=windows[real]).last_hidden_state[:, 1:]  # drop CLS
            features = tokens.reshape(tokens.shape[0], steps, -1, tokens.shape[-1]).mean(2)  # (windows run, steps, D)
        features = features.new_zeros(batch_size * num_windows, steps, features.shape[-1]).index_put((real,), features)
        features = features.view(batch_size, num_windows * steps, -1)  # (B, T' = T / tubelet_t, D)
        return repeat_frames(features, self.tubelet_frames, num_frames)


VISION_ENCODER_CLASSES = {
    "resnet": MMAVSRVideoResNet,
    "vit": MMAVSRViTEncoder,
    "vivit": MMAVSRViViTEncoder,
    "clip-vit": MMAVSRCLIPViTEncoder,
    "timm": MMAVSRTimmEncoder,
}
