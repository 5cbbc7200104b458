"""Reading, converting and writing the media of mmavsr: the one place where frames are read and brought to the
model's time base (`media_constants`: 25 fps video, 16 kHz audio, 640 samples per frame). The inference pipeline,
`prepare` and the training data path all read through these functions, so that a clip gives the same frames and
samples everywhere.

- reading: [`read_video`] (frames and frame rate, upright as the container's rotation says; with `target_fps`, brought
  to that rate by the frames' own timestamps, variable frame rates included), [`read_audio`] (a wav/flac file, or the
  audio track of a video container), [`read_audio_track`] (a video's audio track, converted), [`count_frames`];
- reading in pieces, for recordings of any length: [`probe_media`] (durations and streams, nothing decoded),
  [`iter_audio_blocks`] (the sound, converted, block by block), [`iter_video_frames`] (the frames at 25 fps, block by
  block, by the rule of `resample_frames`);
- checking: [`probe_video`] / [`probe_audio`] (a path, an undecoded `datasets` column or bytes: the header and the
  first frame or samples; what `media_check` runs on every clip before training);
- conversion: [`resample_frames`] (any frame rate, constant or variable, to 25 fps, by nearest timestamp: the one
  rule), [`resample_audio`], [`fit_audio_to_video`] (audio cut or zero-padded to the video's duration);
- writing: [`write_video`] (H.264 mp4, optionally with an AAC track), [`write_audio`] (16-bit wav).

Every failure on a file (missing, empty, corrupt, no video stream, wrong sampling rate, unexpected channel count)
raises [`MediaError`] with a message that names the path and the problem.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

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
    "MediaInfo",
    "fit_audio_to_video",
    "iter_audio_blocks",
    "iter_video_frames",
    "open_container",
    "probe_media",
    "read_audio",
    "read_audio_track",
    "read_video",
    "resample_audio",
    "resample_frames",
    "resampled_indices",
    "same_frame_rate",
    "read_audio_can_read",
    "probe_audio",
    "probe_video",
    "write_audio",
    "write_video",
]

# the relative difference of frame rates taken as the same rate (`same_frame_rate`)
FRAME_RATE_TOLERANCE = 0.01
# containers read with FFmpeg as videos (their sound as an audio track); other audio files are read with soundfile
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
# the samples read from the start of an audio file (0.1 s at 16 kHz): a header that promises samples it lacks fails
AUDIO_PROBE_SAMPLES = 1600
# suffixes read with soundfile (libsndfile); other audio (an mp4's track, m4a, mp3) is read with PyAV
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".w64"}


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


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, read from its headers (nothing decoded): durations in seconds, None for a stream
    the file does not have."""

    path: str
    duration: float
    video_duration: float | None = None
    fps: float | None = None
    audio_duration: float | None = None


def _stream_seconds(stream) -> float | None:
    if stream is None or not stream.duration or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _soundfile_info(path: Path):
    """soundfile's header of an audio file, or None when libsndfile does not read the format (FFmpeg then does)."""
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def read_audio_can_read(path: str | os.PathLike) -> bool:
    """Whether [`read_audio`] reads the file: libsndfile knows its format, or it is a video container (FFmpeg).
    Other containers (mp3 on old libsndfile, m4a, opus in webm, ...) are read by [`iter_audio_blocks`]."""
    path = Path(path)
    return path.suffix.lower() in VIDEO_SUFFIXES or (path.is_file() and _soundfile_info(path) is not None)


def probe_media(path: str | os.PathLike) -> MediaInfo:
    """The streams and durations of an audio or video file, from its headers.

    Raises:
        MediaError: missing, empty or unreadable file, or one with neither sound nor video; the message names it.
    """
    path = _check_readable(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        info = _soundfile_info(path)
        if info is not None:
            seconds = info.frames / info.samplerate
            return MediaInfo(str(path), seconds, audio_duration=seconds)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        opened = _open_container(path, "video")
    else:  # an audio file libsndfile does not read: FFmpeg's turn, worded as `read_audio` words it
        opened = open_container(path, lambda error: f"{path}: cannot read audio ({type(error).__name__}: {error})")
    with opened as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError(f"{path}: no audio or video stream")
        whole = container.duration / av.time_base if container.duration else None
        fps = video_seconds = None
        if video is not None:
            rate = video.average_rate or video.base_rate or video.guessed_rate
            fps = float(rate) if rate else 0.0
            video_seconds = video.frames / fps if video.frames and fps else _stream_seconds(video) or whole
        audio_seconds = (_stream_seconds(audio) or whole) if audio is not None else None
    seconds = [s for s in (video_seconds, audio_seconds, whole) if s]
    if not seconds:
        raise MediaError(f"{path}: the file does not say how long it lasts")
    return MediaInfo(str(path), max(seconds), video_seconds, fps, audio_seconds)


def _source(item: Any) -> tuple[str, Any]:
    """`(name for messages, what to open)` of a path, a `{"path", "bytes"}` dict (an undecoded `datasets` column)
    or raw bytes."""
    if isinstance(item, dict):
        path, data = item.get("path"), item.get("bytes")
        if data is not None:
            return str(path or "<embedded bytes>"), io.BytesIO(data)
        item = path
    if isinstance(item, (bytes, bytearray)):
        return "<embedded bytes>", io.BytesIO(item)
    if not isinstance(item, (str, os.PathLike)):
        raise MediaError(f"{item!r}: not a media file path (got {type(item).__name__})")
    path = Path(item)
    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty")
    return str(path), str(path)


def _corrupt(kind: str, name: str) -> Callable[[Exception], str]:
    return lambda error: f"{kind} {name} is corrupt ({type(error).__name__}: {error})"


def probe_video(item: Any, need_audio: bool = False) -> dict:
    """Opens a video (path, `{"path", "bytes"}` or bytes), reads its header and decodes its first frame; with
    `need_audio`, it must also hold an audio stream. Returns `{"fps", "frames"}` (frames 0 when the header does not
    say). Raises a `MediaError` starting `video PATH` and saying what is wrong."""
    name, source = _source(item)
    with open_container(source, _corrupt("video", name)) as container:
        if not container.streams.video:
            raise MediaError(f"video {name} has no video stream")
        if need_audio and not container.streams.audio:
            raise MediaError(f"video {name} has no audio stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        if next(container.decode(video=0), None) is None:
            raise MediaError(f"video {name} holds no decodable frame")
        # read while the container is open: PyAV >= 18.1.1 refuses any read of a stream of a closed container
        return {"fps": float(rate) if rate else 0.0, "frames": int(stream.frames or 0)}


def probe_audio(item: Any) -> dict:
    """Opens an audio file (path, `{"path", "bytes"}` or bytes; a wav/flac with soundfile, another container's audio
    track with PyAV), reads its header and its first samples. Returns `{"rate", "channels", "samples"}` (samples 0
    when a container's header does not say). Raises a `MediaError` starting `audio PATH` and saying what is wrong."""
    name, source = _source(item)
    if isinstance(source, io.BytesIO) or Path(name).suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            with sf.SoundFile(source) as handle:
                first = handle.read(AUDIO_PROBE_SAMPLES, dtype="float32")
                info = {"rate": handle.samplerate, "channels": handle.channels, "samples": handle.frames}
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            if not isinstance(source, io.BytesIO):
                raise MediaError(f"audio {name} is corrupt ({error})") from None
            source.seek(0)  # embedded bytes of a format libsndfile does not read: PyAV below
        else:
            if info["samples"] == 0 or len(first) == 0:
                raise MediaError(f"audio {name} holds no sample")
            return info
    with open_container(source, _corrupt("audio", name)) as container:
        if not container.streams.audio:
            raise MediaError(f"audio {name} has no audio stream")
        stream = container.streams.audio[0]
        if next(container.decode(audio=0), None) is None:
            raise MediaError(f"audio {name} holds no decodable sample")
        samples = int(stream.duration * stream.time_base * stream.rate) if stream.duration else 0
        return {"rate": stream.rate, "channels": stream.channels, "samples": samples}


def iter_audio_blocks(
    path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """The sound of an audio or video file as float32 mono blocks of `block_seconds` (the last one shorter) at
    `sampling_rate`: channels averaged (soundfile) or mixed down and resampled (FFmpeg), read piece by piece.

    Raises:
        MediaError: missing, empty or unreadable file, or no sound; the message names it.
    """
    path = _check_readable(path)
    block = max(1, int(round(block_seconds * sampling_rate)))
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        info = _soundfile_info(path)
        if info is not None and info.samplerate == sampling_rate:
            try:
                for piece in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
                    yield np.ascontiguousarray(piece.mean(axis=1) if piece.shape[1] > 1 else piece[:, 0])
            except (sf.LibsndfileError, RuntimeError) as error:
                raise MediaError(f"{path}: cannot read audio ({error})") from error
            return
    pieces, held = [], 0
    with _open_container(path, "the audio") as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: the file has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sampling_rate))
        frames = container.decode(container.streams.audio[0])
        for frame in itertools.chain(frames, [None]):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
                held += len(pieces[-1])
            while held >= block or (frame is None and held):
                data = np.concatenate(pieces).astype(np.float32)
                yield data[:block]
                pieces, held = [data[block:]], len(data) - min(block, len(data))


def iter_video_frames(
    path: str | os.PathLike, target_fps: float = VIDEO_FPS, block_frames: int = 250
) -> Iterator[np.ndarray]:
    """The frames of a video file brought to `target_fps` by [`resample_frames`]' rule, with the frames' own
    timestamps (variable frame rates included), upright as the container's rotation says, as uint8 RGB blocks
    `(n, H, W, 3)` of at most `block_frames`, decoded frame by frame: what `read_video(path, target_fps)` gives, never
    all in memory. The timestamps are read first from the packets (nothing decoded), then the frames.

    Raises:
        MediaError: missing, empty or corrupt file, no video stream, unknown frame rate, no frame; names the file.
    """
    path = _check_readable(path)
    with _open_container(path, "video") as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        base = stream.time_base
        # presentation times of the frames, in presentation order (packets come in decoding order)
        stamps = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None)
    if not stamps:
        raise MediaError(f"{path}: video stream holds no decodable frame (truncated or corrupt file?)")
    times = np.asarray([float(stamp * base) for stamp in stamps]) if base is not None else None
    indices = resampled_indices(len(stamps), fps, target_fps, path, times)
    with _open_container(path, "video") as container:
        stream = _video_stream(container, path)
        pending: list[np.ndarray] = []
        position = decoded = 0  # the next output frame; frames decoded so far
        image = None
        for frame in container.decode(stream):
            image = _upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0)
            if indices is None:
                pending.append(image)
            else:  # the output frames whose source is this frame (none when dropped, several when repeated)
                while position < len(indices) and indices[position] <= decoded:
                    pending.append(image)
                    position += 1
            decoded += 1
            if len(pending) >= block_frames:
                yield np.stack(pending[:block_frames])
                pending = pending[block_frames:]
    if image is None:
        raise MediaError(f"{path}: video stream holds no decodable frame (truncated or corrupt file?)")
    if indices is not None:
        pending.extend([image] * (len(indices) - position))  # fewer frames decoded than packets: the last repeated
    for start in range(0, len(pending), block_frames):
        yield np.stack(pending[start : start + block_frames])


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
    if len(frames) == 0:
        raise MediaError(f"{source}: the video has no frame")
    if timestamps is not None and len(timestamps) != len(frames):
        raise MediaError(f"{source}: {len(timestamps)} timestamps for {len(frames)} frames")
    indices = resampled_indices(len(frames), fps, target_fps, source, timestamps)
    return frames if indices is None else frames[indices]


def resampled_indices(
    num_frames: int,
    fps: float,
    target_fps: float = VIDEO_FPS,
    source: str | os.PathLike = "video",
    timestamps: np.ndarray | None = None,
) -> np.ndarray | None:
    """The source frame of each output frame by [`resample_frames`]' rule, int64 `(count,)`, or None when the frames
    are already at `target_fps` (nothing to do): what `resample_frames` and the streaming [`iter_video_frames`]
    share, from the frames' count, average rate and (optional) timestamps alone."""
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise MediaError(f"{source}: unknown frame rate ({fps!r}); cannot bring the video to {target_fps:g} fps")
    times = None if timestamps is None else np.asarray(timestamps, dtype=np.float64) - timestamps[0]
    variable = times is not None and np.abs(times - np.arange(num_frames) / fps).max() > 0.25 / fps
    if fps == target_fps and not variable:
        return None
    if not variable:
        count = resampled_frame_count(num_frames, fps, target_fps)
        return np.minimum(nearest_source_frames(0, count, fps, target_fps), num_frames - 1)
    if np.any(np.diff(times) <= 0):
        raise MediaError(f"{source}: frame timestamps do not increase; cannot bring the video to {target_fps:g} fps")
    count = max(1, math.floor((times[-1] + 1 / fps) * target_fps + 0.5))  # the last frame lasts an average frame
    wanted = np.arange(count) / target_fps
    later = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)  # the first frame shown at or after each time
    earlier = later - 1
    return np.minimum(np.where(times[later] - wanted <= wanted - times[earlier], later, earlier), num_frames - 1)


def resampled_frame_count(num_frames: int, fps: float, target_fps: float = VIDEO_FPS) -> int:
    """How many frames `num_frames` at `fps` give at `target_fps` (`resample_frames`' rule: rounded half up, >= 1)."""
    return max(1, math.floor(num_frames * target_fps / fps + 0.5))


def nearest_source_frames(start: int, stop: int, fps: float, target_fps: float = VIDEO_FPS) -> np.ndarray:
    """The source frame index of output frames `start..stop-1` (`resample_frames`' rule, before clamping to the last
    source frame): `floor(k * fps / target_fps + 1/2)`."""
    return np.floor(np.arange(start, stop) * fps / target_fps + 0.5).astype(np.int64)


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
