"""Label files of auto_avsr's preprocessed layout as training and evaluation splits: where a label CSV is found, loading
it as a dataset (`lrs3.load_auto_avsr_dataset`), the media columns a model reads, and the babble noise of a split.

A label file given as `train.csv` is looked up in ROOT/labels/ (auto_avsr's place), then relative to ROOT, then as a
path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np

from .augmentation import make_babble
from .feature_extraction_mmavsr import to_waveform
from .lrs3 import load_auto_avsr_dataset
from .media_check import without_decoding
from .media_constants import SAMPLING_RATE


logger = logging.getLogger(__name__)

# the column holding each utterance's position in its split (seeds its augmentations, orders decoded utterances)
INDEX_COLUMN = "utterance_index"
MEDIA_COLUMNS = ("video", "audio")


def resolve_label_file(root_dir: str, label_file: str, name: str = "label file") -> Path:
    """ROOT/labels/LABEL_FILE, ROOT/LABEL_FILE or LABEL_FILE itself, the first that exists; `name` starts the error."""
    candidates = [Path(root_dir) / "labels" / label_file, Path(root_dir) / label_file, Path(label_file)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} {label_file}: not found (looked for {', '.join(str(c) for c in candidates)}).")


def load_label_split(
    root_dir: str | None,
    label_file: str,
    name: str = "label file",
    limit: int | None = None,
    skip_bad_files: bool = False,
    check_media: bool = True,
) -> datasets.Dataset:
    """The clips of one label file of the dataset under `root_dir` (the first `limit` of them), numbered in
    `INDEX_COLUMN`. `name` starts the errors about the file (the training script passes its option's name);
    `skip_bad_files` / `check_media` as in `load_auto_avsr_dataset`."""
    if not root_dir:
        raise ValueError(f"{name} {label_file}: no dataset root given (the folder of labels/ and the clips).")
    if not Path(root_dir).is_dir():
        raise FileNotFoundError(f"dataset root {root_dir}: no such directory.")
    path = resolve_label_file(root_dir, label_file, name)
    dataset = load_auto_avsr_dataset(root_dir, path, skip_bad_files=skip_bad_files, check_media=check_media)
    if len(dataset) == 0:
        raise ValueError(f"{name} {path}: no usable clips.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def read_files_directly(dataset: datasets.Dataset, modalities: tuple[str, ...]) -> datasets.Dataset:
    """Drop the media column the model does not use and leave the others undecoded: the collator reads each file
    with soundfile / PyAV, several times faster than opening a torchcodec decoder per row."""
    dataset = dataset.remove_columns([c for c in MEDIA_COLUMNS if c not in modalities and c in dataset.column_names])
    return without_decoding(dataset, modalities)


def babble_from_split(
    dataset: datasets.Dataset, seed: int, skip_bad_files: bool = False, sampling_rate: int = SAMPLING_RATE
) -> np.ndarray:
    """auto_avsr's babble_noise.wav for a split: 30 s of 4 speakers mixed from (up to 32 of) its utterances; with
    `skip_bad_files` a clip that cannot be read is left out with a warning."""
    picks = np.random.default_rng(seed).permutation(len(dataset))[:32]
    utterances = []
    for index in picks:
        try:
            utterances.append(to_waveform(dataset[int(index)]["audio"], None, sampling_rate, True, True))
        except ValueError as error:
            if not skip_bad_files:
                raise
            logger.warning(f"Babble noise: skipping a clip: {error}")
    if not utterances:
        raise ValueError("Babble noise: none of the clips picked could be read.")
    return make_babble(utterances, n_speakers=4, length=sampling_rate * 30, seed=seed)


__all__ = [
    "INDEX_COLUMN",
    "babble_from_split",
    "load_label_split",
    "read_files_directly",
    "resolve_label_file",
]
