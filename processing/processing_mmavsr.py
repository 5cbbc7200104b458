"""MMAVSRProcessor: audio, video and text to the model's inputs and labels, and generated ids back to text."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .feature_extraction_mmavsr import MMAVSRFeatureExtractor
from .tokenization_mmavsr import MMAVSRTokenizer
from .video_processing_mmavsr import MMAVSRVideoProcessor


__all__ = ["MMAVSRProcessor", "register_auto_classes", "pad_labels"]

LABEL_PAD = -100


def pad_labels(sequences: list[list[int]], padding_value: int = LABEL_PAD) -> torch.Tensor:
    """Right-pad token id lists into an int64 tensor `(B, L)` with `padding_value`."""
    labels = torch.full((len(sequences), max((len(s) for s in sequences), default=0)), padding_value, dtype=torch.long)
    for row, ids in enumerate(sequences):
        labels[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return labels


def _batch_size(value: Any, is_text: bool = False) -> int:
    if is_text:
        return 1 if isinstance(value, str) else len(value)
    if isinstance(value, (list, tuple)):
        return len(value)
    return 1


class MMAVSRProcessor(ProcessorMixin):
    """Wraps an [`MMAVSRFeatureExtractor`], an [`MMAVSRVideoProcessor`] and a tokenizer into one processor.

    `processor(audio=, videos=, text=, sampling_rate=)` returns a `BatchFeature` with `input_features` and
    `attention_mask` (audio), `pixel_values_videos` and `video_attention_mask` (video) and `labels` (text, int64
    padded with -100); any subset of the three inputs may be given. `decode`/`batch_decode` go to the tokenizer.

    The tokenizer can be any `PreTrainedTokenizerBase`: [`MMAVSRTokenizer`] for the Transformer decoder, or the LLM's
    or Whisper's own tokenizer for those decoders. Labels are `tokenizer(text)["input_ids"]` as that tokenizer builds
    them with its special tokens (for `MMAVSRTokenizer`: the text's ids followed by eos).
    """

    def __init__(self, feature_extractor, video_processor, tokenizer):
        super().__init__(feature_extractor, video_processor, tokenizer)

    @classmethod
    def from_auto_avsr(
        cls, vision_encoder: str = "resnet", feature_type: str = "raw", **feature_extractor_kwargs
    ) -> MMAVSRProcessor:
        """auto_avsr's setup: its unigram5000 vocabulary, the chosen video preset and audio features."""
        return cls(
            feature_extractor=MMAVSRFeatureExtractor(feature_type=feature_type, **feature_extractor_kwargs),
            video_processor=MMAVSRVideoProcessor(vision_encoder=vision_encoder),
            tokenizer=MMAVSRTokenizer.from_auto_avsr(),
        )

    def __call__(
        self,
        audio: Any = None,
        videos: Any = None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        training: bool = False,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process a batch (or one example) of any of audio, videos and text.

        Args:
            audio: audio clip(s) accepted by [`MMAVSRFeatureExtractor`] (arrays, tensors, dicts, decoders, paths).
            videos: video clip(s) accepted by [`MMAVSRVideoProcessor`] (arrays, tensors, decoders, paths).
            text: transcript(s); become `labels`.
            sampling_rate: rate of array audio inputs (None: the feature extractor's rate).
            training: random video crops instead of centre crops.
            return_tensors: "pt" (default) or "np".
            kwargs: passed to the feature extractor (e.g. `padding`, `max_length`).
        """
        if audio is None and videos is None and text is None:
            raise ValueError("MMAVSRProcessor needs at least one of `audio`, `videos` or `text`")
        sizes = {
            name: _batch_size(value, is_text=name == "text")
            for name, value in (("audio", audio), ("videos", videos), ("text", text))
            if value is not None
        }
        if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
            sizes["videos"] = len(videos)
        if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 2:
            sizes["audio"] = len(audio)
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes differ between inputs: {sizes}")

        data = {}
        if audio is not None:
            data.update(self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors="pt", **kwargs))
        if videos is not None:
            data.update(self.video_processor(videos, training=training, return_tensors="pt"))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            data["labels"] = pad_labels(self.tokenizer(texts)["input_ids"])
        return BatchFeature(data, tensor_type=return_tensors)

    def _ids_for_decoding(self, sequences):
        """Replace the label padding -100 by the tokenizer's pad id (or drop it) so labels can be decoded."""
        pad_id = self.tokenizer.pad_token_id
        if isinstance(sequences, (torch.Tensor, np.ndarray)):
            sequences = sequences.tolist()
        if sequences and isinstance(sequences[0], int):
            return (
                [i for i in sequences if i != LABEL_PAD]
                if pad_id is None
                else [pad_id if i == LABEL_PAD else i for i in sequences]
            )
        return [self._ids_for_decoding(row) for row in sequences]

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Token id sequences `(B, L)` (generated ids or labels with -100) to text."""
        return self.tokenizer.batch_decode(
            self._ids_for_decoding(sequences), skip_special_tokens=skip_special_tokens, **kwargs
        )

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """One token id sequence to text."""
        return self.tokenizer.decode(
            self._ids_for_decoding(token_ids), skip_special_tokens=skip_special_tokens, **kwargs
        )

    @property
    def model_input_names(self) -> list[str]:
        return list(self.feature_extractor.model_input_names) + list(self.video_processor.model_input_names)


def register_auto_classes() -> None:
    """Register the processing classes with AutoFeatureExtractor / AutoVideoProcessor / AutoTokenizer / AutoProcessor
    under `MMAVSRConfig`, so `AutoProcessor.from_pretrained` loads a saved processor."""
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, AutoVideoProcessor

    from modeling_mmavsr.configuration_mmavsr import MMAVSRConfig

    AutoFeatureExtractor.register(MMAVSRConfig, MMAVSRFeatureExtractor, exist_ok=True)
    AutoVideoProcessor.register(MMAVSRConfig, MMAVSRVideoProcessor, exist_ok=True)
    AutoTokenizer.register(MMAVSRConfig, tokenizer_class=MMAVSRTokenizer, exist_ok=True)
    AutoProcessor.register(MMAVSRConfig, MMAVSRProcessor, exist_ok=True)
