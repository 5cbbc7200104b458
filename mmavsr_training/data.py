"""The training script's data step: its data flags (`DataTrainingArguments`, and the stages and seed of its
`AVSRTrainingArguments`) turned into calls of the data library `mmavsr_processing`, whose functions take typed values
and never speak in flags. Every message that names a flag is written here.

- [`check_dataset_flags`]: label files or `--dataset_name`, streaming, caching: the combinations refused;
- [`load_label_splits`] / [`load_dataset_splits`]: the splits of the run's stages, their media checked first;
- [`refuse_unused_audio_flags`], [`noise_for_run`]: the audio noise flags and the noise a run adds;
- [`training_clips`]: the training set, streamed or map-style.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from mmavsr_processing.augmentation import CLEAN_SNR
from mmavsr_processing.collation import ClipReader
from mmavsr_processing.hf_datasets import MaxFramesStreamBatcher, add_num_frames, load_avsr_splits, shard_stream
from mmavsr_processing.label_files import babble_from_split, load_label_split
from mmavsr_processing.media_check import check_dataset_media


logger = logging.getLogger(__name__)


def check_dataset_flags(data_args) -> None:
    """The training script's data flags (`data_args`, its `DataTrainingArguments`): --dataset_name replaces the label
    files; --streaming streams it (and only it), and is refused with --cache_clips."""
    label_flags = [
        flag
        for flag, value in (
            ("--root-dir", data_args.root_dir),
            ("--train-file", data_args.train_file),
            ("--val-file", data_args.val_file),
            ("--test-file", data_args.test_file),
        )
        if value
    ]
    if data_args.dataset_name and label_flags:
        raise ValueError(
            f"--dataset_name {data_args.dataset_name} and {', '.join(label_flags)}: give a dataset or "
            "auto_avsr's label files, not both."
        )
    if data_args.streaming and not data_args.dataset_name:
        raise ValueError(
            "--streaming streams --dataset_name's training split; label files (--train-file) are read "
            "whole. Give --dataset_name (e.g. a folder written by prepare --save-to-disk)."
        )
    if data_args.streaming and data_args.cache_clips:
        raise ValueError(
            "--cache_clips keeps a map-style training set's clips in memory; a stream (--streaming) "
            "is read once per pass: drop one of them."
        )
    if not data_args.boundary_jitter_s >= 0:
        raise ValueError(f"--boundary_jitter_s must be a number of seconds >= 0, got {data_args.boundary_jitter_s}.")


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
        if not data_args.root_dir:
            raise ValueError(f"{flag} needs --root-dir (the root of the preprocessed dataset).")
        if not Path(data_args.root_dir).is_dir():
            raise FileNotFoundError(f"--root-dir {data_args.root_dir}: no such directory.")
        splits[stage] = load_label_split(
            data_args.root_dir,
            label_file,
            flag,
            limit=data_args.max_train_samples if stage == "train" else data_args.max_eval_samples,
            skip_bad_files=data_args.skip_bad_files,
            check_media=not data_args.skip_media_check or (data_args.skip_bad_files and stage != "train"),
        )
    return splits


def load_dataset_splits(
    data_args, training_args, modalities: Sequence[str], stages: Sequence[str] | None = None, index_column: str = ""
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """The training script's --dataset_name splits (`data_args`: its `DataTrainingArguments`) for the run's stages
    (train, eval, test; by default those `training_args` does), with the columns `modalities` need; the training
    split streamed with --streaming, evaluation splits always map-style (their length is the WER's). Every clip of a
    map-style split is opened first ([`check_dataset_media`]) unless --skip_media_check (evaluation splits are
    opened all the same with --skip_bad_files); `index_column` numbers the rows."""
    names = {"train": data_args.train_split_name, "eval": data_args.eval_split_name, "test": data_args.test_split_name}
    if stages is None:
        chosen = {"train": training_args.do_train, "eval": training_args.do_eval, "test": training_args.do_predict}
        stages = [stage for stage, wanted in chosen.items() if wanted]
    splits = load_avsr_splits(
        data_args.dataset_name,
        data_args.dataset_config_name,
        {stage: names[stage] for stage in stages},
        modalities=modalities,
        video_column=data_args.video_column_name,
        audio_column=data_args.audio_column_name,
        text_column=data_args.text_column_name,
        streaming=["train"] if data_args.streaming else [],
        limits={
            "train": data_args.max_train_samples,
            "eval": data_args.max_eval_samples,
            "test": data_args.max_eval_samples,
        },
        index_column=index_column or None,
    )
    # every clip's media is opened before the first step, as for label files (a streamed split as it is read)
    for stage, split in splits.items():
        if isinstance(split, datasets.Dataset) and (
            not data_args.skip_media_check or (data_args.skip_bad_files and stage != "train")
        ):
            splits[stage] = check_dataset_media(
                split,
                {kind: kind for kind in modalities},
                skip_bad_files=data_args.skip_bad_files,
                source=f"--dataset_name {data_args.dataset_name} ({names[stage]} split)",
            )
    if data_args.max_frames and isinstance(splits.get("train"), datasets.Dataset):
        splits["train"] = add_num_frames(splits["train"])  # lengths for the --max-frames sampler
    return splits


def refuse_unused_audio_flags(data_args, modality: str) -> None:
    """Noise is added to the audio: on a model without audio, the training script's --train-snr and --noise-file
    (`data_args`: its `DataTrainingArguments`) are refused, and noisy --decode-snr-target conditions warn (each decodes
    the same video, so the table repeats the clean WER)."""
    for flag, value in (("--train-snr", data_args.train_snr), ("--noise-file", data_args.noise_file)):
        if value:
            shown = " ".join(f"{v:g}" for v in value) if isinstance(value, list) else value
            raise ValueError(
                f"{flag} {shown}: noise is added to the audio, and this {modality} model reads none; drop the flag."
            )
    noisy = [f"{snr:g}" for snr in data_args.decode_snr_target if snr < CLEAN_SNR]
    if noisy:
        logger.warning(
            f"--decode-snr-target {' '.join(noisy)}: this {modality} model reads no audio, so the noise "
            "changes nothing; every condition decodes the same clean video."
        )


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
        raise ValueError(
            "--train-snr with --streaming and no evaluation split: babble noise is mixed from a "
            "map-style split; give --noise-file."
        )
    return data_args.noise_file or babble_from_split(mapped[0], training_args.seed, data_args.skip_bad_files)


def training_clips(split, processor, modalities, data_args, training_args, index_column: str | None = None):
    """The training script's training set (`data_args`: its `DataTrainingArguments`): a streamed split (--streaming)
    as a [`MaxFramesStreamBatcher`] over this process's shards (batches of --max-frames frames, or of
    --per_device_train_batch_size clips); a map-style split as a `collation.ClipReader` (--cache_clips). Media are
    read in the DataLoader: an unusable clip raises naming its file, or with --skip-bad-files is skipped and counted,
    the next clip taking its place."""
    if data_args.streaming:
        return MaxFramesStreamBatcher(
            shard_stream(split, training_args.process_index, training_args.world_size, seed=training_args.seed),
            max_frames=data_args.max_frames,
            batch_size=None if data_args.max_frames else training_args.per_device_train_batch_size,
            seed=training_args.seed,
            processor=processor,
            modalities=modalities,
            skip_bad_files=data_args.skip_bad_files,
            index_column=index_column,
        )
    return ClipReader(
        split, processor, modalities, skip_bad_files=data_args.skip_bad_files, cache=data_args.cache_clips
    )


__all__ = [
    "check_dataset_flags",
    "load_dataset_splits",
    "load_label_splits",
    "noise_for_run",
    "refuse_unused_audio_flags",
    "training_clips",
]
