"""Audio features for mmavsr: a normalised 16 kHz wave (ResNet1D, WavLM) or Whisper's log-mel (Whisper encoder)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor, WhisperFeatureExtractor
from transformers.utils import TensorType

from .media_constants import SAMPLING_RATE
from .media_io import read_audio, resample_audio


__all__ = ["MMAVSRFeatureExtractor", "to_waveform"]

FEATURE_TYPES = ("raw", "log-mel")


def to_waveform(item: Any, sampling_rate: int | None, expected_rate: int, resample: bool, mono: bool) -> np.ndarray:
    """Turn one audio item into a float32 mono wave `(S,)` at `expected_rate`.

    `item` is a 1-D array/list/tensor (at `sampling_rate`, or `expected_rate` when None), a dict with `array` and
    `sampling_rate` (or the `path` of an undecoded `datasets.Audio` row), a torchcodec `AudioDecoder` (its own rate),
    or a path to an audio file. Another rate raises a ValueError naming both rates unless `resample`; several channels
    raise a ValueError naming the shape unless `mono` (then they are averaged; channels are the shorter axis of a 2-D
    item).
    """
    if isinstance(item, (str, os.PathLike)):
        return read_audio(item, sampling_rate=expected_rate, resample=resample, mono=mono)
    if isinstance(item, dict) and "array" not in item and item.get("path") and not item.get("bytes"):
        # a `datasets.Audio(decode=False)` row: read the file (soundfile is much faster than a decoder per row)
        return read_audio(item["path"], sampling_rate=expected_rate, resample=resample, mono=mono)
    if isinstance(item, dict):
        if "array" not in item:
            raise ValueError(
                f"audio dict needs an 'array' key (and 'sampling_rate') or a 'path', got keys {sorted(item)}"
            )
        sampling_rate = item.get("sampling_rate", sampling_rate)
        item = item["array"]
    elif hasattr(item, "get_all_samples"):  # torchcodec AudioDecoder
        samples = item.get_all_samples()
        item, sampling_rate = samples.data, samples.sample_rate  # (C, S)
    if hasattr(item, "detach"):  # torch tensor
        item = item.detach().cpu().float().numpy()
    wave = np.asarray(item, dtype=np.float32)
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim == 2 and mono:
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1:
        raise ValueError(
            f"audio of shape {tuple(wave.shape)} is not mono: expected shape (S,)"
            + (" (pass mono=True to the feature extractor to average channels)" if wave.ndim == 2 else "")
        )
    sampling_rate = expected_rate if sampling_rate is None else int(sampling_rate)
    if sampling_rate != expected_rate:
        if not resample:
            raise ValueError(
                f"audio sampling rate is {sampling_rate} Hz, expected {expected_rate} Hz "
                "(build the feature extractor with resample=True to convert)"
            )
        wave = resample_audio(wave, sampling_rate, expected_rate)
    return wave


class MMAVSRFeatureExtractor(SequenceFeatureExtractor):
    """Audio feature extractor for the mmavsr audio encoders.

    - `feature_type="raw"` (ResNet1D, WavLM): the 16 kHz wave, each utterance normalised to zero mean and unit
      variance over its real samples (auto_avsr's utterance layer norm), padded with 0.
      `input_features` `(B, S)`, `attention_mask` `(B, S)`.
    - `feature_type="log-mel"` (Whisper encoder): exactly `WhisperFeatureExtractor`'s log-mel with `num_mel_bins`
      bins. `input_features` `(B, num_mel_bins, frames)`, `attention_mask` `(B, frames)`, 100 frames per second.
      Padded to the longest clip, or to the 30 s Whisper window when `pad_to_whisper_window=True`; a clip longer than
      `chunk_length` seconds raises a ValueError (never truncated: the pipelines cut recordings into segments).

    Inputs may be arrays, lists, torch tensors, `{"array", "sampling_rate"}` dicts, torchcodec `AudioDecoder`s or
    file paths. A sampling rate other than `sampling_rate` raises a ValueError naming both rates unless
    `resample=True`; multi-channel audio raises a ValueError naming its shape unless `mono=True` (channels averaged).
    A 2-D array or tensor passed directly is read as a batch of mono waves `(B, S)`.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_type: str = "raw",
        sampling_rate: int = SAMPLING_RATE,
        num_mel_bins: int = 80,
        hop_length: int = 160,
        n_fft: int = 400,
        chunk_length: int = 30,
        pad_to_whisper_window: bool = False,
        do_normalize: bool = True,
        resample: bool = False,
        mono: bool = False,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        if feature_type not in FEATURE_TYPES:
            raise ValueError(f"feature_type must be one of {FEATURE_TYPES}, got {feature_type!r}")
        kwargs.pop("feature_size", None)
        super().__init__(
            feature_size=1 if feature_type == "raw" else num_mel_bins,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.feature_type = feature_type
        self.num_mel_bins = num_mel_bins
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.chunk_length = chunk_length
        self.pad_to_whisper_window = pad_to_whisper_window
        self.do_normalize = do_normalize
        self.resample = resample
        self.mono = mono

    @property
    def whisper_feature_extractor(self) -> WhisperFeatureExtractor:
        """The `WhisperFeatureExtractor` computing the log-mel (built on first use)."""
        if getattr(self, "_whisper", None) is None:
            self._whisper = WhisperFeatureExtractor(
                feature_size=self.num_mel_bins,
                sampling_rate=self.sampling_rate,
                hop_length=self.hop_length,
                chunk_length=self.chunk_length,
                n_fft=self.n_fft,
                padding_value=self.padding_value,
            )
        return self._whisper

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_whisper", None)
        output.pop("feature_size", None)
        return output

    def frames_for_samples(self, num_samples: int) -> int:
        """Number of feature frames for a wave of `num_samples` samples (the samples themselves for raw)."""
        return num_samples if self.feature_type == "raw" else num_samples // self.hop_length

    def _to_waves(self, raw_speech: Any, sampling_rate: int | None) -> list[np.ndarray]:
        is_array = isinstance(raw_speech, np.ndarray) or hasattr(raw_speech, "detach")
        if is_array and raw_speech.ndim == 2:  # a batch (B, S)
            raw_speech = list(raw_speech)
        elif is_array and raw_speech.ndim > 2:
            raise ValueError(f"audio of shape {tuple(raw_speech.shape)}: expected (S,) or a batch (B, S)")
        is_batch = (
            isinstance(raw_speech, (list, tuple))
            and len(raw_speech) > 0
            and not isinstance(raw_speech[0], (int, float, np.number))
        )
        items = list(raw_speech) if is_batch else [raw_speech]
        waves = []
        for index, item in enumerate(items):
            try:
                wave = to_waveform(item, sampling_rate, self.sampling_rate, self.resample, self.mono)
            except ValueError as error:
                raise ValueError(f"audio item {index}: {error}") from error
            if wave.size == 0:
                raise ValueError(f"audio item {index} is empty")
            waves.append(wave)
        return waves

    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        padding: bool | str = "longest",
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch.

        Args:
            raw_speech: one clip or a list of clips (see the class docstring for accepted types).
            sampling_rate: rate of array inputs; None means `self.sampling_rate`. Dicts and decoders carry their own.
            padding, max_length, truncation, pad_to_multiple_of: as in `SequenceFeatureExtractor.pad`, counted in
                samples (raw only; log-mel pads to the longest clip or to the Whisper window).
            return_attention_mask: defaults to `self.return_attention_mask`.
            return_tensors: "pt", "np" or None.
        """
        waves = self._to_waves(raw_speech, sampling_rate)
        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask
        if self.feature_type == "log-mel":
            return self._log_mel(waves, return_attention_mask, return_tensors)

        padded = self.pad(
            BatchFeature({"input_features": waves}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True,
        )
        mask = np.asarray(padded["attention_mask"], dtype=np.int64)  # (B, S)
        features = np.asarray(padded["input_features"], dtype=np.float32)  # (B, S)
        if self.do_normalize:
            features = self.normalize(features, mask, self.padding_value)
        output = {"input_features": features}
        if return_attention_mask:
            output["attention_mask"] = mask
        return BatchFeature(output, tensor_type=return_tensors)

    def _log_mel(self, waves: list[np.ndarray], return_attention_mask: bool, return_tensors) -> BatchFeature:
        """Whisper's log-mel features of the clips, padded to the longest clip (or to the Whisper window)."""
        for index, wave in enumerate(waves):
            if self.frames_for_samples(wave.shape[-1]) == 0:
                raise ValueError(
                    f"audio item {index} has {wave.shape[-1]} samples, less than one log-mel frame ({self.hop_length} "
                    f"samples, {1000 * self.hop_length / self.sampling_rate:g} ms)"
                )
        window = self.chunk_length * self.sampling_rate
        for index, wave in enumerate(waves):
            if wave.shape[-1] > window:
                raise ValueError(
                    f"audio item {index} lasts {wave.shape[-1] / self.sampling_rate:.2f} s, longer than the "
                    f"{self.chunk_length} s log-mel window (`chunk_length`); it is never truncated: cut it into "
                    "segments (the audio-visual-speech-recognition pipeline and mmavsr-transcribe do)"
                )
        longest = max(wave.shape[-1] for wave in waves)
        padding = {"padding": "max_length" if self.pad_to_whisper_window else "longest"}
        if not self.pad_to_whisper_window and longest <= self.n_fft // 2:
            # Whisper's STFT mirrors n_fft / 2 samples past each end, more than such a clip holds: zero-pad the batch
            # to one window and keep the frames of its longest clip
            padding = {"padding": "max_length", "max_length": self.n_fft}
        features = self.whisper_feature_extractor(
            waves, sampling_rate=self.sampling_rate, return_attention_mask=True, return_tensors="np", **padding
        )
        frames = self.frames_for_samples(longest)
        if self.pad_to_whisper_window:
            frames = features["input_features"].shape[-1]
        output = {"input_features": features["input_features"][..., :frames].astype(np.float32)}  # (B, n_mels, frames)
        if return_attention_mask:
            output["attention_mask"] = features["attention_mask"][:, :frames].astype(np.int64)  # (B, frames)
        return BatchFeature(output, tensor_type=return_tensors)

    @staticmethod
    def normalize(features: np.ndarray, mask: np.ndarray, padding_value: float = 0.0, eps: float = 1e-8) -> np.ndarray:
        """Zero mean, unit variance per row of `features` `(B, S)` over the samples where `mask` is 1."""
        lengths = mask.sum(-1)
        normalised = np.full_like(features, padding_value)
        for row, length in enumerate(lengths):
            real = features[row, :length]
            normalised[row, :length] = (real - real.mean()) / np.sqrt(real.var() + eps)
        return normalised
