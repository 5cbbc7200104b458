"""Label files of auto_avsr's preprocessed layout as training and evaluation splits: where a label CSV is found, loading
it as a dataset (`lrs3.load_auto_avsr_dataset`), the media columns a model reads, and the babble noise of a split.

A label file given as `--train-file train.csv` is looked up in ROOT/labels/ (auto_avsr's place), then relative to ROOT,
then as a path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np

from .augmentation import CLEAN_SNR, make_babble
from .feature_extraction_mmavsr import to_waveform
from .lrs3 import load_auto_avsr_dataset
from .media_constants import SAMPLING_RATE


logger = logging.getLogger(__name__)

# the column holding each utterance's position in its split (seeds its augmentations, orders decoded utterances)
INDEX_COLUMN = "utterance_index"
MEDIA_COLUMNS = ("video", "audio")


def resolve_label_file(root_dir: str, label_file: str, flag: str = "label file") -> Path:
    """ROOT/labels/LABEL_FILE, ROOT/LABEL_FILE or LABEL_FILE itself, the first that exists; `flag` names the option
    in the error."""
    candidates = [Path(root_dir) / "labels" / label_file, Path(root_dir) / label_file, Path(label_file)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{flag} {label_file}: not found (looked for {', '.join(str(c) for c in candidates)}).")


def load_label_split(
    root_dir: str | None,
    label_file: str,
    flag: str = "label file",
    limit: int | None = None,
    skip_bad_files: bool = False,
    check_media: bool = True,
) -> datasets.Dataset:
    """The clips of one label file (the first `limit` of them), numbered in `INDEX_COLUMN`. `flag` (e.g.
    `--train-file`) names the option in errors; `skip_bad_files` / `check_media` as in `load_auto_avsr_dataset`."""
    if not root_dir:
        raise ValueError(f"{flag} needs --root-dir (the root of the preprocessed dataset).")
    if not Path(root_dir).is_dir():
        raise FileNotFoundError(f"--root-dir {root_dir}: no such directory.")
    path = resolve_label_file(root_dir, label_file, flag)
    dataset = load_auto_avsr_dataset(root_dir, path, skip_bad_files=skip_bad_files, check_media=check_media)
    if len(dataset) == 0:
        raise ValueError(f"{flag} {path}: no usable clips.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def load_label_splits(data_args, training_args) -> dict[str, datasets.Dataset]:
    """The training script's label files (`data_args`: its `DataTrainingArguments`) for the stages `training_args`
    does: train (--train-file), eval (--val-file, else --test-file) and test (--test-file); none with --dataset_name.
    Every clip's media is opened here, before the first step: a bad one stops the run naming it, or is skipped and
    counted; an evaluation set is opened whole when skipping even with --skip_media_check (a clip dropped mid-way
    would change the WER's utterances)."""
    splits = {}
    for stage, wanted, files in (
        ("train", training_args.do_train, [("--train-file", data_args.train_file)]),
        ("eval", training_args.do_eval, [("--val-file", data_args.val_file), ("--test-file", data_args.test_file)]),
        ("test", training_args.do_predict, [("--test-file", data_args.test_file)]),
    ):
        given = [(flag, name) for flag, name in files if name]
        if not wanted or data_args.dataset_name:
            continue
        if not given:
            raise ValueError(f"--do_{'predict' if stage == 'test' else stage} needs {files[0][0]}.")
        flag, label_file = given[0]
        splits[stage] = load_label_split(
            data_args.root_dir,
            label_file,
            flag,
            limit=data_args.max_train_samples if stage == "train" else data_args.max_eval_samples,
            skip_bad_files=data_args.skip_bad_files,
            check_media=not data_args.skip_media_check or (data_args.skip_bad_files and stage != "train"),
        )
    return splits


def read_files_directly(dataset: datasets.Dataset, modalities: tuple[str, ...]) -> datasets.Dataset:
    """Drop the media column the model does not use and leave the others undecoded: the collator reads each file
    with soundfile / PyAV, several times faster than opening a torchcodec decoder per row."""
    dataset = dataset.remove_columns([c for c in MEDIA_COLUMNS if c not in modalities and c in dataset.column_names])
    for column in modalities:
        feature = dataset.features[column]
        undecoded = (
            datasets.Audio(sampling_rate=feature.sampling_rate, decode=False)
            if isinstance(feature, datasets.Audio)
            else datasets.Video(decode=False)
        )
        dataset = dataset.cast_column(column, undecoded)
    return dataset


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


def noise_for_run(data_args, training_args, splits: dict, modalities) -> str | np.ndarray | None:
    """The noise the training script adds to the audio (`data_args`: its `DataTrainingArguments`): None when nothing
    is noisy (no audio, all --decode-snr-target clean and no --train-snr training), else --noise-file or babble mixed
    from the first map-style split of `splits`."""
    noisy_decoding = any(snr < CLEAN_SNR for snr in data_args.decode_snr_target)
    if "audio" not in modalities or not (noisy_decoding or (data_args.train_snr and training_args.do_train)):
        return None
    if data_args.noise_file and not Path(data_args.noise_file).is_file():
        raise FileNotFoundError(f"--noise-file {data_args.noise_file}: no such file.")
    mapped = [dataset for dataset in splits.values() if isinstance(dataset, datasets.Dataset)]
    if not data_args.noise_file and not mapped:
        raise ValueError("--train-snr with --streaming and no evaluation split: babble noise is mixed from a "
                         "map-style split; give --noise-file.")
    return data_args.noise_file or babble_from_split(mapped[0], training_args.seed, data_args.skip_bad_files)


__all__ = [
    "INDEX_COLUMN",
    "babble_from_split",
    "load_label_split",
    "load_label_splits",
    "noise_for_run",
    "read_files_directly",
    "resolve_label_file",
]
