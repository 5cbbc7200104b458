"""Checking media before training: every clip's video (its container header and first decoded frame) and audio (its
header and first samples; `media_io.probe_video` / `probe_audio`) are opened in a thread pool, with a progress bar, so that a truncated or corrupt file is
found before the first training step instead of when the DataLoader reaches it.

[`find_bad_media`] returns what fails as [`BadMedia`] `(index, path, reason)` records; [`check_dataset_media`] raises a
[`MediaError`] naming the first bad files and how many there are, or with `skip_bad_files` leaves them out with a
logged warning. Both take a `datasets.Dataset` (its `Video` and
`Audio` columns are read undecoded: paths or embedded bytes) or a list of row dicts whose media are paths.

What a check cannot see: a file cut short after its first frame whose header is intact (an mp4 written with its index
first); the training data path (`collation.ClipReader`) names or skips such a clip when it reads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import datasets
from datasets.utils.tqdm import tqdm

from .media_io import MediaError, probe_audio, probe_video  # the probes run on each file


logger = logging.getLogger(__name__)

__all__ = [
    "BadMedia",
    "check_dataset_media",
    "describe_bad_media",
    "find_bad_media",
    "without_decoding",
]

# the bad files a message or log line names; the rest are counted
LISTED_BAD_FILES = 5
# the thread pool's default size: opening a file is mostly waiting for the disk and FFmpeg, which release the GIL
DEFAULT_NUM_WORKERS = min(8, os.cpu_count() or 1)


class BadMedia(NamedTuple):
    """A media file that failed its check: the row it belongs to, its path and why."""

    index: int
    path: str
    reason: str


def _media_columns(dataset: datasets.Dataset) -> dict[str, str]:
    return {
        name: "video" if isinstance(feature, datasets.Video) else "audio"
        for name, feature in dataset.features.items()
        if isinstance(feature, (datasets.Video, datasets.Audio))
    }


def without_decoding(dataset: datasets.Dataset, columns: Sequence[str]) -> datasets.Dataset:
    """`dataset` with its `columns` that are decoding `Audio` / `Video` columns cast to `decode=False` (paths or
    embedded bytes; the sampling rate kept): the one place where the data side stops `datasets` from decoding media,
    for the media checks and for the collator, which reads the files itself."""
    for name in columns:
        feature = dataset.features.get(name)
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Audio(sampling_rate=feature.sampling_rate, decode=False))
        elif isinstance(feature, datasets.Video) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Video(decode=False))
    return dataset


def _row_checker(columns: dict[str, str]) -> Callable[[dict], None]:
    def check(row: dict) -> None:
        for name, kind in columns.items():
            if row.get(name) is not None:
                probe_video(row[name]) if kind == "video" else probe_audio(row[name])

    return check


def _path_of(row: dict, columns: dict[str, str], error: Exception) -> str:
    """The path of the row's media file that the error names (the first column's when none does)."""
    names = [_source_name(row.get(column)) for column in columns]
    return next((name for name in names if name and name in str(error)), names[0] if names else "")


def _source_name(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("path")
    return str(item) if isinstance(item, (str, os.PathLike)) else ""


def find_bad_media(
    dataset: datasets.Dataset | Sequence[dict],
    columns: Sequence[str] | dict[str, str] | None = None,
    num_workers: int | None = None,
    check: Callable[[dict], None] | None = None,
    desc: str = "Checking media",
) -> list[BadMedia]:
    """Checks every row's media in a pool of `num_workers` threads (default `DEFAULT_NUM_WORKERS`) with a progress
    bar (`datasets`' tqdm: `datasets.disable_progress_bars()` hides it) and returns the failures in row order.

    Args:
        dataset: a `datasets.Dataset` or a list of row dicts.
        columns: the media columns, as names (kind from the column's `datasets.Video` / `datasets.Audio` feature, or
            from the name: `video` / `audio`) or `{name: "video" | "audio"}`; default: the dataset's `Video` and
            `Audio` columns, or `video` / `audio` of row dicts.
        check: `check(row)` raising a `ValueError` (e.g. `MediaError`) for a bad row, instead of probing `columns`
            with [`probe_video`] / [`probe_audio`] (for checks beyond the media's header, such as a layout's format).
    """
    is_dataset = isinstance(dataset, datasets.Dataset)
    if columns is None:
        columns = _media_columns(dataset) if is_dataset else {}
        if not columns:
            names = dataset.column_names if is_dataset else (dataset[0] if len(dataset) else {})
            columns = {name: name for name in ("video", "audio") if name in names}
    elif not isinstance(columns, dict):
        features = _media_columns(dataset) if is_dataset else {}
        columns = {name: features.get(name, "video" if "video" in name else "audio") for name in columns}
    if is_dataset:
        dataset = without_decoding(dataset, list(columns)).select_columns(list(columns))
    check = check or _row_checker(columns)

    def run(index: int) -> BadMedia | None:
        row = dataset[index]
        try:
            check(row)
        except ValueError as error:
            return BadMedia(index, _path_of(row, columns, error), str(error))
        return None

    workers = max(1, num_workers or DEFAULT_NUM_WORKERS)
    total = len(dataset)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(run, range(total)), total=total, desc=desc, unit="clip", disable=total == 0))
    return [bad for bad in results if bad is not None]


def describe_bad_media(bad: Sequence[BadMedia], total: int) -> str:
    """`N of TOTAL clips have unusable media: REASON; REASON; ... (and M more)` for logs and errors."""
    listed = "; ".join(item.reason for item in bad[:LISTED_BAD_FILES])
    more = f" (and {len(bad) - LISTED_BAD_FILES} more)" if len(bad) > LISTED_BAD_FILES else ""
    return f"{len(bad)} of {total} clips have unusable media: {listed}{more}"


def check_dataset_media(
    dataset: datasets.Dataset | Sequence[dict],
    columns: Sequence[str] | dict[str, str] | None = None,
    skip_bad_files: bool = False,
    num_workers: int | None = None,
    source: str = "dataset",
) -> datasets.Dataset | list[dict]:
    """[`find_bad_media`] on a whole dataset before training. Without `skip_bad_files` a failure raises a `MediaError`
    naming the first bad files and counting them; with it the bad rows are left out and a warning gives their count
    and the first few files and reasons. Returns the dataset (without the bad rows). `source` (e.g. the option or
    file the dataset came from) starts the message."""
    bad = find_bad_media(dataset, columns, num_workers)
    if not bad:
        return dataset
    message = f"{source}: {describe_bad_media(bad, len(dataset))}"
    if not skip_bad_files:
        raise MediaError(f"{message}. Fix or remove these files, or skip them (`skip_bad_files`).")
    logger.warning("%s; left out.", message)
    failed = {item.index for item in bad}
    keep = [index for index in range(len(dataset)) if index not in failed]
    return dataset.select(keep) if isinstance(dataset, datasets.Dataset) else [dataset[index] for index in keep]
