"""timm image backbones as MMAVSR vision encoders (`vision_encoder="timm"`), run on each frame.

The backbone is Transformers' [`TimmWrapperModel`] (`timm.create_model(architecture, pretrained=False,
num_classes=0, **model_args)`), configured by a [`TimmWrapperConfig`] stored as the MMAVSR config's `vision_config`:
the timm architecture name, its `model_args` and its `pretrained_cfg` (input size, mean, std, crop, interpolation: the
video processor's `from_timm` reads them). `save_pretrained` writes that configuration into `config.json` and the
weights with the model's, so `from_pretrained` rebuilds the backbone without the network. Pretrained weights come in
through `MMAVSRForConditionalGeneration.from_pretrained_components(vision_encoder="timm", vision_model_name=...)`:
any name `timm.create_model` knows (`resnet18`, `resnet18.a1_in1k`, `hf-hub:timm/...`), a folder written by timm's
`save_for_hf` or by `TimmWrapperModel.save_pretrained`, or an architecture name with a local weights file
(`component_kwargs={"vision": {"pretrained_cfg_overlay": {"file": "weights.safetensors"}}}`).
"""

import importlib.util
import json
import os

import torch
from transformers import TimmWrapperConfig, TimmWrapperModel

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_pretrained import MMAVSRPretrainedEncoder


# `timm.create_model` arguments that say where the weights come from, not what the architecture is: they are not
# saved in `model_args` (which rebuilds the architecture in `from_pretrained`)
TIMM_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
# `pretrained_cfg` keys that point at where this machine read the weights from (a local file, tensors): not saved
PRETRAINED_CFG_LOCATION_KEYS = ("file", "state_dict", "source")


def _require_timm():
    if importlib.util.find_spec("timm") is None:
        raise ImportError("vision_encoder='timm' needs the timm package: pip install 'timm>=1.0' (the `vision` extra).")


def timm_vision_config(timm_model, model_args: dict | None = None) -> TimmWrapperConfig:
    """The `vision_config` that rebuilds `timm_model`: its architecture, `model_args` and `pretrained_cfg`."""
    pretrained_cfg = {k: v for k, v in timm_model.pretrained_cfg.items() if k not in PRETRAINED_CFG_LOCATION_KEYS}
    return TimmWrapperConfig(
        architecture=pretrained_cfg["architecture"],
        model_args=dict(model_args) if model_args else None,
        pretrained_cfg=pretrained_cfg,
        num_labels=0,
    )


def _is_transformers_folder(folder: str) -> bool:
    """A folder written by `TimmWrapperModel.save_pretrained` (its config.json names `model_type`), not by timm."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file) as file:
        return "model_type" in json.load(file)


class MMAVSRTimmEncoder(MMAVSRPretrainedEncoder):
    """A timm backbone on each frame: (B, T, C, H, W) -> (B, T, D), the backbone's own pooled feature vector (its
    `forward_head` without a classifier: global average pooling for CNNs, the class token or the average token for
    ViTs). Only real frames are run; padded frames get zeros. One-channel (grayscale) frames are repeated to the
    backbone's input channels, so the ResNet preset's grayscale ROIs work too (at the size the backbone expects).
    """

    model_class = TimmWrapperModel

    def __init__(self, config: MMAVSRConfig):
        _require_timm()
        import timm

        architecture = config.vision_config.architecture
        if not timm.is_model(architecture):
            raise ValueError(
                f"vision_config.architecture={architecture!r} is not a timm {timm.__version__} architecture (see "
                "`timm.list_models()`)."
            )
        super().__init__(config.vision_config, frozen=config.freeze_vision_encoder)
        timm_model = self.encoder.timm_model
        if getattr(config.vision_config, "pretrained_cfg", None) is None:
            # the data configuration (size, mean, std) travels with the model's config.json
            config.vision_config.pretrained_cfg = dict(timm_model.pretrained_cfg)
        self.in_channels = (config.vision_config.model_args or {}).get("in_chans", 3)
        self.output_size = getattr(timm_model, "head_hidden_size", None) or timm_model.num_features

    @classmethod
    def load_pretrained(cls, name_or_path: str, **kwargs) -> TimmWrapperModel:
        """A `TimmWrapperModel` with the weights `timm.create_model(name_or_path, pretrained=True, **kwargs)` loads.

        `name_or_path`: a timm model name (with an optional `.tag`), `hf-hub:ORG/NAME`, or a local folder (timm's
        `save_for_hf` layout, or a `TimmWrapperModel.save_pretrained` folder). `kwargs` go to `timm.create_model`:
        architecture arguments (e.g. `in_chans=1`, `drop_path_rate`) are saved as the config's `model_args`; loading
        arguments (`pretrained_cfg_overlay={"file": path}` for a local weights file, `checkpoint_path`, `cache_dir`)
        are not.
        """
        _require_timm()
        import timm

        source = str(name_or_path)
        if os.path.isdir(source):
            if _is_transformers_folder(source):
                return TimmWrapperModel.from_pretrained(source, **kwargs)
            source = f"local-dir:{source}"
        try:
            timm_model = timm.create_model(source, pretrained=True, num_classes=0, **kwargs)
        except RuntimeError as error:
            if "Unknown model" not in str(error):
                raise
            raise ValueError(
                f"vision_model_name={name_or_path!r} is neither a timm model name (see `timm.list_models()`) nor a "
                "folder holding a timm checkpoint (config.json + model.safetensors)."
            ) from error
        model_args = {key: value for key, value in kwargs.items() if key not in TIMM_LOADING_KWARGS}
        model = TimmWrapperModel(timm_vision_config(timm_model, model_args))
        model.timm_model.load_state_dict(timm_model.state_dict())
        return model

    def forward(self, pixel_values_videos: torch.Tensor, video_attention_mask: torch.Tensor | None = None):
        batch_size, num_frames, channels = pixel_values_videos.shape[:3]
        if channels not in (1, self.in_channels):
            raise ValueError(
                f"vision_encoder='timm' ({self.encoder.config.architecture}) takes frames of {self.in_channels} "
                f"channels (or 1, repeated), got `pixel_values_videos` of shape {tuple(pixel_values_videos.shape)}; "
                "use `MMAVSRVideoProcessor.from_timm(config)`."
            )
        frames = pixel_values_videos.flatten(0, 1)  # (B*T, C, H, W)
        if channels != self.in_channels:
            frames = frames.expand(-1, self.in_channels, -1, -1)
        real = None if video_attention_mask is None else video_attention_mask.flatten().bool()
        with self.maybe_no_grad():
            pooled = self.encoder(pixel_values=frames if real is None else frames[real]).pooler_output  # (N, D)
        if real is not None:
            pooled = pooled.new_zeros(batch_size * num_frames, pooled.shape[-1]).index_put((real,), pooled)
        return pooled.view(batch_size, num_frames, -1)


__all__ = ["MMAVSRTimmEncoder", "timm_vision_config"]
