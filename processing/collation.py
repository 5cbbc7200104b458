"""Batching: a data collator from dataset rows to padded model batches, and a frame-capped batch sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from transformers import BatchFeature

from .feature_extraction_mmavsr import to_waveform
from .processing_mmavsr import MMAVSRProcessor
from .video_processing_mmavsr import to_video_tensor


__all__ = ["MMAVSRDataCollator", "MaxFramesBatchSampler"]

Augmentation = Callable[[Any], Any] | Sequence[Callable[[Any], Any]]


def _apply(augmentation: Augmentation | None, x):
    if augmentation is None:
        return x
    for transform in augmentation if isinstance(augmentation, Sequence) else [augmentation]:
        x = transform(x)
    return x


@dataclass
class MMAVSRDataCollator:
    """Turns dataset rows into one padded model batch with [`MMAVSRProcessor`].

    A row is a dict with any of `video` (array `(T, H, W, C)`, path or torchcodec `VideoDecoder`), `audio` (array at
    the feature extractor's rate, `{"array", "sampling_rate"}`, torchcodec `AudioDecoder` or path) and `text` (str);
    every row must carry the same keys among `modalities` (+ `text`). Keys outside `modalities` are ignored, so a
    video-only model can read an audio-visual dataset.

    Args:
        processor: the processor making the batch.
        training: random video crops instead of centre crops.
        video_augmentation: callable(s) applied in order to each clip as a uint8 tensor `(T, C, H, W)` before
            processing, e.g. `TimeMask.for_video()` (masked frames become black, as in auto_avsr).
        audio_augmentation: callable(s) applied in order to each float32 wave `(S,)` before feature extraction,
            e.g. `[TimeMask.for_audio(), AddNoise(...)]`. Augmentations run whenever set, also at evaluation
            (a seeded `AddNoise(snr)` gives the noisy test condition of `--decode-snr-target`).
        modalities: which of "video" and "audio" to read from the rows.
    """

    processor: MMAVSRProcessor
    training: bool = False
    video_augmentation: Augmentation | None = None
    audio_augmentation: Augmentation | None = None
    modalities: tuple[str, ...] = field(default=("video", "audio"))

    def __post_init__(self):
        unknown = set(self.modalities) - {"video", "audio"}
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of ('video', 'audio'), got {self.modalities}")

    def __call__(self, rows: list[dict[str, Any]]) -> BatchFeature:
        if not rows:
            raise ValueError("cannot collate an empty list of rows")
        wanted = [key for key in (*self.modalities, "text") if key in rows[0]]
        for index, row in enumerate(rows):
            present = [key for key in (*self.modalities, "text") if key in row]
            if present != wanted:
                raise ValueError(f"row {index} has keys {present}, the first row has {wanted}")
        if not any(key in wanted for key in self.modalities):
            raise ValueError(f"rows carry none of the modalities {self.modalities} (keys: {sorted(rows[0])})")

        inputs = {}
        if "video" in wanted:
            frame_rate = self.processor.video_processor.frame_rate
            inputs["videos"] = [
                _apply(self.video_augmentation, to_video_tensor(row["video"], frame_rate)) for row in rows
            ]
        if "audio" in wanted:
            extractor = self.processor.feature_extractor
            inputs["audio"] = [
                _apply(
                    self.audio_augmentation,
                    to_waveform(row["audio"], None, extractor.sampling_rate, extractor.resample, extractor.mono),
                )
                for row in rows
            ]
        if "text" in wanted:
            inputs["text"] = [row["text"] for row in rows]
        return self.processor(**inputs, training=self.training, return_tensors="pt")


class MaxFramesBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices whose summed length stays <= `max_frames` (auto_avsr's `--max-frames`).

    Clips of similar length are batched together: without shuffling, indices are sorted by decreasing length; with
    shuffling, they are randomly permuted, grouped into `num_buckets` length buckets, packed, and the batches are
    shuffled, all from `seed + epoch` (call `set_epoch` each epoch). A clip longer than `max_frames` gets a batch of
    its own. Every index appears exactly once per epoch, unless `drop_last` drops the last batch packed.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int = 1600,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_buckets: int = 50,
    ):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or (self.lengths < 0).any():
            raise ValueError("lengths must be a flat sequence of non-negative frame counts")
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_buckets = num_buckets
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order `__iter__` yields."""
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.argsort(-self.lengths, kind="stable")
        generator = np.random.default_rng(self.seed + self.epoch)
        order = generator.permutation(len(self.lengths))
        edges = np.linspace(self.lengths.min(), self.lengths.max(), self.num_buckets) if len(order) else []
        buckets = np.searchsorted(edges, self.lengths[order])
        return order[np.argsort(buckets, kind="stable")]

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch."""
        batches, current, total = [], [], 0
        for index in self._order().tolist():
            length = int(self.lengths[index])
            if current and total + length > self.max_frames:
                batches.append(current)
                current, total = [], 0
            current.append(index)
            total += length
        if current and not self.drop_last:
            batches.append(current)
        if self.shuffle:
            generator = np.random.default_rng(self.seed + self.epoch + 1_000_003)
            batches = [batches[i] for i in generator.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
