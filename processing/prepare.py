"""Raw talking-face videos -> auto_avsr's preprocessed layout, which [`load_auto_avsr_dataset`] reads.

```bash
python -m mmavsr_processing.prepare --input-dir lrs3/trainval --output-dir data --dataset lrs3 --split train
```

For every video under `--input-dir` (searched recursively; .mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg) this writes, under
`--output-dir`:

- `DATASET/SPLIT/<path below input-dir>.mp4`: the 96x96 grayscale mouth region at 25 fps ([`MouthCropper`]: with
  `--detector mediapipe`, the default when the `crop` extra is installed, auto_avsr's own preparation; with
  `--detector haar`, OpenCV's Haar cascades);
- the `.wav` beside it with the same stem: the audio track (or a same-stem .wav/.flac beside a silent video),
  mono 16 kHz, cut or zero-padded to 640 samples per video frame so both streams span the same time;
- `labels/DATASET_SPLIT.csv`: headerless rows `DATASET,SPLIT/<path>.mp4,num_frames,token ids` with the transcript
  tokenized by `--tokenizer` (auto_avsr's `unigram5000` by default, or a saved [`MMAVSRTokenizer`] folder).

Transcripts come from the `.txt` beside each video (LRS3's `Text:  THE WORDS` first line, or else the whole file is
the text), or from a `--transcripts` CSV of `path,text` rows (`path` relative to `--input-dir`; a `path,text` header
row is allowed). Videos at any frame rate, constant or variable, and audio at any sampling rate are resampled (frames
by nearest timestamp, the rule of `media_io.resample_frames` that the inference pipeline applies too); a container's
rotation is applied. A rerun skips the clips already
written (files are written under a temporary name and renamed, so an interrupted run leaves no half-written clip)
and rewrites the label file. A bad clip (unreadable media, no face, no
transcript, a face too close to the edge for the crop) stops the run with an error that names it, or with
`--skip-bad-files` is left out, counted by reason and listed in `labels/DATASET_SPLIT_skipped.tsv`.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .lrs3 import DatasetError, parse_lrs3_transcript
from .media_constants import SAMPLING_RATE, VIDEO_FPS
from .media_io import (
    VIDEO_SUFFIXES,
    MediaError,
    count_frames,
    fit_audio_to_video,
    read_audio,
    read_audio_track,
    read_video,
    write_audio,
    write_video,
)
from .mouth_alignment import MouthCropError, import_cv2
from .mouth_cropping import DETECTORS, MouthCropper, NoFaceError, default_detector
from .tokenization_mmavsr import MMAVSRTokenizer


__all__ = ["PreparationError", "PreparationSummary", "main", "prepare_dataset"]

AUDIO_SUFFIXES = (".wav", ".flac")


class PreparationError(ValueError):
    """A clip cannot be prepared (unreadable media, no face, no transcript); the message names the file."""


@dataclass
class PreparationSummary:
    """What one run did: `written` clips, `reused` clips already there, `skipped` {source path: reason} (also
    listed in `skipped_file` when there are any) and `rejections` {kind of reason: count} (`REJECTION_KINDS`), and the
    label file holding the `written + reused` clips."""

    label_file: Path
    skipped_file: Path
    written: int = 0
    reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    rejections: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class _Clip:
    source: Path  # the raw video
    relative: str  # its path below the input folder, without suffix (posix)
    text: str | None  # None when the transcript could not be read (`problem` says why)
    problem: str | None = None


def _read_transcript_file(path: Path) -> str:
    if not path.is_file():
        raise PreparationError(f"{path}: transcript not found (expected a .txt beside the video, or --transcripts).")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if lines and lines[0].lstrip().startswith("Text:"):
        text, _ = parse_lrs3_transcript(path)
        return text
    text = " ".join(" ".join(lines).split())
    if not text:
        raise PreparationError(f"{path}: empty transcript.")
    return text


def _read_transcripts_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise PreparationError(f"transcripts file {path} does not exist.")
    texts = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or (line == 1 and [value.strip() for value in row] == ["path", "text"]):
                continue
            if len(row) != 2:
                raise PreparationError(f"{path}, line {line}: expected 2 columns `path,text`, got {len(row)}.")
            texts[Path(row[0].strip()).as_posix()] = " ".join(row[1].split())
    return texts


def _find_clips(input_dir: Path, transcripts: Path | None, output_dir: Path) -> list[_Clip]:
    """Every video below `input_dir` (except in `output_dir`, which may lie inside it) with its transcript."""
    skip = output_dir.resolve()
    videos = sorted(
        path
        for path in input_dir.rglob("*")
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file() and skip not in path.resolve().parents
    )
    texts = _read_transcripts_csv(transcripts) if transcripts is not None else None
    clips = []
    for video in videos:
        relative = video.relative_to(input_dir)
        stem = relative.with_suffix("").as_posix()
        try:
            if texts is None:
                text = _read_transcript_file(video.with_suffix(".txt"))
            else:
                text = texts.pop(relative.as_posix(), "")
                if not text:
                    raise PreparationError(f"{video}: no transcript for {relative.as_posix()} in {transcripts}.")
            clips.append(_Clip(video, stem, text))
        except (PreparationError, DatasetError) as error:
            clips.append(_Clip(video, stem, None, str(error)))
    for missing in sorted(texts or {}):
        clips.append(
            _Clip(
                input_dir / missing,
                Path(missing).with_suffix("").as_posix(),
                None,
                f"{input_dir / missing}: listed in {transcripts} but not found.",
            )
        )
    return clips


# the kinds of reason a clip is rejected for, counted in `PreparationSummary.rejections`
REJECTION_KINDS = ("no transcript", "unreadable media", "no face", "face too close to the edge", "other error")

_cropper: MouthCropper | None = None


def _init_worker(detector: str, detection_stride: int, one_thread: bool = False):
    """The cropper of this process; a pool's worker runs OpenCV on one thread (N workers, N cores: the Haar cascades
    alone would take every core in each worker), one process lets it use them all."""
    global _cropper
    if one_thread:
        import_cv2().setNumThreads(1)
    _cropper = MouthCropper(detector=detector, detection_stride=detection_stride)


def _pool_context():
    """Workers forked from a fresh server process that imported this module once (seconds, the first time in a
    process), never from this one: a fork inherits its threads' locks (PyAV's filter graphs hung in a child's garbage
    collection, mediapipe crashed in malloc), whatever the caller ran before."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _prepare_clip(clip: _Clip, target: Path) -> tuple[int | None, str | None, str | None]:
    """Writes one clip's mouth video `target.mp4` and `target.wav`; returns `(num_frames, None, None)`, or
    `(None, reason, kind)` for a clip that cannot be prepared (any error on it: a damaged file can fail in many
    places; `kind` is one of `REJECTION_KINDS`)."""
    try:
        frames, _ = read_video(clip.source, target_fps=VIDEO_FPS)  # any frame rate, constant or variable
        wave = read_audio_track(clip.source)
        if wave is None:
            beside = [clip.source.with_suffix(suffix) for suffix in AUDIO_SUFFIXES]
            audio_file = next((path for path in beside if path.is_file()), None)
            if audio_file is None:
                raise MediaError(f"{clip.source}: no audio track, and no {' or '.join(map(str, beside))} beside it")
            wave = read_audio(audio_file, SAMPLING_RATE, resample=True, mono=True)
        crops = _cropper(frames)
        video, audio = (target.with_name(f"{target.name}{suffix}") for suffix in (".mp4", ".wav"))
        partial_video, partial_audio = (path.with_name(path.name + ".partial") for path in (video, audio))
        write_audio(partial_audio, fit_audio_to_video(wave, len(crops)), SAMPLING_RATE)
        write_video(partial_video, crops, fps=VIDEO_FPS)
        os.replace(partial_audio, audio)
        os.replace(partial_video, video)  # last: an existing mp4 means the clip is complete
    except (MediaError, NoFaceError, MouthCropError) as error:
        kind = {MediaError: "unreadable media", NoFaceError: "no face", MouthCropError: "face too close to the edge"}
        reason = str(error) if str(clip.source) in str(error) else f"{clip.source}: {error}"
        return None, reason, next(name for cls, name in kind.items() if isinstance(error, cls))
    except Exception as error:  # noqa: BLE001 - reported against the clip, so one odd file cannot end a long run
        return None, f"{clip.source}: {type(error).__name__}: {error}", "other error"
    return len(crops), None, None


def _load_tokenizer(name: str) -> MMAVSRTokenizer:
    if name == "unigram5000":
        return MMAVSRTokenizer.from_auto_avsr()
    if not Path(name).is_dir():
        raise PreparationError(f"--tokenizer {name}: neither 'unigram5000' nor a saved tokenizer folder.")
    return MMAVSRTokenizer.from_pretrained(name)


def prepare_dataset(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dataset: str,
    split: str = "train",
    tokenizer: MMAVSRTokenizer | str = "unigram5000",
    transcripts: str | os.PathLike | None = None,
    skip_bad_files: bool = False,
    num_workers: int = 1,
    detection_stride: int = 1,
    detector: str | None = None,
) -> PreparationSummary:
    """Converts the videos under `input_dir` to auto_avsr's layout under `output_dir` (see the module's docstring).

    Args:
        input_dir: folder searched recursively for videos.
        output_dir: receives `dataset/split/...` clips and `labels/{dataset}_{split}.csv`.
        dataset: the dataset name (first CSV column and top folder), e.g. `lrs3`.
        split: sub-folder and label-file suffix, e.g. `train`, `test`.
        tokenizer: `"unigram5000"`, a saved tokenizer folder, or an `MMAVSRTokenizer`.
        transcripts: a `path,text` CSV; default: the `.txt` beside each video.
        skip_bad_files: leave bad clips out (counted, listed) instead of raising.
        num_workers: processes cropping clips in parallel (1: in this process).
        detection_stride: run the face detector on every n-th frame only (see [`MouthCropper`]).
        detector: `"mediapipe"` (auto_avsr's preparation) or `"haar"`; default: mediapipe when the `crop` extra is
            installed, else Haar (with a warning naming the extra).

    Raises:
        PreparationError: a bad clip (without `skip_bad_files`), a bad transcripts CSV, or an unknown tokenizer.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise PreparationError(f"input dir {input_dir} is not a directory.")
    if detection_stride < 1:
        raise PreparationError(f"detection_stride must be at least 1, got {detection_stride}.")
    if num_workers < 1:
        raise PreparationError(f"num_workers must be at least 1, got {num_workers}.")
    if detector is None:
        detector = default_detector()
    if detector not in DETECTORS:
        raise PreparationError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}.")
    if isinstance(tokenizer, str):
        tokenizer = _load_tokenizer(tokenizer)
    clips = _find_clips(input_dir, Path(transcripts) if transcripts is not None else None, output_dir)
    if not clips:
        raise PreparationError(f"{input_dir}: no video ({' '.join(VIDEO_SUFFIXES)}) found.")
    label_file = output_dir / "labels" / f"{dataset}_{split}.csv"
    summary = PreparationSummary(label_file, label_file.with_name(f"{dataset}_{split}_skipped.tsv"))
    clip_dir = output_dir / dataset / split

    def reject(clip: _Clip, reason: str, kind: str):
        if not skip_bad_files:
            raise PreparationError(reason)
        summary.skipped[str(clip.source)] = reason
        summary.rejections[kind] += 1

    frames, todo = {}, []
    for clip in clips:
        if clip.text is None:
            reject(clip, clip.problem, "no transcript")
        elif (clip_dir / f"{clip.relative}.mp4").is_file() and (clip_dir / f"{clip.relative}.wav").is_file():
            frames[clip.relative] = count_frames(clip_dir / f"{clip.relative}.mp4")
            summary.reused += 1
        else:
            todo.append(clip)

    progress = tqdm(total=len(todo), desc=f"{dataset}/{split}", unit="clip", disable=not todo)
    if num_workers > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(
            min(num_workers, len(todo)),
            mp_context=_pool_context(),
            initializer=_init_worker,
            initargs=(detector, detection_stride, True),
        )
        results = pool.map(_prepare_clip, todo, [clip_dir / clip.relative for clip in todo])
    else:
        pool = None
        _init_worker(detector, detection_stride)
        results = (_prepare_clip(clip, clip_dir / clip.relative) for clip in todo)
    try:
        for clip, (count, problem, kind) in zip(todo, results):
            progress.update()
            if problem is not None:
                reject(clip, problem, kind)
            else:
                frames[clip.relative] = count
                summary.written += 1
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    label_file.parent.mkdir(parents=True, exist_ok=True)
    with label_file.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for clip in clips:
            if clip.relative in frames:
                ids = tokenizer(clip.text, add_special_tokens=False)["input_ids"]
                writer.writerow(
                    [dataset, f"{split}/{clip.relative}.mp4", frames[clip.relative], " ".join(map(str, ids))]
                )
    if summary.skipped:
        summary.skipped_file.write_text("".join(f"{path}\t{reason}\n" for path, reason in summary.skipped.items()))
    elif summary.skipped_file.exists():
        summary.skipped_file.unlink()
    return summary


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mmavsr_processing.prepare",
        description="Raw talking-face videos -> auto_avsr's layout: 25 fps 96x96 mouth ROIs (.mp4), 16 kHz audio "
        "(.wav beside it) and a label CSV `dataset,rel_path,num_frames,token ids`.",
    )
    parser.add_argument("--input-dir", required=True, help="folder searched recursively for videos")
    parser.add_argument("--output-dir", required=True, help="root of the prepared dataset")
    parser.add_argument("--dataset", required=True, help="dataset name: first CSV column and top output folder")
    parser.add_argument("--split", default="train", help="output sub-folder and label-file suffix (default: train)")
    parser.add_argument(
        "--tokenizer", default="unigram5000", help="'unigram5000' (auto_avsr's, default) or a saved tokenizer folder"
    )
    parser.add_argument(
        "--transcripts",
        help="CSV of `path,text` rows (path relative to --input-dir); default: the .txt beside each video",
    )
    parser.add_argument(
        "--skip-bad-files", action="store_true", help="leave out (count and list) clips that cannot be prepared"
    )
    parser.add_argument("--num-workers", type=int, default=1, help="processes cropping clips in parallel (default 1)")
    parser.add_argument(
        "--detection-stride", type=int, default=1, help="run the face detector on every n-th frame only (default 1)"
    )
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        help="mediapipe: auto_avsr's preparation (face keypoints aligned to its mean face; the default when the "
        "`crop` extra is installed); haar: OpenCV's Haar cascades (the fallback, e.g. for the synthetic demo corpus)",
    )
    parser.add_argument(
        "--save-to-disk",
        metavar="DIR",
        help="also write every split prepared for --dataset under --output-dir as a `datasets` dataset with the media "
        "embedded (`load_from_disk(DIR)`, or the training script's --dataset_name DIR)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="USER/NAME", help="also push that dataset to this Hub repository (needs a login)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        summary = prepare_dataset(
            args.input_dir,
            args.output_dir,
            args.dataset,
            split=args.split,
            tokenizer=args.tokenizer,
            transcripts=args.transcripts,
            skip_bad_files=args.skip_bad_files,
            num_workers=args.num_workers,
            detection_stride=args.detection_stride,
            detector=args.detector,
        )
    except PreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = summary.written + summary.reused
    print(
        f"{summary.label_file}: {total} clip{'' if total == 1 else 's'} "
        f"({summary.written} written, {summary.reused} already there, {len(summary.skipped)} skipped)"
    )
    if summary.rejections:
        counts = [f"{kind} {summary.rejections[kind]}" for kind in REJECTION_KINDS if summary.rejections[kind]]
        print("skipped by reason: " + ", ".join(counts))
    for path, reason in list(summary.skipped.items())[:5]:
        print(f"skipped {path}: {reason}")
    if len(summary.skipped) > 5:
        print(f"... all {len(summary.skipped)} listed in {summary.skipped_file}")
    if args.save_to_disk or args.push_to_hub:
        from .hf_datasets import export_auto_avsr_dataset

        label_files = {
            path.stem[len(args.dataset) + 1 :]: path
            for path in sorted(summary.label_file.parent.glob(f"{args.dataset}_*.csv"))
        }
        dataset = export_auto_avsr_dataset(
            args.output_dir, label_files, args.save_to_disk, args.push_to_hub, tokenizer=_load_tokenizer(args.tokenizer)
        )
        targets = " and ".join(filter(None, (args.save_to_disk, args.push_to_hub)))
        print(f"dataset {dict(dataset.num_rows)} written to {targets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
