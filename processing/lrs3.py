"""auto_avsr's preprocessed layout (LRS3, VoxCeleb2, the demo corpus) as a `datasets.Dataset`.

Layout: a headerless label CSV whose rows are `dataset,rel_path,num_frames,token ids`; the clip is
`root_dir/dataset/rel_path` (an .mp4 of the mouth ROI at 25 fps) and its audio the .wav beside it with the same stem.
Every row is checked when the dataset is built (CSV syntax, files present and not empty), so that training never
meets a missing file mid-epoch: a bad row raises a `DatasetError` naming the file, line and problem, or, with
`skip_bad_files=True`, is left out and counted (`dataset.info.description` and the log give the counts and reasons).
"""

import csv
import logging
from collections import Counter
from pathlib import Path

import datasets

from .tokenization_mmavsr import MMAVSRTokenizer


logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A label file or a clip of the dataset is unusable; the message names it."""


def _parse_row(row: list[str], label_file: Path, line: int) -> tuple[str, str, int, list[int]]:
    where = f"{label_file}, line {line}"
    if len(row) != 4:
        raise DatasetError(f"{where}: expected 4 columns `dataset,rel_path,num_frames,token ids`, got {len(row)}.")
    dataset_name, rel_path, num_frames, token_ids = (value.strip() for value in row)
    try:
        frames = int(num_frames)
        ids = [int(token) for token in token_ids.split()]
    except ValueError as error:
        raise DatasetError(f"{where}: num_frames and token ids must be integers ({error}).") from None
    if frames <= 0:
        raise DatasetError(f"{where}: num_frames must be positive, got {frames}.")
    if not ids:
        raise DatasetError(f"{where}: empty transcript (no token ids).")
    return dataset_name, rel_path, frames, ids


def _check_file(path: Path, what: str, where: str):
    if not path.is_file():
        raise DatasetError(f"{where}: {what} {path} does not exist.")
    if path.stat().st_size == 0:
        raise DatasetError(f"{where}: {what} {path} is empty.")


def load_auto_avsr_dataset(
    root_dir: str | Path,
    label_file: str | Path,
    tokenizer: MMAVSRTokenizer | None = None,
    skip_bad_files: bool = False,
    sampling_rate: int = 16000,
) -> datasets.Dataset:
    """Rows `{"id", "video", "audio", "text", "num_frames"}`: `video` and `audio` are `datasets.Video()` and
    `datasets.Audio(sampling_rate)` columns (decoded lazily with torchcodec), `text` the transcript decoded from the
    CSV's token ids with `tokenizer` (auto_avsr's unigram5000 by default)."""
    root_dir, label_file = Path(root_dir), Path(label_file)
    if not root_dir.is_dir():
        raise DatasetError(f"root_dir {root_dir} is not a directory.")
    _check_file(label_file, "label file", "load_auto_avsr_dataset")
    tokenizer = tokenizer or MMAVSRTokenizer.from_auto_avsr()

    rows, skipped = [], Counter()
    with label_file.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{label_file}, line {line}"
            try:
                problem = "bad row"
                dataset_name, rel_path, frames, ids = _parse_row(row, label_file, line)
                problem = "missing or empty file"
                video = root_dir / dataset_name / rel_path
                _check_file(video, "video", where)
                _check_file(video.with_suffix(".wav"), "audio", where)
            except DatasetError as error:
                if not skip_bad_files:
                    raise
                skipped[problem] += 1
                if sum(skipped.values()) <= 5:
                    logger.warning("skipping: %s", error)
                continue
            rows.append(
                {
                    "id": str(Path(dataset_name) / rel_path),
                    "video": str(video),
                    "audio": str(video.with_suffix(".wav")),
                    "text": tokenizer.decode(ids, skip_special_tokens=True),
                    "num_frames": frames,
                }
            )
    if skipped:
        logger.warning("%s: skipped %d of %d rows (%s)", label_file, sum(skipped.values()),
                       sum(skipped.values()) + len(rows), dict(skipped))

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "video": datasets.Video(),
            "audio": datasets.Audio(sampling_rate=sampling_rate),
            "text": datasets.Value("string"),
            "num_frames": datasets.Value("int32"),
        }
    )
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.info.description = f"skipped rows: {dict(skipped)}" if skipped else ""
    return dataset
