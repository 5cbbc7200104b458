"""Augmentation for training and for noisy evaluation: adaptive time masking, additive noise at an exact SNR, and
clip boundaries moved at random (the same in every modality)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from .media_constants import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS
from .media_io import read_audio


__all__ = [
    "CLEAN_SNR",
    "BoundaryJitter",
    "TimeMask",
    "AddNoise",
    "make_babble",
    "snr_db",
    "training_augmentations",
]

CLEAN_SNR = 999999  # auto_avsr's `--decode-snr-target` value meaning "no noise"

logger = logging.getLogger(__name__)


def _to_numpy(x) -> tuple[np.ndarray, bool]:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy(), True
    return np.asarray(x), False


def _like(x: np.ndarray, was_torch: bool):
    return torch.from_numpy(x) if was_torch else x


class TimeMask:
    """Zero random stretches along the first (time) axis, one stretch per `stride` steps (auto_avsr's adaptive mask).

    For a sequence of length T, `int((T + stride - 0.1) // stride)` stretches are drawn, each of a width uniform in
    `[0, max_width)` at a uniform start, so longer clips get proportionally more masking. Works on numpy arrays and
    torch tensors `(T, ...)` and returns a masked copy of the same type. `seed` makes the sequence of masks repeatable.
    """

    def __init__(self, max_width: int, stride: int, seed: int | None = None):
        if max_width < 1 or stride < 1:
            raise ValueError(f"max_width and stride must be >= 1, got {max_width} and {stride}")
        self.max_width = max_width
        self.stride = stride
        self.generator = np.random.default_rng(seed)

    @classmethod
    def for_video(cls, seed: int | None = None) -> TimeMask:
        """auto_avsr's video mask at 25 fps: up to 10 frames per second of video (0.4 s)."""
        return cls(max_width=round(0.4 * VIDEO_FPS), stride=VIDEO_FPS, seed=seed)

    @classmethod
    def for_audio(cls, seed: int | None = None) -> TimeMask:
        """auto_avsr's audio mask at 16 kHz: up to 6400 samples per second of audio (0.4 s)."""
        return cls(max_width=round(0.4 * SAMPLING_RATE), stride=SAMPLING_RATE, seed=seed)

    def __call__(self, x):
        array, was_torch = _to_numpy(x)
        masked = array.copy()
        length = len(masked)
        num_masks = int((length + self.stride - 0.1) // self.stride)
        for width in self.generator.integers(0, self.max_width, size=num_masks):
            if width == 0 or width >= length:
                continue
            start = int(self.generator.integers(0, length - width))
            masked[start : start + width] = 0
        return _like(masked, was_torch)


class BoundaryJitter:
    """Moves a clip's start and its end, each by a whole number of 25 fps frames drawn uniformly from
    `[-max_frames, max_frames]`, the same in every modality: a negative draw trims frames (video) and their
    `SAMPLES_PER_FRAME` samples each (audio); a positive one adds frames, copies of the edge frame, and silence.

    A model trained only on clips cut the same way (e.g. a speech synthesizer's fixed lead-in) learns that cut: fed a
    segment that a voice-activity detector cut from a long recording, it loses the first and last words. Trims keep
    at least half of the clip (at most a quarter from each end). Called on a clip dict (`video`: `(T, C, H, W)`
    tensor or array, `audio`: wave `(S,)`; either may be absent) and returns a new dict. `seed` (or the `generator`
    attribute) makes the draws repeatable."""

    def __init__(self, max_frames: int, seed: int | None = None):
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.max_frames = max_frames
        self.generator = np.random.default_rng(seed)

    @classmethod
    def from_seconds(cls, max_shift_s: float, seed: int | None = None) -> BoundaryJitter:
        """Up to `max_shift_s` seconds at each end, rounded to whole frames."""
        if max_shift_s < 0:
            raise ValueError(f"the boundary jitter must be >= 0 seconds, got {max_shift_s}")
        return cls(int(round(max_shift_s * VIDEO_FPS)), seed=seed)

    def __call__(self, clip: dict) -> dict:
        video, audio = clip.get("video"), clip.get("audio")
        if video is None and audio is None:
            return clip
        frames = len(video) if video is not None else len(audio) // SAMPLES_PER_FRAME
        shifts = self.generator.integers(-self.max_frames, self.max_frames + 1, size=2)
        # a trim takes at most a quarter of the clip from each end
        head, tail = (int(max(shift, -(frames // 4))) for shift in shifts)
        clip = dict(clip)
        if video is not None:
            clip["video"] = _moved_edges(video, head, tail, 1, edge_copies=True)
        if audio is not None:
            clip["audio"] = _moved_edges(audio, head, tail, SAMPLES_PER_FRAME, edge_copies=False)
        return clip


def _moved_edges(x, head: int, tail: int, unit: int, edge_copies: bool):
    """`x` (time first) with `head` / `tail` frames of `unit` steps added (> 0) or removed (< 0) at its start / end;
    added steps repeat the edge (`edge_copies`) or are zeros."""
    array, was_torch = _to_numpy(x)
    array = array[max(-head, 0) * unit : len(array) - max(-tail, 0) * unit]

    def filler(count: int, edge: np.ndarray) -> np.ndarray:
        edge = edge if edge_copies else np.zeros_like(edge)
        return np.repeat(edge, max(count, 0) * unit, axis=0)

    moved = np.concatenate([filler(head, array[:1]), array, filler(tail, array[-1:])])
    return _like(moved, was_torch)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of `noisy` against `clean` (the noise is their difference)."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10 * np.log10(np.mean(clean**2) / np.mean(noise**2)))


class AddNoise:
    """Add noise to a mono wave `(S,)` at an exact SNR.

    Args:
        snr_db: the SNR in dB, or a sequence to draw one from per call (auto_avsr trains with
            `(-5, 0, 5, 10, 15, 20, 999999)`). `CLEAN_SNR` (999999) leaves the wave unchanged.
        noise: None for white Gaussian noise, a wave `(S,)` (e.g. from [`make_babble`]), or a path to an audio file
            (read at `sampling_rate`, resampled and averaged to mono if needed). A random segment of it is used,
            repeated when shorter than the speech.
        sampling_rate: the rate of the speech and of `noise` arrays.
        seed: seeds the segment choice, the SNR draw and white noise; use a fixed seed for evaluation.
    """

    def __init__(
        self,
        snr_db: float | Sequence[float],
        noise: np.ndarray | str | os.PathLike | None = None,
        sampling_rate: int = SAMPLING_RATE,
        seed: int | None = None,
    ):
        self.snr_levels = [float(snr_db)] if np.isscalar(snr_db) else [float(level) for level in snr_db]
        if not self.snr_levels:
            raise ValueError("snr_db must be a number or a non-empty sequence of numbers")
        if isinstance(noise, (str, os.PathLike)):
            noise = read_audio(noise, sampling_rate=sampling_rate, resample=True, mono=True)
        if noise is not None:
            noise, _ = _to_numpy(noise)
            noise = noise.astype(np.float64)
            if noise.ndim != 1 or noise.size == 0 or not np.any(noise):
                raise ValueError(f"noise must be a non-silent mono wave (S,), got shape {noise.shape}")
        self.noise = noise
        self.sampling_rate = sampling_rate
        self.generator = np.random.default_rng(seed)

    def _noise_segment(self, length: int) -> np.ndarray:
        if self.noise is None:
            return self.generator.standard_normal(length)
        noise = self.noise
        if len(noise) < length:
            noise = np.tile(noise, -(-length // len(noise)))
        start = int(self.generator.integers(0, len(noise) - length + 1))
        return noise[start : start + length]

    def __call__(self, wave):
        array, was_torch = _to_numpy(wave)
        if array.ndim != 1:
            raise ValueError(f"AddNoise expects a mono wave (S,), got shape {array.shape}")
        level = self.snr_levels[int(self.generator.integers(0, len(self.snr_levels)))]
        speech = array.astype(np.float64)
        speech_power = np.mean(speech**2) if speech.size else 0.0
        if level >= CLEAN_SNR or speech_power == 0:
            return _like(array.copy(), was_torch)
        noise = self._noise_segment(len(speech))
        noise_power = np.mean(noise**2)
        if noise_power == 0:  # a silent stretch of the noise file: take white noise instead
            noise = self.generator.standard_normal(len(speech))
            noise_power = np.mean(noise**2)
        scale = np.sqrt(speech_power / (noise_power * 10 ** (level / 10)))
        noisy = (speech + scale * noise).astype(array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32)
        return _like(noisy, was_torch)


def make_babble(
    utterances: Sequence[np.ndarray], n_speakers: int = 4, length: int | None = None, seed: int | None = None
) -> np.ndarray:
    """Babble noise: `n_speakers` utterances drawn from `utterances`, each scaled to unit RMS, looped or cut to
    `length` samples (default: the longest drawn) and summed. Returns float32 `(length,)` peak-normalised to 0.9."""
    waves = [np.asarray(u, dtype=np.float64) for u in utterances]
    waves = [wave for wave in waves if wave.ndim == 1 and wave.size and np.any(wave)]
    if not waves:
        raise ValueError("make_babble needs at least one non-silent mono utterance")
    generator = np.random.default_rng(seed)
    chosen = generator.choice(len(waves), size=n_speakers, replace=n_speakers > len(waves))
    picked = [waves[index] for index in chosen]
    length = length or max(len(wave) for wave in picked)
    babble = np.zeros(length)
    for wave in picked:
        wave = wave / np.sqrt(np.mean(wave**2))
        wave = np.roll(np.tile(wave, -(-length // len(wave))), int(generator.integers(0, len(wave))))[:length]
        babble += wave
    return (0.9 * babble / np.abs(babble).max()).astype(np.float32)


def training_augmentations(
    modalities,
    time_masking: bool = True,
    train_snr: Sequence[float] | None = None,
    noise=None,
    boundary_jitter_s: float = 0.0,
) -> dict[str, list | None]:
    """The collator's augmentations of a training run: `clip` (`clip_augmentation`: a [`BoundaryJitter`] of up to
    `boundary_jitter_s` seconds when it is > 0), then by modality (`video_augmentation` / `audio_augmentation`):
    auto_avsr's time masks of each modality read (with `time_masking`), then noise at an SNR drawn from `train_snr`
    added to the audio (`noise` as in [`AddNoise`]); None where there is none."""
    masks = {
        modality: [TimeMask.for_video() if modality == "video" else TimeMask.for_audio()]
        if time_masking and modality in modalities
        else []
        for modality in ("video", "audio")
    }
    if train_snr and "audio" in modalities:
        masks["audio"].append(AddNoise(train_snr, noise=noise))
    augmentations = {modality: augmentations or None for modality, augmentations in masks.items()}
    augmentations["clip"] = [BoundaryJitter.from_seconds(boundary_jitter_s)] if boundary_jitter_s > 0 else None
    return augmentations
