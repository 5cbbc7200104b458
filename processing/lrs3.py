"""LRS3 as a `datasets.Dataset`: auto_avsr's preprocessed layout, or the raw layout LRS3 is distributed in.

auto_avsr's layout ([`load_auto_avsr_dataset`], also VoxCeleb2 and the demo corpus): a headerless label CSV whose rows are `dataset,rel_path,num_frames,token ids`; the clip is
`root_dir/dataset/rel_path` (an .mp4 of the mouth ROI at 25 fps) and its audio the .wav beside it with the same stem.
Every row is checked when the dataset is built (CSV syntax, files present and not empty), so that training never
meets a missing file mid-epoch: a bad row raises a `DatasetError` naming the file, line and problem, or, with
`skip_bad_files=True`, is left out and counted (`dataset.info.description` and the log give the counts and reasons).

Raw layout ([`load_lrs3_dataset`]): `pretrain/`, `trainval/`, `test/` folders of speaker folders, each clip an .mp4
(face video with its audio track) and a .txt beside it whose first line is `Text:  THE WORDS`, then `Conf:  N` and,
after a `WORD START END ASDSCORE` header, one line per word with its start and end in seconds. Checked the same way.

Both loaders also open every media file (`check_media=True`, the default): the container header and first frame of
each video, the header and first samples of each wav, in a thread pool of `num_workers` with a progress bar
(`media_check.find_bad_media`), so that truncated or corrupt files are found before training. In the auto_avsr
layout it also checks the format the layout promises: a 25 fps video with about `num_frames` frames and a mono wav at
`sampling_rate` whose duration is the video's (within `AV_DURATION_TOLERANCE` seconds); a clip that breaks it raises
or, when skipping, is counted under "media format". `check_media=False` checks only that files exist and are not empty
(faster on a large corpus; a corrupt file is then found when it is read). Files that pass these checks can still fail
to decode further in (a truncated stream): the training data path (`collation.ClipReader`) names or skips those.
"""

import csv
import logging
import re
from collections import Counter
from pathlib import Path

import datasets

from .media_check import describe_bad_media, find_bad_media
from .media_constants import SAMPLING_RATE, VIDEO_FPS
from .media_io import MediaError, probe_audio, probe_video, same_frame_rate
from .processing_mmavsr import AV_DURATION_TOLERANCE
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
    if not (dataset_name + rel_path).isprintable():
        raise DatasetError(
            f"{where}: the dataset or rel_path holds control characters: {dataset_name!r}, {rel_path!r}."
        )
    if not ids:
        raise DatasetError(f"{where}: empty transcript (no token ids).")
    return dataset_name, rel_path, frames, ids


def _check_file(path: Path, what: str, where: str):
    if not path.is_file():
        raise DatasetError(f"{where}: {what} {path} does not exist.")
    if path.stat().st_size == 0:
        raise DatasetError(f"{where}: {what} {path} is empty.")


def _check_media(path: Path, where: str, need_audio: bool = False) -> dict:
    """Opens a media file and reads its header (an mp4 also decodes its first frame, a wav its first samples); raises
    a `DatasetError` naming the file when it cannot. Returns what the header says: `rate`, `channels`, `samples` of
    a wav; `fps`, `frames` (0 when the header does not say) of a video."""
    try:
        return probe_audio(path) if path.suffix.lower() == ".wav" else probe_video(path, need_audio=need_audio)
    except MediaError as error:
        raise DatasetError(f"{where}: {error}.") from None


def _check_layout_format(
    video: Path, audio: Path, video_info: dict, audio_info: dict, num_frames: int, sampling_rate: int, where: str
):
    """The auto_avsr layout's promises: 25 fps video of about `num_frames` frames, mono wav at `sampling_rate`, and
    audio as long as the video; raises a `DatasetError` naming the file and the problem."""
    fps, frames = video_info["fps"], video_info["frames"]
    if fps and not same_frame_rate(fps, VIDEO_FPS):
        raise DatasetError(f"{where}: video {video} is {fps:g} fps, expected {VIDEO_FPS:g} fps.")
    if frames and abs(frames - num_frames) > AV_DURATION_TOLERANCE * VIDEO_FPS:
        raise DatasetError(f"{where}: video {video} has {frames} frames, but the label file says {num_frames}.")
    if audio_info["channels"] != 1:
        raise DatasetError(f"{where}: audio {audio} has {audio_info['channels']} channels, expected mono.")
    if audio_info["rate"] != sampling_rate:
        raise DatasetError(
            f"{where}: audio {audio} is sampled at {audio_info['rate']} Hz, expected {sampling_rate} Hz."
        )
    video_seconds = (frames or num_frames) / VIDEO_FPS
    audio_seconds = audio_info["samples"] / audio_info["rate"]
    if abs(video_seconds - audio_seconds) > AV_DURATION_TOLERANCE:
        raise DatasetError(
            f"{where}: audio {audio} lasts {audio_seconds:.2f} s and video {video} {video_seconds:.2f} s; they "
            f"differ by more than {AV_DURATION_TOLERANCE:g} s."
        )


def _csv_rows(label_file: Path):
    """`(line number, row or DatasetError)` for each line of a headerless CSV: a line that is not UTF-8 or not
    valid CSV gives a `DatasetError` naming the file and line, so that it can be skipped like any bad row."""
    with label_file.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            where = f"{label_file}, line {line}"
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # a byte-order mark is no data
                yield line, next(csv.reader([text], strict=True), [])
            except UnicodeDecodeError as error:
                yield line, DatasetError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start}).")
            except csv.Error as error:
                yield line, DatasetError(f"{where}: not a CSV row ({error}).")


def _check_token_ids(ids: list[int], tokenizer, where: str):
    """Token ids of a transcript must be ordinary ids of the tokenizer (not padding/blank, bos or eos)."""
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id} - {None}
    bad = [i for i in ids if not 0 <= i < len(tokenizer) or i in special]
    if bad:
        raise DatasetError(
            f"{where}: token ids {bad[:5]} are not transcript ids of the tokenizer (0 < id < {len(tokenizer) - 1})."
        )


def _clip_features(sampling_rate: int, **extra) -> datasets.Features:
    """The columns of every loader's rows (`id`, `video`, `audio` at `sampling_rate`, `text`) and its own `extra`."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "video": datasets.Video(),
            "audio": datasets.Audio(sampling_rate=sampling_rate),
            "text": datasets.Value("string"),
            **extra,
        }
    )


def _finish(rows: list[dict], features: datasets.Features, skipped: Counter, source: Path) -> datasets.Dataset:
    if skipped:
        logger.warning(
            "%s: skipped %d of %d rows (%s)",
            source,
            sum(skipped.values()),
            sum(skipped.values()) + len(rows),
            dict(skipped),
        )
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.info.description = f"skipped rows: {dict(skipped)}" if skipped else ""
    return dataset


def _skip(skipped: Counter, problem: str, error: DatasetError):
    skipped[problem] += 1
    if sum(skipped.values()) <= 5:
        logger.warning("skipping: %s", error)


def _skip_or_raise(skip_bad_files: bool, skipped: Counter, problem: str, error: DatasetError) -> None:
    """A bad row: counted and logged (`_skip`) with `skip_bad_files`, else its error is raised."""
    if not skip_bad_files:
        raise error
    _skip(skipped, problem, error)


def _check_media_in_parallel(
    candidates: list[dict], check, skip_bad_files: bool, skipped: Counter, num_workers: int | None
) -> list[dict]:
    """Runs `check(candidate)` (raising a `DatasetError` whose `problem` attribute names its kind) on every candidate
    row in a thread pool; returns the rows that pass. A failure raises the first one in row order (naming how many
    more there are), or with `skip_bad_files` is left out and counted."""
    problems = {}

    def checked(candidate: dict) -> None:
        try:
            check(candidate)
        except DatasetError as error:
            problems[candidate["position"]] = getattr(error, "problem", "corrupt file")
            raise

    columns = {"video": "video", "audio": "audio"}
    bad = find_bad_media(candidates, columns=columns, num_workers=num_workers, check=checked)
    if bad and not skip_bad_files:
        raise DatasetError(bad[0].reason if len(bad) == 1 else describe_bad_media(bad, len(candidates)))
    for item in bad:
        _skip(skipped, problems.get(item.index, "corrupt file"), DatasetError(item.reason))
    failed = {item.index for item in bad}
    return [candidate for position, candidate in enumerate(candidates) if position not in failed]


def load_auto_avsr_dataset(
    root_dir: str | Path,
    label_file: str | Path,
    tokenizer: MMAVSRTokenizer | None = None,
    skip_bad_files: bool = False,
    sampling_rate: int = SAMPLING_RATE,
    check_media: bool = True,
    num_workers: int | None = None,
) -> datasets.Dataset:
    """Rows `{"id", "video", "audio", "text", "num_frames"}`: `video` and `audio` are `datasets.Video()` and
    `datasets.Audio(sampling_rate)` columns (decoded lazily with torchcodec), `text` the transcript decoded from the
    CSV's token ids with `tokenizer` (auto_avsr's unigram5000 by default). `check_media=True` (the default) also
    opens every mp4 and wav, in `num_workers` threads, and checks their format (see the module's docstring);
    `check_media=False` checks only that they exist and are not empty.

    Bad rows (not UTF-8, not CSV, not 4 columns, non-integer or non-positive `num_frames`, no token ids, ids that
    are not transcript ids or decode to nothing) and missing, empty and (with `check_media`) corrupt or mismatched
    media raise a `DatasetError` naming the label file, the line and the problem; with `skip_bad_files=True` they are
    left out and counted by problem in `dataset.info.description` and the log (a warning with the counts and the
    first few files and reasons)."""
    root_dir, label_file = Path(root_dir), Path(label_file)
    if not root_dir.is_dir():
        raise DatasetError(f"root_dir {root_dir} is not a directory.")
    _check_file(label_file, "label file", "load_auto_avsr_dataset")
    tokenizer = tokenizer or MMAVSRTokenizer.from_auto_avsr()

    rows, skipped = [], Counter()
    for line, row in _csv_rows(label_file):
        if isinstance(row, list) and not "".join(row).strip():
            continue
        where = f"{label_file}, line {line}"
        try:
            problem = "bad row"
            if isinstance(row, DatasetError):
                raise row
            dataset_name, rel_path, frames, ids = _parse_row(row, label_file, line)
            _check_token_ids(ids, tokenizer, where)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if not text.strip():
                raise DatasetError(f"{where}: the token ids {ids[:5]} decode to an empty transcript.")
            problem = "missing or empty file"
            video = root_dir / dataset_name / rel_path
            audio = video.with_suffix(".wav")
            _check_file(video, "video", where)
            _check_file(audio, "audio", where)
        except DatasetError as error:
            _skip_or_raise(skip_bad_files, skipped, problem, error)
            continue
        rows.append(
            {
                "id": str(Path(dataset_name) / rel_path),
                "video": str(video),
                "audio": str(audio),
                "text": text,
                "num_frames": frames,
                "where": where,
            }
        )

    def check_layout_media(row: dict) -> None:
        video, audio, where = Path(row["video"]), Path(row["audio"]), row["where"]
        try:
            problem = "corrupt file"
            video_info, audio_info = _check_media(video, where), _check_media(audio, where)
            problem = "media format"
            _check_layout_format(video, audio, video_info, audio_info, row["num_frames"], sampling_rate, where)
        except DatasetError as error:
            error.problem = problem
            raise

    if check_media:
        for position, row in enumerate(rows):
            row["position"] = position
        rows = _check_media_in_parallel(rows, check_layout_media, skip_bad_files, skipped, num_workers)
    rows = [{key: row[key] for key in ("id", "video", "audio", "text", "num_frames")} for row in rows]
    return _finish(rows, _clip_features(sampling_rate, num_frames=datasets.Value("int32")), skipped, label_file)


_TEXT_LINE = re.compile(r"^Text:\s*(.*)$")
_WORD_HEADER = "WORD START END"


def parse_lrs3_transcript(path: str | Path) -> tuple[str, list[dict]]:
    """Reads an LRS3 `.txt`: returns the text of its `Text:` line (spaces collapsed) and its word timings
    `[{"word", "start", "end"}]` in seconds (empty when the file has no `WORD START END ...` table).

    Raises:
        DatasetError: no `Text:` first line, an empty text, or a timing line that is not `WORD START END [SCORE]`.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the transcript ({error}).") from None
    match = _TEXT_LINE.match(lines[0].strip()) if lines else None
    if match is None:
        raise DatasetError(f"{path}, line 1: expected `Text:  THE WORDS`, got {lines[0][:60] if lines else ''!r}.")
    text = " ".join(match.group(1).split())
    if not text:
        raise DatasetError(f"{path}, line 1: empty transcript.")
    words = []
    header = next((index for index, line in enumerate(lines) if line.strip().startswith(_WORD_HEADER)), None)
    for number, line in enumerate(lines[header + 1 :] if header is not None else [], start=(header or 0) + 2):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) not in (3, 4):
                raise ValueError(f"{len(fields)} fields")
            start, end = float(fields[1]), float(fields[2])
        except ValueError as error:
            raise DatasetError(
                f"{path}, line {number}: expected `WORD START END [SCORE]`, got {line.strip()!r} ({error})."
            ) from None
        words.append({"word": fields[0], "start": start, "end": end})
    return text, words


def load_lrs3_dataset(
    root_dir: str | Path,
    skip_bad_files: bool = False,
    sampling_rate: int = SAMPLING_RATE,
    check_media: bool = True,
    num_workers: int | None = None,
) -> datasets.Dataset:
    """LRS3 as distributed: every `.mp4` in the sub-folders of `root_dir` (searched recursively: `root_dir` is e.g.
    `trainval/`, or the folder above `pretrain/`, `trainval/` and `test/`) with the `.txt` of the same stem beside
    it; files directly in `root_dir` are ignored.

    Rows `{"id", "video", "audio", "text", "words"}`, sorted by `id` (the clip's path below `root_dir` without its
    suffix, e.g. `trainval/0af00UcTOSc/50001`): `video` is a `datasets.Video()` column, `audio` a
    `datasets.Audio(sampling_rate)` column reading the mp4's audio track (both decoded lazily with torchcodec),
    `text` the `Text:` line, `words` the word timings. A clip without its .txt, a .txt without its clip, an empty or
    (with `check_media=True`, the default: header, first frame and an audio stream, read in `num_workers` threads)
    corrupt mp4 and a malformed .txt raise a `DatasetError` naming the file, or with `skip_bad_files=True` are left
    out and counted.
    """
    root_dir = Path(root_dir)
    if not root_dir.is_dir():
        raise DatasetError(f"root_dir {root_dir} is not a directory.")
    stems = sorted(
        {
            path.parent / path.stem
            for pattern in ("*.mp4", "*.txt")
            for path in root_dir.rglob(pattern)
            if path.parent != root_dir  # clips live in speaker folders; a README or file list beside them is not one
        }
    )
    if not stems:
        raise DatasetError(f"{root_dir}: no .mp4 or .txt file in its sub-folders (expected LRS3's speaker folders).")

    rows, skipped = [], Counter()
    where = f"LRS3 folder {root_dir}"
    for stem in stems:
        video, transcript = stem.parent / f"{stem.name}.mp4", stem.parent / f"{stem.name}.txt"
        try:
            problem = "missing or empty file"
            _check_file(video, "video", where)
            _check_file(transcript, "transcript", where)
            problem = "bad transcript"
            text, words = parse_lrs3_transcript(transcript)
        except DatasetError as error:
            _skip_or_raise(skip_bad_files, skipped, problem, error)
            continue
        rows.append(
            {
                "id": stem.relative_to(root_dir).as_posix(),
                "video": str(video),
                "audio": str(video),
                "text": text,
                "words": words,
            }
        )

    if check_media:
        for position, row in enumerate(rows):
            row["position"] = position
        rows = _check_media_in_parallel(
            rows,
            lambda row: _check_media(Path(row["video"]), where, need_audio=True),
            skip_bad_files,
            skipped,
            num_workers,
        )
    rows = [{key: row[key] for key in ("id", "video", "audio", "text", "words")} for row in rows]

    words = datasets.List(
        {"word": datasets.Value("string"), "start": datasets.Value("float32"), "end": datasets.Value("float32")}
    )
    return _finish(rows, _clip_features(sampling_rate, words=words), skipped, root_dir)
