"""Recordings of any length: read in pieces, split into segments a model was trained on, transcripts joined again.

- [`Recording`]: a video and/or its sound, on disk or in memory, with its duration (read from the headers) and
  iterators over its sound (16 kHz blocks) and frames (25 fps blocks): nothing reads a whole file at once;
- [`SpeechDetector`]: silero-vad's model (shipped inside the `silero-vad` wheel; only torch needed) giving the speech
  regions of a sound read block by block; [`speech_segments`] cuts them into segments of at most `max_segment_s`,
  at pauses;
- [`fixed_windows`]: windows of fixed length overlapping on both sides, for recordings without sound;
- [`cut_ranges`]: the pieces `[start, stop)` of a stream of blocks, keeping only what a later piece still needs;
- [`overlap_start`]: where the transcript of a window stops repeating the end of the previous one, to join
  overlapping windows with no word lost or doubled.

The inference pipeline (`modeling_mmavsr.pipeline_mmavsr`) and `mmavsr-transcribe` use these; memory stays that of
one batch of segments whatever the recording's length.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .media_constants import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS
from .media_io import iter_audio_blocks, iter_video_frames, probe_media, resample_frames


__all__ = [
    "DEFAULT_MAX_SEGMENT_S",
    "DEFAULT_MIN_PAUSE_S",
    "DEFAULT_SPEECH_PAD_S",
    "Recording",
    "SpeechDetector",
    "cut_ranges",
    "fixed_windows",
    "overlap_start",
    "speech_segments",
]

# the longest segment a recording is cut into, and the shortest pause that ends a segment
DEFAULT_MAX_SEGMENT_S = 20.0
DEFAULT_MIN_PAUSE_S = 0.2
# the silence kept on each side of a speech region (silero's `speech_pad_ms`)
DEFAULT_SPEECH_PAD_S = 0.2
# silero-vad scores 512-sample windows at 16 kHz
VAD_WINDOW = 512
VAD_RATE = 16000
AUDIO_BLOCK_S = 30.0
VIDEO_BLOCK_FRAMES = 250


@dataclass
class Recording:
    """A recording to transcribe: `video` (a video file, or frames `(T, H, W[, C])` uint8 at 25 fps) and/or `audio`
    (a file whose sound is read, or a float32 wave at `sampling_rate`). `duration` is in seconds (the video's when
    there is one), `audio_duration` the sound's. Build it with [`Recording.from_file`] or directly from arrays."""

    name: str
    duration: float
    audio: str | np.ndarray | None = None
    video: str | np.ndarray | None = None
    sampling_rate: int = SAMPLING_RATE
    audio_duration: float | None = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE, video: bool = True, audio: bool = True
    ) -> Recording:
        """A media file's recording from its headers: its video stream (when `video` and the file has one) and its
        sound (when `audio` and the file has some).

        Raises:
            MediaError: the file is missing, empty or unreadable; the message names it.
        """
        info = probe_media(path)
        video_source = str(path) if video and info.fps is not None else None
        audio_source = str(path) if audio and info.audio_duration is not None else None
        duration = info.video_duration if video_source is not None else info.audio_duration
        audio_duration = info.audio_duration if audio_source is not None else None
        duration = float(duration or info.duration)
        return cls(str(path), duration, audio_source, video_source, sampling_rate, audio_duration)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_video(self) -> bool:
        return self.video is not None

    def audio_blocks(self, block_seconds: float = AUDIO_BLOCK_S) -> Iterator[np.ndarray]:
        """The sound as float32 mono blocks at `sampling_rate`, in order."""
        if self.audio is None:
            raise ValueError(f"{self.name}: the recording has no sound")
        if isinstance(self.audio, str):
            yield from iter_audio_blocks(self.audio, self.sampling_rate, block_seconds)
            return
        block = max(1, int(block_seconds * self.sampling_rate))
        for start in range(0, len(self.audio), block):
            yield self.audio[start : start + block]

    def video_blocks(self, block_frames: int = VIDEO_BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """The frames at 25 fps as uint8 blocks `(n, H, W[, C])`, in order."""
        if self.video is None:
            raise ValueError(f"{self.name}: the recording has no video")
        if isinstance(self.video, str):
            yield from iter_video_frames(self.video, VIDEO_FPS, block_frames)
            return
        for start in range(0, len(self.video), block_frames):
            yield self.video[start : start + block_frames]

    @staticmethod
    def frames_at_25_fps(frames: np.ndarray, fps: float, name: str) -> np.ndarray:
        """In-memory frames brought to 25 fps (`media_io.resample_frames`)."""
        return resample_frames(frames, fps, source=name)


def cut_ranges(blocks: Iterable[np.ndarray], ranges: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The items `[start, stop)` (along the first axis) of the stream made of `blocks`, for each range in order.

    Ranges must be sorted by start (they may overlap). Only the items from the current range's start on are held, so
    memory is that of the longest range plus a block. A range running past the stream's end gives what there is."""
    blocks = iter(blocks)
    held: list[np.ndarray] = []
    held_start = held_count = 0
    exhausted = False
    previous_start = 0
    for start, stop in ranges:
        if start < previous_start:
            raise ValueError(f"ranges must be sorted by start: {start} comes after {previous_start}")
        previous_start = start
        while not exhausted and held_start + held_count < stop:
            block = next(blocks, None)
            if block is None:
                exhausted = True
            elif len(block):
                held.append(block)
                held_count += len(block)
        data = held[0] if len(held) == 1 else (np.concatenate(held) if held else np.zeros(0, np.float32))
        offset = max(0, start - held_start)
        yield np.array(data[offset : max(offset, stop - held_start)])
        rest = data[offset:]
        held, held_start, held_count = ([np.array(rest)] if len(rest) else []), held_start + offset, len(rest)


def fixed_windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """`[start, stop)` windows of `window` items over `length` items, each overlapping the next by `2 * overlap`
    items (`overlap` on each side, as `stride_length_s` in Transformers' ASR pipeline), the last one ending at
    `length`."""
    if window <= 2 * overlap:
        raise ValueError(f"a window ({window}) must be longer than twice its overlap ({overlap})")
    step = window - 2 * overlap
    windows = []
    start = 0
    while True:
        stop = min(start + window, length)
        windows.append((start, stop))
        if stop >= length:
            return windows
        start += step


def overlap_start(previous: Sequence[int], new: Sequence[int]) -> int:
    """The index of the first token of `new` that is not a repeat of the end of `previous`: the transcripts of two
    windows that overlap in time are aligned (the last `n` tokens of `previous` against the first `n` of `new`), and
    the alignment with the largest share of equal tokens wins (at least two equal tokens; longer alignments win
    ties). 0 when none is found: nothing is dropped."""
    previous, new = np.asarray(previous), np.asarray(new)
    best, best_score = 0, 0.0
    for length in range(1, min(len(previous), len(new)) + 1):
        matches = int(np.count_nonzero(previous[len(previous) - length :] == new[:length]))
        score = matches / length + length / 10000  # the small bonus makes a longer perfect match win
        if matches >= 2 and score > best_score:
            best, best_score = length, score
    return best


@contextlib.contextmanager
def _torch_threads(count: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SpeechDetector:
    """Voice activity detection with silero-vad's model (`pip install silero-vad`; the model is inside the wheel).

    [`probabilities`] scores each 512-sample window (32 ms at 16 kHz) of a sound read block by block; the model runs
    on one thread, as silero advises (the caller's thread count is restored)."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import torch

            threads = torch.get_num_threads()
            try:
                from silero_vad import load_silero_vad
            except ImportError as error:
                raise ImportError(
                    f"segmenting at pauses needs silero-vad ({error}): pip install 'silero-vad>=6.2,<7', or pass "
                    "segmentation='windows'"
                ) from error
            finally:
                torch.set_num_threads(threads)  # importing silero_vad sets one thread for the whole process
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                warnings.filterwarnings("ignore", "path is deprecated", DeprecationWarning)  # silero's model path
                self._model = load_silero_vad()
        return self._model

    def probabilities(self, blocks: Iterable[np.ndarray], sampling_rate: int = VAD_RATE) -> np.ndarray:
        """Speech probability of each 512-sample window of the sound (the last window zero-padded)."""
        import torch

        if sampling_rate != VAD_RATE:
            raise ValueError(f"the speech detector reads {VAD_RATE} Hz sound, got {sampling_rate} Hz")
        model = self.model
        model.reset_states()
        scores = []
        carry = np.zeros(0, np.float32)
        with torch.inference_mode(), _torch_threads(1):
            for block in blocks:
                samples = np.concatenate([carry, np.asarray(block, np.float32)])
                whole = len(samples) // VAD_WINDOW * VAD_WINDOW
                for start in range(0, whole, VAD_WINDOW):
                    scores.append(model(torch.from_numpy(samples[start : start + VAD_WINDOW]), VAD_RATE).item())
                carry = samples[whole:]
            if len(carry):
                last = np.pad(carry, (0, VAD_WINDOW - len(carry)))
                scores.append(model(torch.from_numpy(last), VAD_RATE).item())
        return np.asarray(scores, dtype=np.float32)


def speech_segments(
    probabilities: np.ndarray,
    num_samples: int,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    min_pause_s: float = DEFAULT_MIN_PAUSE_S,
    threshold: float = 0.5,
    pad_s: float = DEFAULT_SPEECH_PAD_S,
    sampling_rate: int = VAD_RATE,
) -> list[tuple[int, int]]:
    """Speech regions `[start, stop)` in samples, from [`SpeechDetector.probabilities`]: split at pauses of at least
    `min_pause_s`, a region longer than `max_segment_s` split again at its longest pause (or, without one, just
    before `max_segment_s`), each padded by `pad_s` of the surrounding sound, bursts under 0.25 s left out (silero's
    `get_speech_timestamps_from_probs`)."""
    from silero_vad import get_speech_timestamps_from_probs

    stamps = get_speech_timestamps_from_probs(
        [float(p) for p in probabilities],
        sampling_rate=sampling_rate,
        threshold=threshold,
        max_speech_duration_s=max_segment_s,
        min_silence_duration_ms=int(round(1000 * min_pause_s)),
        speech_pad_ms=int(round(1000 * pad_s)),
        audio_length_samples=num_samples,
    )
    return [(int(stamp["start"]), min(int(stamp["end"]), num_samples)) for stamp in stamps]


def frame_aligned(ranges: Iterable[tuple[int, int]], num_frames: int) -> list[tuple[int, int]]:
    """Sample ranges widened to whole 25 fps frames (`SAMPLES_PER_FRAME` samples each): `[start, stop)` in frames,
    within `num_frames`, empty ranges left out."""
    aligned = []
    for start, stop in ranges:
        first = min(start // SAMPLES_PER_FRAME, num_frames)
        last = min(-(-stop // SAMPLES_PER_FRAME), num_frames)
        if last > first:
            aligned.append((first, last))
    return aligned
