"""Reading and writing the media files of the auto_avsr layout: mp4 video (PyAV) and 16 kHz wav audio (soundfile).

Every failure on a file (missing, empty, corrupt, wrong sampling rate, unexpected channel count) raises
[`MediaError`] with a message that names the path and the problem.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


__all__ = ["MediaError", "read_video", "read_audio", "write_video", "write_audio", "resample_audio"]


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


def resample_audio(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D wave from `orig_rate` to `target_rate` Hz with a polyphase filter (float32 out)."""
    if orig_rate == target_rate:
        return np.asarray(wave, dtype=np.float32)
    divisor = np.gcd(int(orig_rate), int(target_rate))
    out = resample_poly(np.asarray(wave, dtype=np.float64), int(target_rate) // divisor, int(orig_rate) // divisor)
    return out.astype(np.float32)


def _read_video_torchcodec(path: Path) -> tuple[np.ndarray, float] | None:
    """torchcodec's decoding (about 10x faster than PyAV frame by frame); None when torchcodec is missing or fails on
    the file, so that PyAV decodes it or names what is wrong."""
    try:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(str(path))
        frames = decoder.get_frames_in_range(0, len(decoder)).data  # (T, 3, H, W) uint8
        fps = decoder.metadata.average_fps
    except Exception:  # noqa: BLE001 - any failure: PyAV decodes the file again and reports the problem
        return None
    if len(frames) == 0 or not fps:
        return None
    return frames.permute(0, 2, 3, 1).numpy(), float(fps)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file.

    Returns:
        `(frames, fps)`: `frames` is uint8 `(T, H, W, 3)` RGB, `fps` the stream's average frame rate.

    Raises:
        MediaError: the file is missing, empty, not a decodable video, or holds no frame.
    """
    path = _check_readable(path)
    decoded = _read_video_torchcodec(path)
    if decoded is not None:
        return decoded
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except MediaError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise MediaError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error
    if not frames:
        raise MediaError(f"{path}: video stream holds no decodable frame (truncated or corrupt file?)")
    fps = float(rate) if rate else 0.0
    return np.stack(frames), fps  # (T, H, W, 3)


def read_audio(
    path: str | os.PathLike, sampling_rate: int = 16000, resample: bool = False, mono: bool = False
) -> np.ndarray:
    """Read an audio file as a float32 mono wave in [-1, 1].

    Args:
        path: a wav/flac/ogg file (anything libsndfile reads).
        sampling_rate: the rate the caller expects.
        resample: if False (default), a file at another rate raises; if True it is resampled to `sampling_rate`.
        mono: if False (default), a multi-channel file raises; if True its channels are averaged.

    Returns:
        float32 `(S,)`.

    Raises:
        MediaError: missing, empty or unreadable file; wrong rate without `resample`; several channels without `mono`.
    """
    path = _check_readable(path)
    try:
        wave, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise MediaError(f"{path}: cannot read audio ({error})") from error
    if wave.shape[1] > 1:
        if not mono:
            raise MediaError(f"{path}: audio has {wave.shape[1]} channels, expected mono (pass mono=True to average)")
        wave = wave.mean(axis=1, keepdims=True)
    wave = wave[:, 0]
    if file_rate != sampling_rate:
        if not resample:
            raise MediaError(
                f"{path}: sampling rate is {file_rate} Hz, expected {sampling_rate} Hz (pass resample=True to convert)"
            )
        wave = resample_audio(wave, file_rate, sampling_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def write_audio(path: str | os.PathLike, wave: np.ndarray, sampling_rate: int = 16000) -> None:
    """Write a mono float wave in [-1, 1] as 16-bit PCM wav (values outside are clipped)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise MediaError(f"{path}: expected a mono wave of shape (S,), got shape {wave.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), int(sampling_rate), subtype="PCM_16", format="WAV")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25,
    audio: np.ndarray | None = None,
    sampling_rate: int = 16000,
    crf: int = 18,
) -> None:
    """Write uint8 frames `(T, H, W, 3)` (or grayscale `(T, H, W)` / `(T, H, W, 1)`) as H.264 mp4, with an AAC
    track when a mono float `audio` wave `(S,)` is given. Odd frame sizes are padded by one pixel (yuv420p)."""
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
        video.options = {"crf": str(crf)}
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
