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

Command line (resumable: clips already on disk are kept)::

    python -m mmavsr_processing.demo_corpus --output-dir demo_corpus --num-clips 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .media_io import write_audio, write_video


logger = logging.getLogger(__name__)

FPS = 25
SAMPLING_RATE = 16000
SAMPLES_PER_FRAME = SAMPLING_RATE // FPS
ROI_SIZE = 96
DATASET_NAME = "demo"

GRID_WORDS = {
    "command": ("BIN", "LAY", "PLACE", "SET"),
    "colour": ("BLUE", "GREEN", "RED", "WHITE"),
    "preposition": ("AT", "BY", "IN", "WITH"),
    "letter": tuple("ABCDEFGHIJKLMNOPQRSTUVXYZ"),  # GRID leaves out W
    "digit": ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"),
    "adverb": ("AGAIN", "NOW", "PLEASE", "SOON"),
}
# what flite is given for a word when the written form would be read otherwise ("A" alone is read as the article)
SPOKEN_FORMS = {"A": "ay"}
# flite's 16 kHz voices whose phone timings match their audio (kal16's are rescaled, see `_phone_segments`)
VOICES = ("slt", "rms", "awb", "kal16")
SPLITS = ("train", "val", "test")

# Mouth shape per phone: (jaw opening 0..1, lip spread -1 rounded .. 1 spread, lip closure 0..1, lower lip under the
# upper teeth 0..1, teeth visible 0..1, tongue visible 0..1, dominance). Phones of one viseme share a shape.
_VISEMES = {
    "rest": (0.08, 0.0, 0.3, 0.0, 0.0, 0.0, 0.6),
    "bilabial": (0.0, 0.05, 1.0, 0.0, 0.0, 0.0, 6.0),  # b p m
    "labiodental": (0.12, 0.1, 0.0, 1.0, 0.9, 0.0, 4.0),  # f v
    "dental": (0.28, 0.2, 0.0, 0.0, 0.8, 1.0, 2.5),  # th dh
    "alveolar": (0.22, 0.35, 0.0, 0.0, 0.7, 0.3, 1.2),  # t d n l
    "sibilant": (0.1, 0.55, 0.0, 0.0, 1.0, 0.0, 2.5),  # s z
    "postalveolar": (0.18, -0.45, 0.0, 0.0, 0.8, 0.0, 2.5),  # sh zh ch jh
    "velar": (0.32, 0.15, 0.0, 0.0, 0.4, 0.2, 0.8),  # k g ng hh
    "r": (0.2, -0.6, 0.0, 0.0, 0.3, 0.1, 1.8),
    "w": (0.12, -1.0, 0.0, 0.0, 0.0, 0.0, 3.0),
    "y": (0.2, 0.6, 0.0, 0.0, 0.6, 0.1, 1.2),
    "open": (0.95, 0.15, 0.0, 0.0, 0.3, 0.4, 1.0),  # aa ah ay aw
    "front_open": (0.7, 0.5, 0.0, 0.0, 0.6, 0.3, 1.0),  # ae eh ey
    "front_close": (0.3, 0.9, 0.0, 0.0, 0.9, 0.1, 1.0),  # iy ih
    "mid": (0.45, 0.1, 0.0, 0.0, 0.3, 0.2, 0.8),  # ax er
    "round_open": (0.7, -0.6, 0.0, 0.0, 0.2, 0.2, 1.2),  # ao oy
    "round_mid": (0.5, -0.8, 0.0, 0.0, 0.1, 0.1, 1.5),  # ow
    "round_close": (0.25, -1.0, 0.0, 0.0, 0.0, 0.0, 2.0),  # uw uh
}
_PHONE_VISEME = {
    "pau": "rest", "b": "bilabial", "p": "bilabial", "m": "bilabial", "f": "labiodental", "v": "labiodental",
    "th": "dental", "dh": "dental", "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar",
    "s": "sibilant", "z": "sibilant", "sh": "postalveolar", "zh": "postalveolar", "ch": "postalveolar",
    "jh": "postalveolar", "k": "velar", "g": "velar", "ng": "velar", "hh": "velar", "r": "r", "w": "w", "y": "y",
    "aa": "open", "ah": "open", "ay": "open", "aw": "open", "ae": "front_open", "eh": "front_open",
    "ey": "front_open", "iy": "front_close", "ih": "front_close", "ax": "mid", "er": "mid", "ao": "round_open",
    "oy": "round_open", "ow": "round_mid", "uw": "round_close", "uh": "round_close",
}
# diphthongs move from their first shape to this one over their second half
_DIPHTHONG_TARGETS = {"ay": "front_close", "aw": "round_close", "ey": "front_close", "oy": "front_close",
                      "ow": "round_close"}


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be made here (flite missing or failing); the message says why and what to do."""


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

    @property
    def rel_path(self) -> str:
        return f"{self.split}/{self.speaker}/{self.index:06d}.mp4"

    @property
    def text(self) -> str:
        return " ".join(self.words)


def plan_corpus(num_clips: int, seed: int = 0, voices: tuple[str, ...] = VOICES,
                split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), num_faces: int = 8) -> list[ClipPlan]:
    """Draw every clip's sentence, voice, rate, pitch and face. A speaker is a (voice, face) pair; splits are drawn
    per clip, so test speakers are also seen in training (as GRID's usual speaker-dependent split)."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}.")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers (train, val, test), got {split_fractions}.")
    unknown = sorted(set(voices) - set(VOICES))
    if unknown or not voices:
        raise ValueError(f"unknown flite voice(s) {unknown or voices}; choose from {', '.join(VOICES)}.")
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
                speaker=f"{voice}-face{face}",
                words=words,
                voice=voice,
                duration_stretch=float(rng.uniform(0.85, 1.2)),
                pitch_mean=float(rng.uniform(85, 125) if voice in ("rms", "awb", "kal16") else rng.uniform(150, 200)),
                appearance_seed=seed * 1000 + face,
            )
        )
    return plans


def check_flite() -> str:
    """The flite executable, or a `DemoCorpusError` saying how to install it."""
    path = shutil.which("flite")
    if path is None:
        raise DemoCorpusError(
            "the demo corpus needs Debian's `flite` speech synthesiser: `apt-get install flite` (scripts/install.sh "
            "does it)."
        )
    return path


def synthesize(plan: ClipPlan, flite: str = "flite") -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """flite speech of the clip's sentence (16 kHz float wave) and its phones as (phone, start s, end s)."""
    spoken = " ".join(SPOKEN_FORMS.get(word, word.lower()) for word in plan.words)
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "speech.wav")
        command = [flite, "-voice", plan.voice, "--setf", f"duration_stretch={plan.duration_stretch:.3f}",
                   "--setf", f"int_f0_target_mean={plan.pitch_mean:.1f}", "-psdur", "-t", spoken, "-o", wav_path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(wav_path):
            raise DemoCorpusError(f"flite failed for clip {plan.index} ({' '.join(command)}): {result.stderr.strip()}")
        wave, rate = sf.read(wav_path, dtype="float32")
    if rate != SAMPLING_RATE:
        raise DemoCorpusError(f"flite voice {plan.voice} wrote {rate} Hz audio; the demo corpus needs 16000 Hz voices.")
    return wave, _phone_segments(result.stdout, len(wave) / rate)


def _phone_segments(psdur: str, duration: float) -> list[tuple[str, float, float]]:
    """Parse `phone:end phone:end ...`; the end times are rescaled to the wave's duration (flite's diphone voices
    print times a few per cent longer than the audio they write)."""
    phones, ends = [], []
    for item in psdur.split():
        phone, _, end = item.rpartition(":")
        if phone:
            phones.append(phone)
            ends.append(float(end))
    if not phones:
        raise DemoCorpusError(f"flite printed no phone timings (got {psdur[:80]!r}).")
    scale = duration / ends[-1] if ends[-1] > 0 else 1.0
    starts = [0.0] + ends[:-1]
    return [(phone, start * scale, end * scale) for phone, start, end in zip(phones, starts, ends)]


def mouth_trajectory(phones: list[tuple[str, float, float]], num_frames: int) -> np.ndarray:
    """Mouth parameters (num_frames, 6) at the video frames' centres, blended across phones with dominance
    functions: weight_i(t) = dominance_i * exp(-(|t - centre_i| / width_i)^1.5), width = 60% of the phone (>= 25 ms)."""
    targets, centres, widths, dominance = [], [], [], []
    for phone, start, end in phones:
        shape = _VISEMES[_PHONE_VISEME.get(phone, "mid")]
        second = _DIPHTHONG_TARGETS.get(phone)
        pieces = [(shape, start, end)] if second is None else [
            (shape, start, (start + end) / 2), (_VISEMES[second], (start + end) / 2, end)]
        for values, piece_start, piece_end in pieces:
            targets.append(values[:6])
            dominance.append(values[6])
            centres.append((piece_start + piece_end) / 2)
            widths.append(max(0.6 * (piece_end - piece_start), 0.025))
    times = (np.arange(num_frames) + 0.5) / FPS
    distance = np.abs(times[:, None] - np.asarray(centres)[None]) / np.asarray(widths)[None]
    weights = np.asarray(dominance)[None] * np.exp(-(distance**1.5)) + 1e-9
    return weights @ np.asarray(targets) / weights.sum(axis=1, keepdims=True)


def _smooth_step(x: np.ndarray) -> np.ndarray:
    """A soft 0/1 edge (anti-aliased masks): 1 inside (x < -1), 0 outside (x > 1), a linear ramp between."""
    return np.clip(0.5 - 0.5 * x, 0.0, 1.0)


def render_mouth(trajectory: np.ndarray, appearance_seed: int, clip_seed: int) -> np.ndarray:
    """Draw the 96x96 mouth region for each row of `trajectory`: RGB uint8 frames (T, 96, 96, 3).

    The face (skin and lip colours, mouth size, position and tilt, lighting) comes from `appearance_seed`, so one
    speaker keeps one face; head jitter and sensor noise come from `clip_seed`."""
    face = np.random.default_rng(appearance_seed)
    tone = face.uniform(0, 1)  # from light to dark skin, with a little hue variation
    skin = (1 - tone) * np.array([235.0, 200.0, 175.0]) + tone * np.array([100.0, 65.0, 45.0])
    skin = skin * face.uniform(0.92, 1.08, size=3)
    lip = skin * face.uniform(0.55, 0.8) + np.array([35.0, 0.0, 5.0])
    mouth_width, lip_thickness = float(face.uniform(19, 25)), float(face.uniform(3.5, 6.0))
    centre_x, centre_y = 48.0 + float(face.uniform(-5, 5)), 52.0 + float(face.uniform(-5, 5))
    tilt = float(face.uniform(-0.12, 0.12))
    light_x, light_y = (float(value) for value in face.uniform(-0.35, 0.35, size=2))
    clip = np.random.default_rng(clip_seed)
    num_frames = len(trajectory)
    jitter = np.cumsum(clip.normal(0, 0.25, size=(num_frames, 2)), axis=0).clip(-3, 3).astype(np.float32)

    trajectory = np.asarray(trajectory, dtype=np.float32)
    opening, spread, closure, tuck, teeth, tongue = (trajectory[:, k, None, None] for k in range(6))
    grid_y, grid_x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    dx = grid_x[None] - (centre_x + jitter[:, 0])[:, None, None]
    dy = grid_y[None] - (centre_y + jitter[:, 1])[:, None, None]
    u = np.float32(np.cos(tilt)) * dx + np.float32(np.sin(tilt)) * dy  # along the mouth
    v = np.float32(-np.sin(tilt)) * dx + np.float32(np.cos(tilt)) * dy  # downwards

    half_width = mouth_width * (1.0 + 0.28 * spread)
    half_open = np.maximum(18.0 * opening * (1.0 - closure), 0.0)
    protrusion = np.maximum(-spread, 0.0)  # rounded lips push out and thicken
    upper = lip_thickness * (1.0 + 0.5 * protrusion)
    lower = lip_thickness * (1.2 + 0.5 * protrusion) * (1.0 - 0.35 * tuck)
    inner_up = np.maximum(0.55 * half_open, 0.05)
    inner_down = np.maximum(half_open - 2.0 * tuck, 0.05)  # the lower lip rises under the upper teeth for f/v

    # outer lip outline and inner opening: upper and lower half-ellipses
    above = v < 0
    lips = np.sqrt((u / (half_width + 2.0)) ** 2 + (v / np.where(above, inner_up + upper, inner_down + lower)) ** 2)
    lip_mask = _smooth_step((lips - 1.0) * (half_width + 2.0))
    cavity = np.sqrt((u / (half_width - 1.0)) ** 2 + (v / np.where(above, inner_up, inner_down)) ** 2)
    cavity_mask = _smooth_step((cavity - 1.0) * np.maximum(np.minimum(inner_up, inner_down), 1.0))
    # upper teeth at the top of the opening, tongue at its bottom, a dark line where closed lips meet
    teeth_mask = cavity_mask * _smooth_step(v + inner_up - 1.0 - 3.0 * teeth) * _smooth_step(
        np.abs(u) - 0.75 * half_width) * teeth
    tongue_mask = cavity_mask * _smooth_step(inner_down - 1.0 - 4.0 * tongue - v) * tongue
    crease = np.exp(-(v**2) / 1.5) * _smooth_step(np.abs(u) - half_width) * (1.0 - cavity_mask) * closure

    shade = 1.0 + light_x * (grid_x / ROI_SIZE - 0.5) + light_y * (grid_y / ROI_SIZE - 0.5)
    image = np.broadcast_to(shade[None, ..., None] * skin.astype(np.float32), (num_frames, ROI_SIZE, ROI_SIZE, 3))
    image = _blend(image, lip, lip_mask)
    image = _blend(image, lip * 0.55, crease)
    image = _blend(image, (35.0, 15.0, 20.0), cavity_mask)
    image = _blend(image, (235.0, 230.0, 215.0), teeth_mask)
    image = _blend(image, (190.0, 95.0, 100.0), tongue_mask)
    image += clip.standard_normal(size=image.shape, dtype=np.float32) * 3.0
    return np.clip(image, 0, 255).astype(np.uint8)


def _blend(image: np.ndarray, colour, mask: np.ndarray) -> np.ndarray:
    """Paint `colour` over `image` with opacity `mask` (T, H, W)."""
    mask = mask[..., None]
    return image * (1.0 - mask) + np.asarray(colour, dtype=np.float32) * mask


def make_clip(plan: ClipPlan, output_dir: Path, flite: str = "flite") -> tuple[str, int]:
    """Write one clip's mp4 and wav (unless both exist already); return (rel_path, num_frames)."""
    video_path = output_dir / DATASET_NAME / plan.rel_path
    wav_path = video_path.with_suffix(".wav")
    if video_path.is_file() and wav_path.is_file() and video_path.stat().st_size and wav_path.stat().st_size:
        return plan.rel_path, sf.info(str(wav_path)).frames // SAMPLES_PER_FRAME
    wave, phones = synthesize(plan, flite)
    num_frames = -(-len(wave) // SAMPLES_PER_FRAME)
    wave = np.pad(wave, (0, num_frames * SAMPLES_PER_FRAME - len(wave)))
    frames = render_mouth(mouth_trajectory(phones, num_frames), plan.appearance_seed, clip_seed=plan.index)
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
    voices: tuple[str, ...] = VOICES,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the demo corpus to `output_dir` (see the module docstring for the layout) and return the label file of
    each split. Deterministic in `seed`; clips already on disk are kept, so an interrupted run resumes."""
    from tqdm.auto import tqdm

    from .tokenization_mmavsr import MMAVSRTokenizer

    flite = check_flite()
    output_dir = Path(output_dir)
    plans = plan_corpus(num_clips, seed=seed, voices=tuple(voices), split_fractions=split_fractions)
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    num_workers = num_workers or os.cpu_count() or 1
    jobs = [(plan, output_dir, flite) for plan in plans]
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

    rows = {split: [] for split in SPLITS}
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
    (output_dir / "corpus.json").write_text(json.dumps(
        {"num_clips": num_clips, "seed": seed, "voices": list(voices), "split_fractions": list(split_fractions),
         "clips_per_split": {split: len(lines) for split, lines in rows.items()}, "vocabulary": GRID_WORDS},
        indent=2))
    return label_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mmavsr_processing.demo_corpus",
        description="Generate the demo corpus (GRID-style flite speech + rendered mouth videos) in auto_avsr's layout.",
    )
    parser.add_argument("--output-dir", required=True, help="where to write demo/ and labels/ (created if needed)")
    parser.add_argument("--num-clips", type=int, default=1000, help="number of clips (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus is a function of the seed (default 0)")
    parser.add_argument("--voices", nargs="+", default=list(VOICES), choices=VOICES, help="flite voices to use")
    parser.add_argument("--split-fractions", nargs=3, type=float, default=[0.8, 0.1, 0.1],
                        metavar=("TRAIN", "VAL", "TEST"), help="fractions of clips per split (default 0.8 0.1 0.1)")
    parser.add_argument("--num-workers", type=int, default=None, help="processes (default: one per CPU core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        label_files = generate_demo_corpus(args.output_dir, args.num_clips, seed=args.seed, voices=tuple(args.voices),
                                           split_fractions=tuple(args.split_fractions), num_workers=args.num_workers)
    except (DemoCorpusError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    for split, path in label_files.items():
        logger.info("%s: %d clips in %s", split, sum(1 for _ in path.open()), path)


if __name__ == "__main__":
    main()
