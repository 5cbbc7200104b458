"""Any `datasets` dataset as mmavsr training data: loading, column checks, streaming batches, and export.

- [`load_avsr_dataset`] opens what `datasets.load_dataset` opens (a Hub id, a folder of parquet files, a parquet /
  CSV / JSON file, a `videofolder` or `audiofolder` with a metadata file) and `save_to_disk` folders, checks the
  columns the model needs and gives the rows of [`load_auto_avsr_dataset`]: `video`, `audio` (`datasets.Video` /
  `datasets.Audio` columns or file paths), `text`, and `num_frames` / `id` when the dataset has them, so that
  [`MMAVSRDataCollator`] batches them as it batches auto_avsr's CSV layout.
- [`MaxFramesStreamBatcher`] turns a streamed (`IterableDataset`) split into batches whose summed video frames stay
  under `max_frames`, through a bounded buffer (memory does not grow with the dataset), resumable from a checkpoint
  with `stream_resume`'s [`StreamingStateCallback`] and [`restore_streaming_state`]; [`shard_stream`] splits a
  stream across the processes of a distributed run with `datasets.distributed.split_dataset_by_node`.
- [`export_auto_avsr_dataset`] writes a corpus in auto_avsr's layout (what `prepare` and the demo corpus write) as a
  `datasets.DatasetDict` with the media embedded, to a folder (`save_to_disk`) and/or to the Hub (`push_to_hub`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .collation import SKIPPED_CLIPS, read_clip
from .lrs3 import DatasetError, load_auto_avsr_dataset
from .media_check import without_decoding
from .media_constants import SAMPLING_RATE, VIDEO_FPS
from .media_io import VIDEO_SUFFIXES


__all__ = [
    "HUB_SPLIT_NAMES",
    "MaxFramesStreamBatcher",
    "add_num_frames",
    "auto_avsr_to_dataset",
    "check_columns",
    "clip_frames",
    "export_auto_avsr_dataset",
    "load_avsr_dataset",
    "load_avsr_splits",
    "shard_stream",
    "streaming_dataloader",
]

logger = logging.getLogger(__name__)

# auto_avsr's split names -> the Hub's
HUB_SPLIT_NAMES = {"val": "validation"}
# file formats `load_dataset` reads from a single local file, by suffix
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
AUDIO_FILE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
# columns kept beside the media and the text when a dataset has them
EXTRA_COLUMNS = ("id", "num_frames")


# ------------------------------------------------------------------------------------------------------------ loading


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _folder_builder(path: Path) -> str | None:
    """`videofolder` for a local folder of videos, `audiofolder` for one of audio files only, else None."""
    suffixes = {file.suffix.lower() for file in path.rglob("*") if file.is_file()}
    if suffixes & set(VIDEO_SUFFIXES):
        return "videofolder"
    if suffixes & set(AUDIO_FILE_SUFFIXES):
        return "audiofolder"
    return None


def _pick_split(dataset, split: str, source: str):
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise DatasetError(f"{source}: no split {split!r}; the splits are {sorted(dataset)}.")
        return dataset[split]
    return dataset


def _open(name: str, config_name: str | None, split: str, streaming: bool, num_shards: int, load_kwargs: dict):
    path = Path(name)
    if path.is_dir() and _is_saved_dataset(path):
        dataset = _pick_split(datasets.load_from_disk(str(path)), split, str(path))
        return dataset.to_iterable_dataset(num_shards=max(1, min(num_shards, len(dataset)))) if streaming else dataset
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DatasetError(f"{path}: not a dataset file (expected one of {sorted(FILE_BUILDERS)}).")
            if path.suffix.lower() == ".tsv":
                load_kwargs = {"delimiter": "\t", **load_kwargs}
            return datasets.load_dataset(
                builder, data_files={split: str(path)}, split=split, streaming=streaming, **load_kwargs
            )
        if path.is_dir() and (builder := _folder_builder(path)) is not None:
            return datasets.load_dataset(builder, data_dir=str(path), split=split, streaming=streaming, **load_kwargs)
        return datasets.load_dataset(name, config_name, split=split, streaming=streaming, **load_kwargs)
    except ValueError as error:  # e.g. an unknown split: name the dataset
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{name}: {error}") from error


def _features_of(dataset) -> datasets.Features:
    features = dataset.features
    if features is None:  # a streamed dataset whose format does not say (e.g. JSON lines): read one row
        features = dataset._resolve_features().features
    return features


def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def check_columns(
    features: datasets.Features,
    modalities: Sequence[str] = ("video", "audio"),
    video_column: str = "video",
    audio_column: str = "audio",
    text_column: str = "text",
    source: str = "dataset",
) -> None:
    """Checks that the columns a model of `modalities` reads exist and have a usable type: the video a
    `datasets.Video` column or file paths, the audio a `datasets.Audio` (or `datasets.Video`, read for its sound)
    column or file paths, the text strings.

    Raises:
        DatasetError: naming the column, the flag that chooses it, its type and the dataset's columns.
    """
    wanted = [("text", text_column)] + [
        (kind, column) for kind, column in (("video", video_column), ("audio", audio_column)) if kind in modalities
    ]
    found = ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items())
    for kind, column in wanted:
        flag = f"--{kind}_column_name"
        if column not in features:
            raise DatasetError(f"{source}: no {kind} column {column!r} ({flag}); the columns are: {found}.")
        feature = features[column]
        usable = {
            "video": isinstance(feature, datasets.Video) or _is_text(feature),
            "audio": isinstance(feature, (datasets.Audio, datasets.Video)) or _is_text(feature),
            "text": _is_text(feature),
        }[kind]
        if not usable:
            expected = {
                "video": "a datasets.Video column or file paths (strings)",
                "audio": "a datasets.Audio column or file paths (strings)",
                "text": "strings",
            }[kind]
            raise DatasetError(
                f"{source}: the {kind} column {column!r} ({flag}) holds {feature}, expected {expected}; "
                f"the columns are: {found}."
            )


def _paths_only(dataset: datasets.Dataset, column: str) -> bool:
    """Whether a map-style media column stores only file paths (no embedded bytes): read from the arrow table."""
    chunks = dataset.data.column(column).chunks
    return all(chunk.field("bytes").null_count == len(chunk) for chunk in chunks)


def load_avsr_dataset(
    dataset_name: str | os.PathLike,
    config_name: str | None = None,
    split: str = "train",
    *,
    modalities: Sequence[str] = ("video", "audio"),
    video_column: str = "video",
    audio_column: str = "audio",
    text_column: str = "text",
    streaming: bool = False,
    sampling_rate: int = SAMPLING_RATE,
    num_shards: int = 64,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of any dataset, with the rows the collator reads: `video` and/or `audio` (for `modalities`),
    `text`, and `id` / `num_frames` when the dataset has them; other columns are dropped.

    Args:
        dataset_name: a Hub id (`load_dataset(dataset_name, config_name)`), a `save_to_disk` folder (read with
            `load_from_disk`), a parquet / CSV / JSON(L) file, a folder of videos (`videofolder`) or of audio files
            (`audiofolder`) with a `metadata.csv` / `metadata.jsonl` (`file_name` is the video; an
            `audio_file_name` column gives a separate audio file), or any other folder `load_dataset` reads.
        split: the split to read (a single file is read as this split).
        modalities: the media the model reads; their columns must exist, the other is dropped.
        video_column, audio_column, text_column: the columns holding the video, the audio and the transcript
            (renamed `video`, `audio`, `text`). Media columns are `datasets.Video` / `datasets.Audio` columns (a
            `datasets.Video` audio column, as a `videofolder`'s `audio_file_name`, is read for its sound) or file
            paths (absolute, or relative to the working directory).
        streaming: return a `datasets.IterableDataset` (nothing downloaded or converted up front) of undecoded rows
            (media as `{"bytes", "path"}`; [`MaxFramesStreamBatcher`] decodes them); a `save_to_disk` folder is
            streamed in `num_shards` contiguous shards (for `shard_stream` and DataLoader workers).
        sampling_rate: `datasets.Audio` columns are decoded (resampled if needed) at this rate.
        load_kwargs: passed to `datasets.load_dataset` (e.g. `cache_dir`, `token`, `revision`).

    Raises:
        DatasetError: no such split, a missing column or one of the wrong type (naming it and the columns found).
    """
    name = os.fspath(dataset_name)
    dataset = _open(name, config_name, split, streaming, num_shards, load_kwargs)
    features = _features_of(dataset)
    if isinstance(dataset, datasets.IterableDataset):
        # rows stay undecoded through the column steps below (a `videofolder`'s audio file would be decoded as a
        # video before its cast); `MaxFramesStreamBatcher` decodes the rows it batches
        dataset = dataset.decode(False)
    check_columns(features, modalities, video_column, audio_column, text_column, source=f"{name} ({split})")
    renames = {"text": text_column}
    renames.update(
        {kind: column for kind, column in (("video", video_column), ("audio", audio_column)) if kind in modalities}
    )
    extras = [column for column in EXTRA_COLUMNS if column in features and column not in renames.values()]
    if len(set(renames.values())) < len(renames):  # one column read twice (a video file's own sound track)
        raise DatasetError(
            f"{name}: one column is named for several of {sorted(renames)}; for a video's own sound give its file "
            "name again in an `audio_file_name` metadata column (or an audio path column)."
        )
    dataset = dataset.select_columns(list(dict.fromkeys([*renames.values(), *extras])))
    dataset = dataset.rename_columns({column: kind for kind, column in renames.items() if column != kind})
    if "audio" in renames and not _is_text(features[renames["audio"]]):
        dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=sampling_rate))
    if isinstance(dataset, datasets.Dataset):
        # the collator reads files directly (soundfile / PyAV, faster than a torchcodec decoder per row); embedded
        # media stay decoded by datasets (torchcodec decoders, which the collator reads too)
        media = [c for c in ("video", "audio") if isinstance(dataset.features.get(c), (datasets.Video, datasets.Audio))]
        dataset = without_decoding(dataset, [column for column in media if _paths_only(dataset, column)])
    return dataset


def load_avsr_splits(
    dataset_name: str | os.PathLike,
    config_name: str | None,
    splits: Mapping[str, str],
    *,
    modalities: Sequence[str] = ("video", "audio"),
    video_column: str = "video",
    audio_column: str = "audio",
    text_column: str = "text",
    streaming: Sequence[str] = (),
    limits: Mapping[str, int | None] | None = None,
    index_column: str | None = None,
    **load_kwargs,
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """[`load_avsr_dataset`] for each stage of a run: `splits` maps a stage (e.g. `train`, `eval`) to its split
    name; the stages in `streaming` are streamed. `limits[stage]` keeps the first N rows; `index_column` numbers the
    rows of the map-style splits (a streamed one is numbered by [`MaxFramesStreamBatcher`]'s `index_column`).

    Raises:
        DatasetError: as `load_avsr_dataset`, or a map-style split without rows.
    """
    loaded = {}
    for stage, split in splits.items():
        dataset = load_avsr_dataset(
            dataset_name,
            config_name,
            split,
            modalities=modalities,
            video_column=video_column,
            audio_column=audio_column,
            text_column=text_column,
            streaming=stage in streaming,
            **load_kwargs,
        )
        limit = (limits or {}).get(stage)
        if isinstance(dataset, datasets.IterableDataset):
            loaded[stage] = dataset.take(limit) if limit is not None else dataset
            continue
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        if len(dataset) == 0:
            raise DatasetError(f"{os.fspath(dataset_name)}: the {split} split has no rows.")
        if index_column:
            dataset = dataset.add_column(index_column, list(range(len(dataset))))
        loaded[stage] = dataset
    return loaded


# ------------------------------------------------------------------------------------------------------- clip length


def clip_frames(
    row: Mapping[str, Any], features: datasets.Features | None = None, frame_rate: float = VIDEO_FPS
) -> int:
    """A row's length in video frames (what `--max-frames` counts): its `num_frames`, else the video's frame count
    from its header, else the audio's duration times `frame_rate`. Media are read as `features` decode them
    (undecoded `{"bytes", "path"}` values, paths, or torchcodec decoders).

    Raises:
        ValueError: naming the file when its header cannot be read.
    """
    if row.get("num_frames") is not None:
        return int(row["num_frames"])
    features = features or datasets.Features()
    for column in ("video", "audio"):
        if row.get(column) is None:
            continue
        value = row[column]
        where = value.get("path") if isinstance(value, dict) else value
        try:
            decoder = _decoder(value, features.get(column), column)
            if column == "video":
                metadata = decoder.metadata
                frames = metadata.num_frames or round((metadata.duration_seconds or 0) * frame_rate)
            else:
                frames = round(decoder.metadata.duration_seconds_from_header * frame_rate)
        except Exception as error:  # noqa: BLE001 - torchcodec raises several types: name the file
            raise ValueError(f"{where}: cannot read the {column}'s length ({type(error).__name__}: {error})") from None
        return max(1, int(frames))
    raise ValueError(f"row has no num_frames, video or audio to measure (keys: {sorted(row)})")


def add_num_frames(dataset: datasets.Dataset, frame_rate: float = VIDEO_FPS) -> datasets.Dataset:
    """`dataset` with a `num_frames` column (each clip's length from [`clip_frames`]: the media's headers) when it has
    none, for `MaxFramesBatchSampler` (`--max-frames`); a dataset that has one is returned as it is."""
    if "num_frames" in dataset.column_names:
        return dataset
    features = dataset.features
    return dataset.map(
        lambda row: {"num_frames": clip_frames(row, features, frame_rate)}, desc="Measuring the clips' lengths"
    )


def _decoder(value, feature, column: str):
    """A torchcodec decoder for a media value: an undecoded `{"bytes", "path"}` dict or a path, decoded as `feature`
    (a decoding `datasets.Video` / `datasets.Audio`) would; decoders are returned as they are."""
    if hasattr(value, "metadata"):
        return value
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    if not isinstance(feature, (datasets.Video, datasets.Audio)):
        feature = datasets.Video() if column == "video" else datasets.Audio()
    if not feature.decode:
        feature = copy.copy(feature)
        feature.decode = True
    return feature.decode_example(value)


# ---------------------------------------------------------------------------------------------------------- streaming


def shard_stream(
    dataset: datasets.IterableDataset,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = 0,
    shuffle_buffer_size: int = 1000,
) -> datasets.IterableDataset:
    """This process's part of a streamed dataset: shuffled (shard order and a buffer of `shuffle_buffer_size` rows,
    from `seed`, the same on every process; `seed=None` keeps the stream's order), then split with
    `split_dataset_by_node` (whole shards per process when their number divides by `world_size`, else every
    `world_size`-th row)."""
    if seed is not None:
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    return dataset


class MaxFramesStreamBatcher(torch.utils.data.IterableDataset):
    """Batches of a streamed dataset's rows whose summed video frames stay <= `max_frames` (or of `batch_size` rows),
    for a `DataLoader(batcher, batch_size=None, collate_fn=MMAVSRDataCollator(...))` ([`streaming_dataloader`]).

    Rows are read `buffer_size` at a time (undecoded: paths and embedded bytes), sorted by length and packed greedily,
    so that clips of similar length share a batch; the batches of a buffer are yielded in an order drawn from
    `(seed, epoch, buffer)` (`shuffle=True`). Memory stays that of one buffer, whatever the dataset's size. A clip
    longer than `max_frames` gets a batch of its own. Each iteration is an epoch: the stream's `set_epoch` is called
    with it (a shuffled stream reshuffles). Lengths come from [`clip_frames`] (`num_frames` if the rows have it).

    Media are handed to the collator as paths (files) or torchcodec decoders (embedded bytes). With a `processor`
    and `skip_bad_files=True` each clip is read here ([`read_clip`]): one that fails is left out of its batch, a
    warning names it, and the batch's first row lists it under `SKIPPED_CLIPS` (for the trainer to count); without
    `skip_bad_files`, a bad clip raises in the collator, naming its file.

    `state_dict()` says where the iteration is (the stream's state at the current buffer's start and the batches of
    the buffer already yielded; exact when iterated in the process that asks, i.e. DataLoader `num_workers=0`);
    `load_state_dict(state)` makes the next iteration continue there: the buffer is read again and its remaining
    batches follow (rows in the stream's shuffle buffer at the time are lost, as `datasets` documents).

    Args:
        dataset: the stream (e.g. from [`load_avsr_dataset`] with `streaming=True`, then [`shard_stream`]).
        max_frames: cap on a batch's summed frames; or
        batch_size: rows a batch (when `max_frames` is None).
        buffer_size: rows packed together.
        index_column: when set, each row gets this key: its position in this process's stream in the epoch.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        max_frames: int | None = None,
        batch_size: int | None = None,
        buffer_size: int = 256,
        seed: int = 0,
        shuffle: bool = True,
        frame_rate: float = VIDEO_FPS,
        processor=None,
        modalities: Sequence[str] = ("video", "audio"),
        skip_bad_files: bool = False,
        index_column: str | None = None,
    ):
        if (max_frames is None) == (batch_size is None):
            raise ValueError("give exactly one of max_frames and batch_size")
        if (max_frames or batch_size) < 1 or buffer_size < 1:
            raise ValueError(
                f"max_frames, batch_size and buffer_size must be >= 1, got {max_frames}, {batch_size}, {buffer_size}"
            )
        if skip_bad_files and processor is None:
            raise ValueError("skip_bad_files needs the processor that reads the clips")
        self.dataset = dataset
        self.features = _features_of(dataset)
        self.max_frames, self.batch_size, self.buffer_size = max_frames, batch_size, buffer_size
        self.seed, self.shuffle, self.frame_rate = seed, shuffle, frame_rate
        self.processor, self.modalities, self.skip_bad_files = processor, tuple(modalities), skip_bad_files
        self.index_column = index_column
        self._state: dict | None = None  # where the current iteration is
        self._pending: dict | None = None  # a loaded state for the next iteration
        self._iterations = 0

    def state_dict(self) -> dict:
        if self._state is None:
            return {"epoch": 0, "buffer": 0, "batches_done": 0, "source": None}
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        self._pending = copy.deepcopy(state)

    def _pack(self, rows: list[dict], epoch: int, buffer: int) -> list[list[int]]:
        lengths = [row["__frames__"] for row in rows]
        batches, current, total = [], [], 0
        for index in sorted(range(len(rows)), key=lengths.__getitem__):
            full = (total + lengths[index] > self.max_frames) if self.max_frames else len(current) == self.batch_size
            if current and full:
                batches.append(current)
                current, total = [], 0
            current.append(index)
            total += lengths[index]
        if current:
            batches.append(current)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, buffer]).permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    def _materialize(self, row: dict) -> dict:
        """Media as the collator reads them: a path for a file, a torchcodec decoder for embedded bytes."""
        out = dict(row)
        for column in ("video", "audio"):
            value = out.get(column)
            if isinstance(value, dict) and "bytes" in value:
                out[column] = _decoder(value, self.features.get(column), column) if value["bytes"] else value["path"]
        return out

    def _read(self, rows: list[dict]) -> list[dict]:
        if not self.skip_bad_files:
            return rows
        kept, skipped = [], []
        for row in rows:
            try:
                kept.append(read_clip(row, self.processor, self.modalities))
            except ValueError as error:
                logger.warning("Skipping a clip: %s", error)
                skipped.append(str(error))
        if kept:
            kept[0][SKIPPED_CLIPS] = skipped
        return kept

    def _measured(self, row: dict, position: int) -> dict | None:
        try:
            row["__frames__"] = clip_frames(row, self.features, self.frame_rate)
        except ValueError as error:
            if not self.skip_bad_files:
                raise
            logger.warning("Skipping a clip: %s", error)
            return None
        if self.index_column:
            row[self.index_column] = position
        return row

    def __iter__(self) -> Iterator[list[dict]]:
        pending, self._pending = self._pending, None
        epoch = pending["epoch"] if pending else self._iterations
        self._iterations = epoch + 1
        source = self.dataset.decode(False)
        source.set_epoch(epoch)
        if pending and pending.get("source") is not None:
            source.load_state_dict(pending["source"])
        buffer, skip = (pending["buffer"], pending["batches_done"]) if pending else (0, 0)
        rows = iter(source)
        while True:
            start = copy.deepcopy(source.state_dict())
            first = buffer * self.buffer_size
            chunk = [self._measured(row, first + i) for i, row in enumerate(islice(rows, self.buffer_size))]
            if not chunk:
                break
            chunk = [row for row in chunk if row is not None]
            for done, batch in enumerate(self._pack(chunk, epoch, buffer)[skip:], start=skip + 1):
                self._state = {"epoch": epoch, "buffer": buffer, "batches_done": done, "source": start}
                out = self._read(
                    [self._materialize({k: v for k, v in chunk[i].items() if k != "__frames__"}) for i in batch]
                )
                if out:
                    yield out
            buffer, skip = buffer + 1, 0


def streaming_dataloader(batcher: MaxFramesStreamBatcher, collate_fn, args) -> torch.utils.data.DataLoader:
    """The DataLoader of a [`MaxFramesStreamBatcher`] with the `TrainingArguments`' loader settings: each item is a
    batch already, so `batch_size=None`; each process reads its own `shard_stream` part (no `accelerator.prepare`
    re-sharding). DataLoader workers split the stream's shards between them."""
    workers = args.dataloader_num_workers
    return torch.utils.data.DataLoader(
        batcher,
        batch_size=None,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers if workers else False,
        prefetch_factor=args.dataloader_prefetch_factor if workers else None,
    )


# ------------------------------------------------------------------------------------------------------------- export


def auto_avsr_to_dataset(
    root_dir: str | os.PathLike, label_files: Mapping[str, str | os.PathLike], tokenizer=None
) -> datasets.DatasetDict:
    """A corpus in auto_avsr's layout as a `DatasetDict` of [`load_auto_avsr_dataset`] splits (`id`, `video`,
    `audio`, `text`, `num_frames`; media as file paths, embedded when saved or pushed). `label_files` maps a split
    name to its label CSV (an empty one is left out); auto_avsr's `val` is named `validation`, as on the Hub.
    `tokenizer` decodes the CSV's token ids (auto_avsr's unigram5000 by default)."""
    splits = {}
    for split, label_file in label_files.items():
        if Path(label_file).is_file() and Path(label_file).stat().st_size == 0:
            logger.info(f"{label_file}: no clip; the {split} split is left out.")
            continue
        splits[HUB_SPLIT_NAMES.get(split, split)] = load_auto_avsr_dataset(root_dir, label_file, tokenizer=tokenizer)
    if not splits:
        raise DatasetError(f"{root_dir}: every label file is empty ({', '.join(map(str, label_files.values()))}).")
    return datasets.DatasetDict(splits)


def export_auto_avsr_dataset(
    root_dir: str | os.PathLike,
    label_files: Mapping[str, str | os.PathLike],
    save_to_disk: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    tokenizer=None,
    private: bool | None = None,
    token: str | None = None,
) -> datasets.DatasetDict:
    """Writes a corpus in auto_avsr's layout ([`auto_avsr_to_dataset`]) as a `datasets` dataset with its mp4 and wav
    bytes embedded in the arrow/parquet files: to the folder `save_to_disk` (read back with `load_from_disk` or
    [`load_avsr_dataset`]) and/or to the Hub repository `push_to_hub` (`USER/NAME`; needs a login or `token`).
    The shared back end of `prepare --save-to-disk/--push-to-hub` and `demo_corpus --save-to-disk/--push-to-hub`."""
    if not save_to_disk and not push_to_hub:
        raise ValueError("export_auto_avsr_dataset needs save_to_disk and/or push_to_hub")
    dataset = auto_avsr_to_dataset(root_dir, label_files, tokenizer=tokenizer)
    if save_to_disk:
        dataset.save_to_disk(os.fspath(save_to_disk))  # datasets embeds Video/Audio files when saving
        logger.info(f"Saved {dict(dataset.num_rows)} rows with their media to {save_to_disk}.")
    if push_to_hub:
        dataset.push_to_hub(push_to_hub, private=private, token=token)  # embed_external_files=True by default
        logger.info(f"Pushed {dict(dataset.num_rows)} rows with their media to the Hub repository {push_to_hub}.")
    return dataset
