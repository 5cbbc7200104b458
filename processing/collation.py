"""Batching: a data collator from dataset rows to padded model batches, and a frame-capped batch sampler."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler
from transformers import BatchFeature

from .feature_extraction_mmavsr import to_waveform
from .media_constants import VIDEO_FPS
from .processing_mmavsr import MMAVSRProcessor, check_av_durations, check_transcript, pad_labels
from .video_processing_mmavsr import to_video_tensor


__all__ = ["SKIPPED_CLIPS", "ClipReader", "MMAVSRDataCollator", "MaxFramesBatchSampler", "read_clip"]

logger = logging.getLogger(__name__)

# the key under which rows read by `ClipReader`, and the batches made of them, list the clips skipped in their place
SKIPPED_CLIPS = "skipped_clips"

Augmentation = Callable[[Any], Any] | Sequence[Callable[[Any], Any]]


def _apply(augmentation: Augmentation | None, x):
    if augmentation is None:
        return x
    for transform in augmentation if isinstance(augmentation, Sequence) else [augmentation]:
        x = transform(x)
    return x


def _files_of(row: dict[str, Any]) -> list[str]:
    """The media files a row names: paths, or the `path` of undecoded `datasets.Audio`/`Video` rows."""
    files = []
    for key in ("video", "audio"):
        value = row.get(key)
        if isinstance(value, dict):
            value = value.get("path")
        if isinstance(value, (str, os.PathLike)) and str(value) not in files:
            files.append(str(value))
    return files


def read_clip(
    row: dict[str, Any], processor: MMAVSRProcessor, modalities: Sequence[str] = ("video", "audio"), index: int = 0
) -> dict[str, Any]:
    """One dataset row with its media read: `video` becomes a tensor `(T, C, H, W)` and `audio` a float32 wave `(S,)`
    at the feature extractor's rate (for the `modalities` the row has; other keys are kept as they are).

    Raises:
        ValueError: naming the row's files (or `row {index}` for in-memory rows) and the problem: a missing, empty,
            corrupt or truncated file (`MediaError`), another sampling or frame rate or several channels (unless the
            processor converts them), audio and video durations that differ by more than
            `processing_mmavsr.AV_DURATION_TOLERANCE`, an empty transcript or one with characters the tokenizer lacks.
    """
    files = _files_of(row)
    source = " and ".join(files) if files else f"row {index}"
    clip = dict(row)
    try:
        if "video" in modalities and "video" in row:
            clip["video"] = to_video_tensor(row["video"], processor.video_processor.frame_rate)
        if "audio" in modalities and "audio" in row:
            extractor = processor.feature_extractor
            clip["audio"] = to_waveform(row["audio"], None, extractor.sampling_rate, extractor.resample, extractor.mono)
        if "video" in modalities and "audio" in modalities and "video" in row and "audio" in row:
            frame_rate = processor.video_processor.frame_rate or VIDEO_FPS
            rate = processor.feature_extractor.sampling_rate
            check_av_durations(len(clip["video"]) / frame_rate, len(clip["audio"]) / rate, source)
        if "text" in row:
            check_transcript(row["text"], processor.tokenizer, source)
    except ValueError as error:
        if any(file in str(error) for file in files) or str(error).startswith(source):
            raise
        raise type(error)(f"{source}: {error}") from error
    return clip


class ClipReader(Dataset):
    """A map-style dataset of `dataset`'s rows with their media read by [`read_clip`], for a DataLoader whose
    collator is [`MMAVSRDataCollator`] (reading happens in the DataLoader's workers).

    With `skip_bad_files=False` a clip that cannot be used raises the `ValueError` of [`read_clip`], which names its
    files. With `skip_bad_files=True` it is skipped: a warning names the file and the problem, the next usable row in
    dataset order takes its place (batches keep their size, so an epoch never ends early and every process under DDP
    runs the same number of steps), and the row returned lists the skipped clips' messages under `SKIPPED_CLIPS`
    (the collator puts them into the batch, for the trainer to count). Only a dataset without any usable clip raises.

    `reader["column"]` returns a column of `dataset` (e.g. `num_frames` for [`MaxFramesBatchSampler`]).

    With `cache=True` each clip read is kept in memory and later reads return it without decoding again (for a small
    corpus trained for several epochs; a 25 fps RGB clip takes 3 x H x W bytes a frame, ~2 MB for 3 s at 96x96).
    Augmentations and the processor work on copies, so cached clips stay as read. Each DataLoader worker holds its own
    cache.
    """

    def __init__(
        self,
        dataset,
        processor: MMAVSRProcessor,
        modalities: Sequence[str] = ("video", "audio"),
        skip_bad_files: bool = False,
        cache: bool = False,
    ):
        self.dataset = dataset
        self.processor = processor
        self.modalities = tuple(modalities)
        self.skip_bad_files = skip_bad_files
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, str):
            return self.dataset[index]
        skipped = []
        for offset in range(len(self.dataset)):
            position = (int(index) + offset) % len(self.dataset)
            try:
                clip = self._read(position)
            except ValueError as error:
                if not self.skip_bad_files:
                    raise
                logger.warning("Skipping a clip: %s", error)
                skipped.append(str(error))
                continue
            clip[SKIPPED_CLIPS] = skipped
            return clip
        raise ValueError(f"None of the {len(self.dataset)} clips can be used; the first problem: {skipped[0]}")

    def _read(self, position: int) -> dict[str, Any]:
        if self.cache is None:
            return read_clip(self.dataset[position], self.processor, self.modalities, index=position)
        if position not in self.cache:  # a clip that fails is not kept: it fails (or is skipped) again next time
            self.cache[position] = read_clip(self.dataset[position], self.processor, self.modalities, index=position)
        return dict(self.cache[position])


@dataclass
class MMAVSRDataCollator:
    """Turns dataset rows into one padded model batch with [`MMAVSRProcessor`].

    A row is a dict with any of `video` (array `(T, H, W, C)`, path or torchcodec `VideoDecoder`), `audio` (array at
    the feature extractor's rate, `{"array", "sampling_rate"}`, torchcodec `AudioDecoder` or path) and `text` (str);
    every row must carry the same keys among `modalities` (+ `text`). Keys outside `modalities` are ignored, so a
    video-only model can read an audio-visual dataset. Each row is read by [`read_clip`], whose errors name the
    row's files; the `SKIPPED_CLIPS` that rows of a [`ClipReader`] carry are gathered into the batch's `SKIPPED_CLIPS`.

    Args:
        processor: the processor making the batch.
        training: random video crops instead of centre crops.
        clip_augmentation: callable(s) applied in order to each clip dict (`video` a tensor `(T, C, H, W)`, `audio` a
            wave) before the per-modality ones, for changes that must agree across modalities, e.g.
            `BoundaryJitter.from_seconds(0.2)`.
        video_augmentation: callable(s) applied in order to each clip as a uint8 tensor `(T, C, H, W)` before
            processing, e.g. `TimeMask.for_video()` (masked frames become black, as in auto_avsr).
        audio_augmentation: callable(s) applied in order to each float32 wave `(S,)` before feature extraction,
            e.g. `[TimeMask.for_audio(), AddNoise(...)]`. Augmentations run whenever set, also at evaluation
            (a seeded `AddNoise(snr)` gives the noisy test condition of `--decode-snr-target`).
        modalities: which of "video" and "audio" to read from the rows.
        ctc_tokenizer: tokenizer of a CTC head with a vocabulary of its own (the LLM and Whisper decoders'
            `ctc_vocabulary="separate"`, e.g. `MMAVSRTokenizer.from_auto_avsr()`): the batch then also holds
            `ctc_labels`, the texts in its ids, padded with -100.
    """

    processor: MMAVSRProcessor
    training: bool = False
    video_augmentation: Augmentation | None = None
    audio_augmentation: Augmentation | None = None
    modalities: tuple[str, ...] = field(default=("video", "audio"))
    ctc_tokenizer: Any = None
    clip_augmentation: Augmentation | None = None

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

        clips = [read_clip(row, self.processor, self.modalities, index) for index, row in enumerate(rows)]
        clips = [_apply(self.clip_augmentation, clip) for clip in clips]
        inputs = {}
        if "video" in wanted:
            inputs["videos"] = [_apply(self.video_augmentation, clip["video"]) for clip in clips]
        if "audio" in wanted:
            inputs["audio"] = [_apply(self.audio_augmentation, clip["audio"]) for clip in clips]
        if "text" in wanted:
            inputs["text"] = [clip["text"] for clip in clips]
        batch = self.processor(**inputs, training=self.training, return_tensors="pt")
        if "text" in wanted and self.ctc_tokenizer is not None:
            batch["ctc_labels"] = pad_labels(self.ctc_tokenizer(inputs["text"])["input_ids"])
        skipped = [message for row in rows for message in row.get(SKIPPED_CLIPS, ())]
        if skipped:
            batch[SKIPPED_CLIPS] = skipped  # not a tensor: the trainer takes it out before the model sees the batch
        return batch


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
