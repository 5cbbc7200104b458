"""Reading, converting and writing the media of mmavsr: the one place where frames are read and brought to the
model's time base (`media_constants`: 25 fps video, 16 kHz audio, 640 samples per frame). The inference pipeline,
`prepare` and the training data path all read through these functions, so that a clip gives the same frames and
samples everywhere.

- reading: [`read_video`] (frames and frame rate, upright as the container's rotation says; with `target_fps`, brought
  to that rate by the frames' own timestamps, variable frame rates included), [`read_audio`] (a wav/flac file, or the
  audio track of a video container), [`read_audio_track`] (a video's audio track, converted), [`count_frames`];
- conversion: [`resample_frames`] (any frame rate, constant or variable, to 25 fps, by nearest timestamp: the one
  rule), [`resample_audio`], [`fit_audio_to_video`] (audio cut or zero-padded to the video's duration);
- writing: [`write_video`] (H.264 mp4, optionally with an AAC track), [`write_audio`] (16-bit wav).

Every failure on a file (missing, empty, corrupt, no video stream, wrong sampling rate, unexpected channel count)
raises [`MediaError`] with a message that names the path and the problem.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .media_constants import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS


__all__ = [
    "FRAME_RATE_TOLERANCE",
    "MediaError",
    "SAMPLES_PER_FRAME",
    "SAMPLING_RATE",
    "VIDEO_FPS",
    "VIDEO_SUFFIXES",
    "count_frames",
    "fit_audio_to_video",
    "open_container",
    "read_audio",
    "read_audio_track",
    "read_video",
    "resample_audio",
    "resample_frames",
    "same_frame_rate",
    "write_audio",
    "write_video",
]

# the relative difference of frame rates taken as the same rate (`same_frame_rate`)
FRAME_RATE_TOLERANCE = 0.01
# containers read with FFmpeg as videos (their sound as an audio track); other audio files are read with soundfile
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")


class MediaError(ValueError):
    """A media file is missing, empty, unreadable, or not in the expected format."""


def _check_readable(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty")
    return path


@contextlib.contextmanager
def open_container(source, describe: Callable[[Exception], str]) -> Iterator[av.container.InputContainer]:
    """`av.open(source)` (a path or a file object) for reading: FFmpeg's errors while opening it or decoding inside
    the block become a `MediaError` whose message is `describe(error)` (it names the file); a `MediaError` raised in
    the block passes as it is."""
    try:
        with av.open(source if hasattr(source, "read") else str(source)) as container:
            yield container
    except MediaError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, EOFError) as error:
        raise MediaError(describe(error)) from error


def _open_container(path: Path, what: str):
    """[`open_container`] with the readers' message: `PATH: cannot decode WHAT (why)`."""
    return open_container(path, lambda error: f"{path}: cannot decode {what} ({type(error).__name__}: {error})")


def same_frame_rate(fps: float, expected: float = VIDEO_FPS) -> bool:
    """Whether a video's `fps` is `expected` (25 by default) within `FRAME_RATE_TOLERANCE` (1%): the rule of the
    frame-rate checks (a 25 fps file whose header says 25.0004 passes, 24 or 30 fps must be resampled first)."""
    return abs(fps - expected) <= FRAME_RATE_TOLERANCE * expected


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def _check_audio_format(
    path: Path, file_rate: int, channels: int, sampling_rate: int, resample: bool, mono: bool
) -> None:
    """The rule of `read_audio` for a file's own rate and channels: convert only when asked to."""
    if channels > 1 and not mono:
        raise MediaError(f"{path}: audio has {channels} channels, expected mono (pass mono=True to average)")
    if file_rate != sampling_rate and not resample:
        raise MediaError(
            f"{path}: sampling rate is {file_rate} Hz, expected {sampling_rate} Hz (pass resample=True to convert)"
        )


def resample_audio(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D wave from `orig_rate` to `target_rate` Hz with a polyphase filter (float32 out)."""
    if orig_rate == target_rate:
        return np.asarray(wave, dtype=np.float32)
    divisor = np.gcd(int(orig_rate), int(target_rate))
    out = resample_poly(np.asarray(wave, dtype=np.float64), int(target_rate) // divisor, int(orig_rate) // divisor)
    return out.astype(np.float32)


def _read_video_torchcodec(path: Path) -> tuple[np.ndarray, float, np.ndarray] | None:
    """torchcodec's decoding (about 10x faster than PyAV frame by frame; it turns frames as the container's rotation
    says); None when torchcodec is missing or fails on the file, so that PyAV decodes it or names what is wrong."""
    try:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(str(path))
        batch = decoder.get_frames_in_range(0, len(decoder))
        frames, timestamps = batch.data, batch.pts_seconds.numpy()  # (T, 3, H, W) uint8, (T,)
        fps = decoder.metadata.average_fps
    except Exception:  # noqa: BLE001 - any failure: PyAV decodes the file again and reports the problem
        return None
    if len(frames) == 0 or not fps:
        return None
    return frames.permute(0, 2, 3, 1).numpy(), float(fps), np.asarray(timestamps, dtype=np.float64)


def _upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded frame turned as its container's display matrix says (`rotation`: degrees anticlockwise)."""
    quarters = int(round(rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, quarters)) if quarters else image


def _read_video_pyav(path: Path) -> tuple[np.ndarray, float, np.ndarray]:
    with _open_container(path, "video") as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        frames, timestamps = [], []
        for frame in container.decode(stream):
            frames.append(_upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0))
            timestamps.append(frame.time)
    if not frames:
        raise MediaError(f"{path}: video stream holds no decodable frame (truncated or corrupt file?)")
    fps = float(rate) if rate else 0.0
    if any(time is None for time in timestamps):
        timestamps = np.arange(len(frames)) / fps if fps else np.zeros(len(frames))
    return np.stack(frames), fps, np.asarray(timestamps, dtype=np.float64)  # (T, H, W, 3)


def read_video(path: str | os.PathLike, target_fps: float | None = None) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file, upright: a container's rotation (a phone's display matrix) is applied.

    Args:
        path: the video file.
        target_fps: if given, the frames are brought to this rate by [`resample_frames`] with their own timestamps,
            so that variable frame rates are resampled by the same nearest-timestamp rule; the returned rate is then
            `target_fps`.

    Returns:
        `(frames, fps)`: `frames` is uint8 `(T, H, W, 3)` RGB, `fps` the stream's average frame rate (or
        `target_fps`).

    Raises:
        MediaError: the file is missing, empty, not a decodable video, or holds no frame.
    """
    path = _check_readable(path)
    decoded = _read_video_torchcodec(path)
    frames, fps, timestamps = decoded if decoded is not None else _read_video_pyav(path)
    if target_fps is None:
        return frames, fps
    return resample_frames(frames, fps, target_fps, source=path, timestamps=timestamps), float(target_fps)


def read_audio(
    path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE, resample: bool = False, mono: bool = False
) -> np.ndarray:
    """Read an audio file, or the audio track of a video file, as a float32 mono wave in [-1, 1].

    Args:
        path: a wav/flac/ogg file (anything libsndfile reads), or a video container (`VIDEO_SUFFIXES`: .mp4, .mov,
            ...), whose first audio track is read (see [`read_audio_track`]).
        sampling_rate: the rate the caller expects.
        resample: if False (default), a file at another rate raises; if True it is resampled to `sampling_rate`.
        mono: if False (default), a multi-channel file raises; if True its channels are averaged.

    Returns:
        float32 `(S,)`.

    Raises:
        MediaError: missing, empty or unreadable file; a video without an audio track; wrong rate without
            `resample`; several channels without `mono`.
    """
    path = _check_readable(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        wave = read_audio_track(path, sampling_rate, resample=resample, mono=mono)
        if wave is None:
            raise MediaError(f"{path}: the video has no audio track")
        return wave
    try:
        wave, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise MediaError(f"{path}: cannot read audio ({error})") from error
    _check_audio_format(path, file_rate, wave.shape[1], sampling_rate, resample, mono)
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if file_rate != sampling_rate:
        wave = resample_audio(wave, file_rate, sampling_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def read_audio_track(
    path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE, resample: bool = True, mono: bool = True
) -> np.ndarray | None:
    """The first audio track of a video file as a float32 mono wave `(S,)` at `sampling_rate`, or None when the file
    has no audio stream (a silent video).

    By default the track is converted, as a video's sound (AAC at 44.1 or 48 kHz, often stereo) needs: FFmpeg's
    resampler brings it to `sampling_rate` and mixes its channels down. With `resample=False` / `mono=False` a track
    at another rate / with several channels raises instead, as [`read_audio`] does for audio files.

    Raises:
        MediaError: missing, empty, corrupt or truncated file, a track without a decodable sample, or a format
            refused by `resample` / `mono`; the message names the file.
    """
    path = _check_readable(path)
    with _open_container(path, "the audio track") as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        _check_audio_format(path, stream.rate, stream.channels, sampling_rate, resample, mono)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sampling_rate))
        pieces = []
        for frame in container.decode(stream):
            pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        pieces.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not pieces:
        raise MediaError(f"{path}: the audio track holds no decodable sample")
    return np.concatenate(pieces).astype(np.float32)


def count_frames(path: str | os.PathLike) -> int:
    """The number of frames of a video file: the container's count when its header gives one, else by decoding.

    Raises:
        MediaError: missing, empty or corrupt file, or no video stream; the message names the file.
    """
    path = _check_readable(path)
    with _open_container(path, "video") as container:
        stream = _video_stream(container, path)
        return stream.frames or sum(1 for _ in container.decode(stream))


def resample_frames(
    frames: np.ndarray,
    fps: float,
    target_fps: float = VIDEO_FPS,
    source: str | os.PathLike = "video",
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Frames `(T, ...)` at `fps` -> the frames at `target_fps` (25 by default), by nearest timestamp.

    This is the one frame-rate rule of mmavsr: the inference pipeline and `prepare` both call it. Source frame `i` is
    shown at `i / fps` seconds and output frame `k` stands for `k / target_fps` seconds; output frame `k` is the
    source frame nearest that time, index `floor(k * fps / target_fps + 1/2)` (a tie goes to the later frame),
    clamped to the last frame. The output spans the clip's duration, `T * target_fps / fps` frames rounded half up
    (at least one). Frames are repeated (slower sources) or dropped (faster ones), never blended. The nearest frame
    is never more than half a source frame away from its time, so the video stays aligned with the audio cut to
    `SAMPLES_PER_FRAME` samples per output frame (taking the latest frame shown instead lags by up to a whole
    source frame). Frames already at `target_fps` are returned as they are.

    A variable frame rate: with the frames' `timestamps` (seconds), source frame `i` is shown at `timestamps[i] -
    timestamps[0]` instead, and output frame `k` is the source frame whose time is nearest `k / target_fps` (a tie
    goes to the later frame); the clip lasts until its last frame's time plus one frame at the average rate `fps`.
    Timestamps within a quarter of a frame of `i / fps` are a constant rate, resampled by the formula.

    Args:
        frames: the decoded frames, first axis time.
        fps: their frame rate (the average rate, for a variable one).
        target_fps: the rate wanted.
        source: names the video in errors (e.g. its path).
        timestamps: each frame's presentation time in seconds, for videos whose frame rate may vary.

    Raises:
        MediaError: `fps` is unknown (0, None, not finite) or there is no frame; the message names `source`.
    """
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise MediaError(f"{source}: unknown frame rate ({fps!r}); cannot bring the video to {target_fps:g} fps")
    if len(frames) == 0:
        raise MediaError(f"{source}: the video has no frame")
    if timestamps is not None and len(timestamps) != len(frames):
        raise MediaError(f"{source}: {len(timestamps)} timestamps for {len(frames)} frames")
    times = None if timestamps is None else np.asarray(timestamps, dtype=np.float64) - timestamps[0]
    variable = times is not None and np.abs(times - np.arange(len(frames)) / fps).max() > 0.25 / fps
    if fps == target_fps and not variable:
        return frames
    count = max(1, math.floor(len(frames) * target_fps / fps + 0.5))
    if not variable:
        indices = np.floor(np.arange(count) * fps / target_fps + 0.5).astype(np.int64)
        return frames[np.minimum(indices, len(frames) - 1)]
    if np.any(np.diff(times) <= 0):
        raise MediaError(f"{source}: frame timestamps do not increase; cannot bring the video to {target_fps:g} fps")
    count = max(1, math.floor((times[-1] + 1 / fps) * target_fps + 0.5))  # the last frame lasts an average frame
    wanted = np.arange(count) / target_fps
    later = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)  # the first frame shown at or after each time
    earlier = later - 1
    indices = np.where(times[later] - wanted <= wanted - times[earlier], later, earlier)
    return frames[indices]


def fit_audio_to_video(
    wave: np.ndarray, num_frames: int, sampling_rate: int = SAMPLING_RATE, fps: float = VIDEO_FPS
) -> np.ndarray:
    """Cut or zero-pad a wave `(S,)` to the duration of `num_frames` video frames at `fps`:
    `round(num_frames * sampling_rate / fps)` samples, `SAMPLES_PER_FRAME` (640) a frame at 16 kHz and 25 fps, so that
    both streams span the same time."""
    target = int(round(num_frames * sampling_rate / fps))
    wave = np.asarray(wave)
    return np.pad(wave[:target], (0, max(0, target - len(wave))))


def write_audio(path: str | os.PathLike, wave: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> None:
    """Write a mono float wave in [-1, 1] as 16-bit PCM wav (values outside are clipped)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise MediaError(f"{path}: expected a mono wave of shape (S,), got shape {wave.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), int(sampling_rate), subtype="PCM_16", format="WAV")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = VIDEO_FPS,
    audio: np.ndarray | None = None,
    sampling_rate: int = SAMPLING_RATE,
    crf: int = 18,
) -> None:
    """Write uint8 frames `(T, H, W, 3)` (or grayscale `(T, H, W)` / `(T, H, W, 1)`) as H.264 mp4, with an AAC
    track when a mono float `audio` wave `(S,)` is given. Odd frame sizes are padded by one pixel (yuv420p). The same
    frames make the same bytes."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or len(frames) == 0:
        raise MediaError(f"{path}: expected frames of shape (T, H, W, 3) with T > 0, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(f"{path}: expected uint8 frames, got {frames.dtype}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        # without x264's macroblock tree (a lookahead that moves bits between frames): with it, the same frames gave
        # other bytes, and decoded pixels up to 30 levels apart, from one write to the next
        video.options = {"crf": str(crf), "x264-params": "mbtree=0"}
        sound = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise MediaError(f"{path}: expected a mono audio wave of shape (S,), got {audio.shape}")
            sound = container.add_stream("aac", rate=int(sampling_rate))
            sound.layout = "mono"
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            chunk = 1024
            for start in range(0, len(audio), chunk):
                piece = np.clip(audio[start : start + chunk], -1.0, 1.0)[None]  # (1, n) planar float
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
                frame.sample_rate = int(sampling_rate)
                frame.pts = start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
