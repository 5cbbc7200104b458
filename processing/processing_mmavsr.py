"""MMAVSRProcessor: audio, video and text to the model's inputs and labels, and generated ids back to text."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .feature_extraction_mmavsr import MMAVSRFeatureExtractor
from .media_constants import VIDEO_FPS
from .tokenization_mmavsr import MMAVSRTokenizer
from .video_processing_mmavsr import MMAVSRVideoProcessor


__all__ = ["MMAVSRProcessor", "check_av_durations", "check_transcript", "pad_labels"]

LABEL_PAD = -100
# audio and video of one clip may differ by this many seconds (encoder priming, rounding to whole frames); beyond it
# they are taken as not belonging together. Within it the model keeps the frames both streams have.
AV_DURATION_TOLERANCE = 0.5


def pad_labels(sequences: list[list[int]], padding_value: int = LABEL_PAD) -> torch.Tensor:
    """Right-pad token id lists into an int64 tensor `(B, L)` with `padding_value`."""
    labels = torch.full((len(sequences), max((len(s) for s in sequences), default=0)), padding_value, dtype=torch.long)
    for row, ids in enumerate(sequences):
        labels[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return labels


def check_av_durations(
    video_seconds: float, audio_seconds: float, source: str, tolerance: float | None = AV_DURATION_TOLERANCE
) -> None:
    """Raise a ValueError naming `source` when a clip's audio and video durations differ by more than `tolerance`
    seconds (None: no check)."""
    if tolerance is not None and abs(video_seconds - audio_seconds) > tolerance:
        raise ValueError(
            f"{source}: the audio lasts {audio_seconds:.2f} s and the video {video_seconds:.2f} s; they differ by more "
            f"than {tolerance:g} s (is the audio the video's own?)"
        )


def check_transcript(text: Any, tokenizer, source: str) -> None:
    """Raise a ValueError naming `source` when a transcript is not a string, is empty, or holds characters that the
    tokenizer can only map to its unknown token (e.g. accented letters for auto_avsr's upper-case English pieces)."""
    if not isinstance(text, str):
        raise ValueError(f"{source}: the transcript must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{source}: the transcript is empty")
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None or unk_id not in tokenizer(text, add_special_tokens=False)["input_ids"]:
        return
    unknown = sorted(
        {c for c in text if not c.isspace() and unk_id in tokenizer(c, add_special_tokens=False)["input_ids"]}
    )
    raise ValueError(
        f"{source}: the transcript {text!r} holds characters the tokenizer does not know "
        f"({', '.join(repr(c) for c in unknown) or 'a sequence of them'}): they would become {tokenizer.unk_token}"
    )


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
        av_tolerance: float | None = AV_DURATION_TOLERANCE,
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
            av_tolerance: seconds by which an item's audio and video may differ in duration; beyond it a ValueError
                names the item (None: no check). Video durations count `video_processor.frame_rate` frames a second.
            kwargs: passed to the feature extractor (e.g. `padding`, `max_length`).

        Raises:
            ValueError: inputs the model cannot use, naming the item: besides the feature extractor's and video
                processor's own errors, an empty transcript, characters the tokenizer maps to its unknown token, and
                audio and video durations that differ by more than `av_tolerance`.
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
        if audio is not None and videos is not None:
            self._check_durations(data, av_tolerance)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            for index, item in enumerate(texts):
                check_transcript(item, self.tokenizer, f"text item {index}")
            data["labels"] = pad_labels(self.tokenizer(texts)["input_ids"])
        return BatchFeature(data, tensor_type=return_tensors)

    def _check_durations(self, data: dict, tolerance: float | None) -> None:
        """Each item's audio duration (from `attention_mask`) against its video's (from `video_attention_mask`)."""
        if tolerance is None or "attention_mask" not in data:
            return
        extractor = self.feature_extractor
        seconds_per_step = (1 if extractor.feature_type == "raw" else extractor.hop_length) / extractor.sampling_rate
        frame_rate = self.video_processor.frame_rate or VIDEO_FPS
        audio_steps = data["attention_mask"].sum(-1).tolist()
        video_frames = data["video_attention_mask"].sum(-1).tolist()
        for index, (steps, frames) in enumerate(zip(audio_steps, video_frames)):
            check_av_durations(frames / frame_rate, steps * seconds_per_step, f"item {index}", tolerance)

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
