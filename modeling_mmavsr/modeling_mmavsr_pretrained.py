"""The base of the wrappers around pretrained transformers encoders (ViT, ViViT, CLIP-ViT, Whisper, WavLM).

A wrapper owns one transformers model as `self.encoder`, built from the MMAVSR config's `vision_config` /
`audio_config` (no network) or loaded with `load_pretrained(name)` (Hub id or local folder) by
`MMAVSRForConditionalGeneration.from_pretrained_components`. A frozen wrapper keeps its model's weights fixed:
`requires_grad=False` (left out of the optimizer), `torch.no_grad()` around the forward pass, and eval mode whatever
the mode of the model around it (no dropout, layer drop or SpecAugment).
"""

import contextlib

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel


class MMAVSRPretrainedEncoder(nn.Module):
    """A transformers model as an MMAVSR encoder; subclasses set `model_class` and write `forward`."""

    model_class: type[PreTrainedModel]
    model_kwargs: dict = {}

    def __init__(self, encoder_config: PreTrainedConfig, frozen: bool):
        super().__init__()
        # the dtype the surrounding model is being built in, not the one a loaded checkpoint was saved in
        self.encoder = self.model_class._from_config(
            encoder_config, dtype=torch.get_default_dtype(), **self.model_kwargs
        )
        self.frozen = frozen
        self.train()

    @classmethod
    def load_pretrained(cls, name_or_path: str, **kwargs) -> PreTrainedModel:
        """The pretrained model whose weights this wrapper takes (`self.encoder.load_state_dict`)."""
        return cls.model_class.from_pretrained(name_or_path, **cls.model_kwargs, **kwargs)

    def train(self, mode: bool = True):
        # also reached through `model.eval()` at the end of `from_pretrained`, whose loading makes fresh parameters
        # that all require grad: freezing is asserted here again
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
            self.encoder.requires_grad_(False)
        return self

    def maybe_no_grad(self):
        """`torch.no_grad()` for a frozen encoder, else nothing."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()
