"""Video processor for mmavsr: mouth-ROI clips to normalised frame tensors for the ResNet3D or ViT-family encoders."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from transformers import BaseVideoProcessor, BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import Unpack, VideosKwargs

from .media_constants import VIDEO_FPS
from .media_io import MediaError, read_video, same_frame_rate


__all__ = ["MMAVSRVideoProcessor", "VISION_ENCODER_PRESETS", "timm_video_preset", "to_video_tensor"]

# the 96x96 mouth ROI of auto_avsr is cropped to 88x88 and turned to grayscale for the ResNet3D frontend
_RESNET = dict(
    do_grayscale=True,
    do_convert_rgb=False,
    do_resize=True,
    size={"height": 96, "width": 96},
    do_center_crop=True,
    crop_size={"height": 88, "width": 88},
    image_mean=[0.421],
    image_std=[0.165],
)
_VIT = dict(
    do_grayscale=False,
    do_convert_rgb=True,  # grayscale clips are repeated to three channels
    do_resize=True,
    size={"height": 224, "width": 224},
    do_center_crop=False,
    crop_size=None,
    image_mean=list(IMAGENET_STANDARD_MEAN),
    image_std=list(IMAGENET_STANDARD_STD),
)
# timm's default data configuration (most ImageNet backbones): resize to 224 / 0.875, centre crop 224, bicubic
_TIMM = dict(
    _VIT,
    size={"height": 256, "width": 256},
    do_center_crop=True,
    crop_size={"height": 224, "width": 224},
    image_mean=list(IMAGENET_DEFAULT_MEAN),
    image_std=list(IMAGENET_DEFAULT_STD),
    resample=PILImageResampling.BICUBIC,
)
VISION_ENCODER_PRESETS = {
    "resnet": _RESNET,
    "vit": _VIT,
    "vivit": _VIT,
    "clip-vit": {**_VIT, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD)},
    "timm": _TIMM,
}


def timm_video_preset(pretrained_cfg: dict, in_chans: int = 3) -> dict:
    """The video processor settings of a timm backbone, from its `pretrained_cfg` through timm's data configuration:
    resize to `input_size / crop_pct`, centre crop (random crop in training) to `input_size`, its interpolation, mean
    and std. `in_chans=1` (a backbone built for grayscale) converts to grayscale, with the mean of the three means and
    stds."""
    from timm.data import resolve_data_config

    data_config = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 1.0
    mean, std = list(data_config["mean"]), list(data_config["std"])
    grayscale = in_chans == 1
    if grayscale:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    interpolation = str(data_config.get("interpolation", "bicubic")).upper()
    return dict(
        do_grayscale=grayscale,
        do_convert_rgb=not grayscale,
        do_resize=True,
        size={"height": math.floor(height / crop_pct), "width": math.floor(width / crop_pct)},
        do_center_crop=True,
        crop_size={"height": height, "width": width},
        image_mean=mean,
        image_std=std,
        resample=getattr(PILImageResampling, interpolation, PILImageResampling.BICUBIC),
    )


class MMAVSRVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    vision_encoder (`str`, *optional*, defaults to `"resnet"`):
        Preset of the defaults: `resnet`, `vit`, `vivit`, `clip-vit` or `timm` (timm's default data configuration;
        `MMAVSRVideoProcessor.from_timm(config)` reads a given backbone's).
    do_grayscale (`bool`, *optional*):
        Convert frames to one grayscale channel.
    training (`bool`, *optional*, defaults to `False`):
        Random crop instead of centre crop.
    frame_rate (`float`, *optional*, defaults to 25):
        Frame rate expected from files and decoders; another one raises an error.
    """

    vision_encoder: str
    do_grayscale: bool
    training: bool
    frame_rate: float


def _is_decoder(item: Any) -> bool:
    return hasattr(item, "get_frames_in_range") and hasattr(item, "metadata")


def _check_frame_rate(source: str, fps: float | None, frame_rate: float | None) -> None:
    if frame_rate and fps and not same_frame_rate(fps, frame_rate):
        raise ValueError(f"{source}: video is {fps:g} fps, expected {frame_rate:g} fps (resample it first)")


def to_video_tensor(item: Any, frame_rate: float | None = VIDEO_FPS) -> torch.Tensor:
    """One video -> uint8 or float tensor `(T, C, H, W)`.

    `item`: array/tensor `(T, H, W, C)`, `(T, C, H, W)` (C in 1 or 3) or grayscale `(T, H, W)`; a file path (read with
    `media_io.read_video`), also as the `{"path": ...}` of an undecoded `datasets.Video` row; or a torchcodec
    `VideoDecoder`. Files and decoders at another frame rate than `frame_rate` raise a ValueError naming the source
    and both rates (None skips the check).
    """
    if isinstance(item, dict) and item.get("path") and not item.get("bytes"):
        item = item["path"]  # a `datasets.Video(decode=False)` row
    if isinstance(item, (str, os.PathLike)):
        frames, fps = read_video(item)
        _check_frame_rate(str(item), fps, frame_rate)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
    if _is_decoder(item):
        fps = getattr(item.metadata, "average_fps", None)
        _check_frame_rate("video decoder", fps, frame_rate)
        return item.get_frames_in_range(0, len(item)).data  # (T, C, H, W)
    video = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(item))
    if video.ndim == 3:
        video = video[:, None]  # (T, H, W) -> (T, 1, H, W)
    elif video.ndim == 4 and video.shape[-1] in (1, 3) and video.shape[1] not in (1, 3):
        video = video.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(
            f"video of shape {tuple(item.shape)}: expected (T, H, W, C), (T, C, H, W) with C in (1, 3), or (T, H, W)"
        )
    if video.shape[0] == 0:
        raise ValueError("video has no frame")
    return video


class MMAVSRVideoProcessor(BaseVideoProcessor):
    """Turns mouth-ROI clips into `pixel_values_videos` `(B, T, C, H, W)` float32 (zero-padded in time) and
    `video_attention_mask` `(B, T)` (1 = real frame).

    Presets by `vision_encoder` (each value can be overridden):
    - `resnet`: resize to the 96x96 ROI if needed, 88x88 centre crop (random crop with `training=True`), grayscale,
      scaled to [0, 1], normalised with mean 0.421 / std 0.165 -> `(T, 1, 88, 88)`.
    - `vit` / `vivit`: RGB resized to 224x224, mean = std = 0.5 -> `(T, 3, 224, 224)`.
    - `clip-vit`: as `vit` with CLIP's mean and std.
    - `timm`: RGB resized to 256x256, centre crop 224x224, ImageNet mean and std (timm's defaults); use
      `from_timm(config)` for the size, crop, interpolation, mean and std of a given backbone.

    Accepts one video or a list: uint8 arrays or tensors, file paths, torchcodec `VideoDecoder`s (`to_video_tensor`).
    """

    resample = PILImageResampling.BILINEAR
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False
    do_sample_frames = False
    training = False
    frame_rate = float(VIDEO_FPS)
    vision_encoder = "resnet"
    valid_kwargs = MMAVSRVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "video_attention_mask"]

    def __init__(self, **kwargs: Unpack[MMAVSRVideoProcessorKwargs]):
        vision_encoder = kwargs.get("vision_encoder") or self.vision_encoder
        if vision_encoder not in VISION_ENCODER_PRESETS:
            raise ValueError(f"vision_encoder must be one of {sorted(VISION_ENCODER_PRESETS)}, got {vision_encoder!r}")
        kwargs["vision_encoder"] = vision_encoder
        for key, value in VISION_ENCODER_PRESETS[vision_encoder].items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        super().__init__(**kwargs)
        if kwargs["crop_size"] is None:  # `_set_attributes` falls back to the class default for None values
            self.crop_size = None

    @classmethod
    def from_timm(cls, config, **kwargs) -> MMAVSRVideoProcessor:
        """The video processor of a `vision_encoder="timm"` model (`timm_video_preset`), with `kwargs` overriding it.

        `config`: an `MMAVSRConfig` (its `vision_config`), a `TimmWrapperConfig`, or a timm `pretrained_cfg` dict.
        A config without `pretrained_cfg` gets the default one of its `architecture` (needs timm). The saved processor
        holds the resulting numbers, so loading it needs no timm.
        """
        vision_config = getattr(config, "vision_config", config)
        if isinstance(vision_config, dict):
            pretrained_cfg, in_chans = vision_config, 3
        else:
            if getattr(vision_config, "model_type", None) != "timm_wrapper":
                raise ValueError(
                    f"from_timm takes the config of a vision_encoder='timm' model, a TimmWrapperConfig or a timm "
                    f"pretrained_cfg dict; got a {type(vision_config).__name__}."
                )
            pretrained_cfg = getattr(vision_config, "pretrained_cfg", None)
            if pretrained_cfg is None:
                from timm.models import get_pretrained_cfg

                default = get_pretrained_cfg(vision_config.architecture)
                if default is None:
                    raise ValueError(f"timm has no pretrained_cfg for architecture {vision_config.architecture!r}.")
                pretrained_cfg = default.to_dict()
            in_chans = (vision_config.model_args or {}).get("in_chans", 3)
        return cls(vision_encoder="timm", **{**timm_video_preset(pretrained_cfg, in_chans), **kwargs})

    def _decode_and_sample_videos(self, videos, video_metadata=None, do_sample_frames=None, sample_indices_fn=None):
        frame_rate = self.frame_rate
        if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
            videos = list(videos)
        elif not isinstance(videos, (list, tuple)):
            videos = [videos]
        tensors = []
        for index, video in enumerate(videos):
            try:
                tensors.append(to_video_tensor(video, frame_rate))
            except MediaError:
                raise
            except ValueError as error:
                raise ValueError(f"video {index}: {error}") from error
        return tensors, [None] * len(tensors)

    def _prepare_input_videos(self, videos, do_convert_rgb=None, input_data_format=None, device=None):
        prepared = []
        for video in videos:
            if do_convert_rgb and video.shape[1] == 1:
                video = video.expand(-1, 3, -1, -1)
            prepared.append(video.to(device) if device is not None else video)
        return prepared

    def _crop(self, video: torch.Tensor, crop_size: SizeDict, training: bool) -> torch.Tensor:
        height, width = video.shape[-2:]
        if crop_size.height > height or crop_size.width > width:
            raise ValueError(f"crop {crop_size.height}x{crop_size.width} is larger than the frames ({height}x{width})")
        if not training:
            return tvF.center_crop(video, [crop_size.height, crop_size.width])
        top = int(torch.randint(0, height - crop_size.height + 1, ()))
        left = int(torch.randint(0, width - crop_size.width + 1, ()))
        return video[..., top : top + crop_size.height, left : left + crop_size.width]

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_grayscale: bool = False,
        training: bool = False,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for video in videos:  # (T, C, H, W)
            video = video.float()
            if do_rescale:
                video = video * rescale_factor
            if do_grayscale and video.shape[1] == 3:
                video = tvF.rgb_to_grayscale(video)  # (T, 1, H, W)
            if do_resize and tuple(video.shape[-2:]) != (size.height, size.width):
                video = self.resize(video, size=size, resample=resample)
            if do_center_crop and crop_size is not None:
                video = self._crop(video, crop_size, training)
            if do_normalize:
                mean = torch.as_tensor(image_mean, dtype=video.dtype).view(1, -1, 1, 1)
                std = torch.as_tensor(image_std, dtype=video.dtype).view(1, -1, 1, 1)
                if mean.shape[1] not in (1, video.shape[1]):
                    raise ValueError(f"image_mean has {mean.shape[1]} values for {video.shape[1]}-channel frames")
                video = (video - mean) / std
            processed.append(video)
        shapes = {tuple(video.shape[1:]) for video in processed}
        if len(shapes) > 1:
            raise ValueError(f"videos have different frame shapes after processing {sorted(shapes)}: set `size`")
        max_frames = max(len(video) for video in processed)
        pixel_values = processed[0].new_zeros((len(processed), max_frames, *processed[0].shape[1:]))
        mask = torch.zeros((len(processed), max_frames), dtype=torch.long)
        for index, video in enumerate(processed):
            pixel_values[index, : len(video)] = video
            mask[index, : len(video)] = 1
        return BatchFeature(
            {"pixel_values_videos": pixel_values, "video_attention_mask": mask}, tensor_type=return_tensors
        )
