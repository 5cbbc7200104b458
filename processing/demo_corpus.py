"""The built-in demo corpus: GRID-style sentences spoken by Debian's `flite` voices, with a rendered mouth-ROI video
whose shape follows the spoken phones. It stands in for LRS3 on machines without it (the main job, the tests).

Each clip is a six-word GRID sentence (command, colour, preposition, letter, digit, adverb: "PLACE BLUE AT F TWO
NOW"). `flite -psdur` synthesises the speech and prints each phone's end time; the phones become mouth shapes
(visemes: jaw opening, lip spread/rounding, lip closure, lower lip under the teeth, teeth and tongue visible) whose
trajectories blend neighbouring phones with dominance functions (Cohen & Massaro's coarticulation model: each phone
pulls the mouth towards its target with a weight that decays away from the phone's centre, lip closures pull
hardest). A 96x96 mouth region is drawn from those trajectories at 25 fps. Voice, speaking rate, pitch and the
mouth's appearance (skin and lip tone, size, position, tilt, lighting, sensor noise, head jitter) vary per clip, so
models must generalise; the video alone carries the words, up to what lips cannot show (b/p/m, t/d/n, s/z share
their shapes, as in real lip reading: the letters B/P, D/T and C/Z are told apart by the audio only).

The corpus is written in auto_avsr's preprocessed layout, so `load_auto_avsr_dataset` and the training script read
it like LRS3::

    DIR/demo/<split>/<speaker>/<clip>.mp4   96x96 mouth ROI, 25 fps, H.264
    DIR/demo/<split>/<speaker>/<clip>.wav   16 kHz mono, exactly 640 samples per video frame
    DIR/labels/<split>.csv                  `demo,<split>/<speaker>/<clip>.mp4,<frames>,<unigram5000 token ids>`

Variants (`--tts`, `--mouth-model`, or `--variant` for a named pair; see `VARIANTS`) test whether a recipe
generalises beyond the corpus it was tuned on: the same sentences, splits and layout spoken by another synthesiser
(`demo_tts`: flite, espeak-ng, festival) and drawn by another, independently parameterised mouth model
(`demo_mouth`: ellipse, contour).

Command line (resumable: clips already on disk are kept)::

    python -m mmavsr_processing.demo_corpus --output-dir demo_corpus --num-clips 1000
    python -m mmavsr_processing.demo_corpus --output-dir demo_espeak --num-clips 1000 --variant espeak-contour
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .demo_mouth import FPS, MOUTH_MODELS, ROI_SIZE, mouth_frames, mouth_trajectory, render_mouth  # noqa: F401
from .demo_tts import (  # noqa: F401
    SAMPLING_RATE,
    SPOKEN_FORMS,
    TTS_ENGINES,
    TTS_VOICES,
    DemoCorpusError,
    Voice,
    check_tts,
    draw_pitch,
    synthesize_words,
)
from .media_constants import SAMPLES_PER_FRAME
from .media_io import fit_audio_to_video, write_audio, write_video


logger = logging.getLogger(__name__)

DATASET_NAME = "demo"

GRID_WORDS = {
    "command": ("BIN", "LAY", "PLACE", "SET"),
    "colour": ("BLUE", "GREEN", "RED", "WHITE"),
    "preposition": ("AT", "BY", "IN", "WITH"),
    "letter": tuple("ABCDEFGHIJKLMNOPQRSTUVXYZ"),  # GRID leaves out W
    "digit": ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"),
    "adverb": ("AGAIN", "NOW", "PLEASE", "SOON"),
}
SPLITS = ("train", "val", "test")
# flite's 16 kHz voices whose phone timings match their audio (kal16's are rescaled)
VOICES = TTS_VOICES["flite"]
# corpus variants: (speech synthesiser, mouth model); `default` is the corpus the main job was tuned on
VARIANTS = {
    "default": ("flite", "ellipse"),
    "espeak-contour": ("espeak", "contour"),
    "festival-contour": ("festival", "contour"),
}


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides one clip; drawn from the corpus seed and the clip's index alone."""

    index: int
    split: str
    speaker: str
    words: tuple[str, ...]
    voice: str
    duration_stretch: float
    pitch_mean: float
    appearance_seed: int
    tts: str = "flite"
    mouth_model: str = "ellipse"

    @property
    def rel_path(self) -> str:
        return f"{self.split}/{self.speaker}/{self.index:06d}.mp4"

    @property
    def text(self) -> str:
        return " ".join(self.words)


def plan_corpus(
    num_clips: int,
    seed: int = 0,
    voices: tuple[str, ...] | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    num_faces: int = 8,
    tts: str = "flite",
    mouth_model: str = "ellipse",
) -> list[ClipPlan]:
    """Draw every clip's sentence, voice, rate, pitch and face. A speaker is a (voice, face) pair; splits are drawn
    per clip, so test speakers are also seen in training (as GRID's usual speaker-dependent split). `tts` and
    `mouth_model` choose the variant (the sentences and splits of a seed are the same in every variant); `voices`
    defaults to all of the engine's voices."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}.")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers (train, val, test), got {split_fractions}.")
    if tts not in TTS_VOICES:
        raise ValueError(f"unknown speech synthesiser (--tts) {tts!r}; choose from {', '.join(TTS_ENGINES)}.")
    if mouth_model not in MOUTH_MODELS:
        raise ValueError(f"unknown mouth model (--mouth-model) {mouth_model!r}; choose from {', '.join(MOUTH_MODELS)}.")
    voices = TTS_VOICES[tts] if voices is None else tuple(voices)
    unknown = sorted(set(voices) - set(TTS_VOICES[tts]))
    if unknown or not voices:
        raise ValueError(f"unknown {tts} voice(s) {unknown or list(voices)}; choose from {', '.join(TTS_VOICES[tts])}.")
    fractions = np.asarray(split_fractions, dtype=float) / sum(split_fractions)
    plans = []
    for index in range(num_clips):
        rng = np.random.default_rng([seed, index])
        words = tuple(str(rng.choice(choices)) for choices in GRID_WORDS.values())
        voice = str(rng.choice(voices))
        face = int(rng.integers(num_faces))
        plans.append(
            ClipPlan(
                index=index,
                split=SPLITS[int(rng.choice(3, p=fractions))],
                speaker=f"{voice.replace('+', '_')}-face{face}",
                words=words,
                voice=voice,
                duration_stretch=float(rng.uniform(0.85, 1.2)),
                pitch_mean=draw_pitch(tts, voice, rng),
                appearance_seed=seed * 1000 + face,
                tts=tts,
                mouth_model=mouth_model,
            )
        )
    return plans


def check_flite() -> str:
    """The flite executable, or a `DemoCorpusError` saying how to install it."""
    return check_tts("flite")


def synthesize(plan: ClipPlan, executable: str | None = None) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The clip's speech (16 kHz float wave) from its engine and voice, and its phones as (phone, start s, end s)."""
    return synthesize_words(plan.words, Voice(plan.tts, plan.voice, plan.duration_stretch, plan.pitch_mean), executable)


def make_clip(plan: ClipPlan, output_dir: Path, executable: str | None = None) -> tuple[str, int]:
    """Write one clip's mp4 and wav (unless both exist already); return (rel_path, num_frames)."""
    video_path = output_dir / DATASET_NAME / plan.rel_path
    wav_path = video_path.with_suffix(".wav")
    if video_path.is_file() and wav_path.is_file() and video_path.stat().st_size and wav_path.stat().st_size:
        return plan.rel_path, sf.info(str(wav_path)).frames // SAMPLES_PER_FRAME
    wave, phones = synthesize(plan, executable)
    num_frames = -(-len(wave) // SAMPLES_PER_FRAME)
    wave = fit_audio_to_video(wave, num_frames)
    frames = mouth_frames(plan.mouth_model, phones, num_frames, plan.appearance_seed, clip_seed=plan.index)
    # written under temporary names and renamed, so an interrupted run never leaves a truncated clip behind
    video_part, wav_part = video_path.with_suffix(".part.mp4"), wav_path.with_suffix(".part.wav")
    write_video(video_part, frames, fps=FPS)
    write_audio(wav_part, wave * 0.9 / max(np.abs(wave).max(), 1e-6), SAMPLING_RATE)
    os.replace(wav_part, wav_path)
    os.replace(video_part, video_path)
    return plan.rel_path, num_frames


def _make_clip_job(args):
    return make_clip(*args)


def generate_demo_corpus(
    output_dir: str | os.PathLike,
    num_clips: int = 1000,
    seed: int = 0,
    voices: tuple[str, ...] | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    num_workers: int | None = None,
    progress: bool = True,
    tts: str = "flite",
    mouth_model: str = "ellipse",
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, Path]:
    """Write the demo corpus to `output_dir` (see the module docstring for the layout) and return the label file of
    each split. Deterministic in `seed`; clips already on disk are kept, so an interrupted run resumes. `tts`
    (flite, espeak, festival) and `mouth_model` (ellipse, contour) choose the variant; a folder holds one variant
    (resuming into a folder made with another one is refused). `splits` limits the clips made and the label files
    written to some splits (e.g. only `test`, to evaluate on another variant); each clip keeps its split."""
    from tqdm.auto import tqdm

    from .tokenization_mmavsr import MMAVSRTokenizer

    plans = plan_corpus(
        num_clips, seed=seed, voices=voices, split_fractions=split_fractions, tts=tts, mouth_model=mouth_model
    )
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"unknown split(s) {unknown or list(splits)}; choose from {', '.join(SPLITS)}.")
    plans = [plan for plan in plans if plan.split in splits]
    executable = check_tts(tts)
    output_dir = Path(output_dir)
    previous = output_dir / "corpus.json"
    if previous.is_file():
        made = json.loads(previous.read_text())
        made_variant = (made.get("tts", "flite"), made.get("mouth_model", "ellipse"))
        if made_variant != (tts, mouth_model):
            raise DemoCorpusError(
                f"{output_dir} holds a demo corpus made with --tts {made_variant[0]} --mouth-model {made_variant[1]}; "
                f"write the --tts {tts} --mouth-model {mouth_model} variant to another folder."
            )
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    num_workers = num_workers or os.cpu_count() or 1
    jobs = [(plan, output_dir, executable) for plan in plans]
    bar = tqdm(total=len(plans), desc="demo corpus", unit="clip", disable=not progress)
    results = []
    if num_workers == 1:
        for job in jobs:
            results.append(_make_clip_job(job))
            bar.update()
    else:
        with ProcessPoolExecutor(num_workers) as pool:
            for result in pool.map(_make_clip_job, jobs, chunksize=8):
                results.append(result)
                bar.update()
    bar.close()

    rows = {split: [] for split in SPLITS if split in splits}
    for plan, (rel_path, num_frames) in zip(plans, results):
        ids = tokenizer(plan.text, add_special_tokens=False)["input_ids"]
        rows[plan.split].append(f"{DATASET_NAME},{rel_path},{num_frames},{' '.join(map(str, ids))}")
    labels_dir = output_dir / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    label_files = {}
    for split, lines in rows.items():
        path = labels_dir / f"{split}.csv"
        path.write_text("".join(line + "\n" for line in lines))
        label_files[split] = path
    (output_dir / "corpus.json").write_text(
        json.dumps(
            {
                "num_clips": num_clips,
                "seed": seed,
                "tts": tts,
                "mouth_model": mouth_model,
                "splits": list(rows),
                "voices": list(TTS_VOICES[tts] if voices is None else voices),
                "split_fractions": list(split_fractions),
                "clips_per_split": {split: len(lines) for split, lines in rows.items()},
                "vocabulary": GRID_WORDS,
            },
            indent=2,
        )
    )
    return label_files


@dataclass
class LongRecording:
    """Demo clips in a row with pauses between them: frames `(T, 96, 96, 3)` at 25 fps, the 16 kHz wave (640 samples
    a frame), and each clip's `(start s, end s, text)`."""

    frames: np.ndarray
    wave: np.ndarray
    clips: list[tuple[float, float, str]]

    @property
    def duration(self) -> float:
        return len(self.frames) / FPS


def long_recording(
    corpus_dir: str | os.PathLike,
    label_file: str | os.PathLike,
    seed: int = 0,
    min_gap_s: float = 0.3,
    max_gap_s: float = 1.0,
    min_duration_s: float = 0.0,
) -> LongRecording:
    """The clips of a label file of the demo corpus (`generate_demo_corpus`) one after another, each after a pause of
    `min_gap_s` to `max_gap_s` seconds (drawn from `seed`; the mouth rests, the sound is silent), the list repeated
    until the recording lasts `min_duration_s`: a long recording whose true clip boundaries are known."""
    from .media_io import read_audio, read_video
    from .tokenization_mmavsr import MMAVSRTokenizer

    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    rows = [line.split(",") for line in Path(label_file).read_text().splitlines() if line]
    if not rows:
        raise ValueError(f"{label_file}: no clip")
    rng = np.random.default_rng(seed)
    frames, waves, clips, position = [], [], [], 0
    while not clips or position < min_duration_s * FPS:
        for row in rows:
            video = Path(corpus_dir) / DATASET_NAME / row[1]
            clip, _ = read_video(video)
            wave = fit_audio_to_video(read_audio(video.with_suffix(".wav")), len(clip))
            gap = int(round(rng.uniform(min_gap_s, max_gap_s) * FPS))
            frames += [np.repeat(clip[:1], gap, axis=0), clip]
            waves += [np.zeros(gap * SAMPLES_PER_FRAME, np.float32), wave]
            position += gap
            text = tokenizer.decode([int(token) for token in row[3].split()], skip_special_tokens=True)
            clips.append((position / FPS, (position + len(clip)) / FPS, text))
            position += len(clip)
    return LongRecording(np.concatenate(frames), np.concatenate(waves), clips)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mmavsr_processing.demo_corpus",
        description="Generate the demo corpus (GRID-style synthetic speech + rendered mouth videos) in auto_avsr's "
        "layout.",
    )
    parser.add_argument("--output-dir", required=True, help="where to write demo/ and labels/ (created if needed)")
    parser.add_argument("--num-clips", type=int, default=1000, help="number of clips (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus is a function of the seed (default 0)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default=None,
        help="shorthand for a (--tts, --mouth-model) pair: "
        + ", ".join(f"{name} = {tts} + {mouth}" for name, (tts, mouth) in VARIANTS.items()),
    )
    parser.add_argument(
        "--tts",
        choices=TTS_ENGINES,
        default=None,
        help="speech synthesiser: flite (default), espeak (espeak-ng) or festival",
    )
    parser.add_argument(
        "--mouth-model",
        choices=MOUTH_MODELS,
        default=None,
        help="mouth model and renderer: ellipse (default) or contour",
    )
    parser.add_argument(
        "--voices",
        nargs="+",
        default=None,
        help="voices of the chosen engine (default: all of them): "
        + "; ".join(f"{engine}: {' '.join(names)}" for engine, names in TTS_VOICES.items()),
    )
    parser.add_argument(
        "--split-fractions",
        nargs=3,
        type=float,
        default=[0.8, 0.1, 0.1],
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of clips per split (default 0.8 0.1 0.1)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(SPLITS),
        help="make only these splits' clips and label files (default: all)",
    )
    parser.add_argument("--num-workers", type=int, default=None, help="processes (default: one per CPU core)")
    parser.add_argument(
        "--save-to-disk",
        metavar="DIR",
        help="also write the corpus as a `datasets` dataset with "
        "the media embedded (`load_from_disk(DIR)`, or the training script's --dataset_name DIR)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="USER/NAME", help="also push that dataset to this Hub repository (needs a login)"
    )
    args = parser.parse_args(argv)
    tts, mouth_model = VARIANTS[args.variant or "default"]
    for flag, given, implied in (("--tts", args.tts, tts), ("--mouth-model", args.mouth_model, mouth_model)):
        if args.variant is not None and given is not None and given != implied:
            parser.error(f"--variant {args.variant} means {flag} {implied}, not {given}")
    tts, mouth_model = args.tts or tts, args.mouth_model or mouth_model
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        label_files = generate_demo_corpus(
            args.output_dir,
            args.num_clips,
            seed=args.seed,
            voices=args.voices,
            split_fractions=tuple(args.split_fractions),
            num_workers=args.num_workers,
            tts=tts,
            mouth_model=mouth_model,
            splits=tuple(args.splits),
        )
    except (DemoCorpusError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    for split, path in label_files.items():
        logger.info("%s: %d clips in %s", split, sum(1 for _ in path.open()), path)
    if args.save_to_disk or args.push_to_hub:
        from .hf_datasets import export_auto_avsr_dataset

        export_auto_avsr_dataset(args.output_dir, label_files, args.save_to_disk, args.push_to_hub)


if __name__ == "__main__":
    main()
