"""Reading and writing mp4/wav files: round trips on real files and clear errors on bad ones; frame-rate conversion
to 25 fps (constant and variable rates), audio fitted to the video, audio tracks of videos, rotated containers."""

from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from mmavsr_processing import media_io
from mmavsr_processing.demo_mouth import mouth_trajectory, render_mouth
from mmavsr_processing.media_io import (
    MediaError,
    count_frames,
    fit_audio_to_video,
    iter_video_frames,
    read_audio,
    read_audio_track,
    read_video,
    resample_frames,
    write_audio,
    write_video,
)

from .common import write_rotated_copy


def _moving_square(num_frames=12, size=64):
    frames = np.full((num_frames, size, size, 3), 40, dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 10:30, 2 * t : 2 * t + 20] = 220
    return frames


def test_video_round_trip_keeps_frames_and_fps(tmp_path):
    frames = _moving_square()
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=25)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    # lossy codec, but close to the original on average
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4


@pytest.mark.smoke
def test_video_with_audio_track_is_h264_and_aac(tmp_path):
    import av

    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    path = tmp_path / "av.mp4"
    write_video(path, _moving_square(), fps=25, audio=wave, sampling_rate=16000)
    with av.open(str(path)) as container:
        codecs = {stream.type: stream.codec_context.name for stream in container.streams}
    assert codecs == {"video": "h264", "audio": "aac"}
    assert read_video(path)[0].shape[0] == 12


def test_the_same_frames_make_the_same_file(tmp_path):
    # a corpus is a function of its seed only if its encoder is: x264's macroblock tree gave other bytes (and pixels
    # up to 30 levels apart) for the same frames from one write to the next
    phones = [("pau", 0.0, 0.4), ("aa", 0.4, 1.0), ("m", 1.0, 1.2), ("iy", 1.2, 1.6), ("pau", 1.6, 2.0)]
    frames = render_mouth(mouth_trajectory(phones, num_frames=50), appearance_seed=0, clip_seed=0)
    written = []
    for attempt in range(4):
        write_video(tmp_path / f"{attempt}.mp4", frames, fps=25)
        written.append((tmp_path / f"{attempt}.mp4").read_bytes())
    assert all(data == written[0] for data in written[1:])


def test_grayscale_and_odd_sizes_are_written(tmp_path):
    path = tmp_path / "gray.mp4"
    write_video(path, np.full((4, 31, 33), 128, dtype=np.uint8), fps=30)
    decoded, fps = read_video(path)
    assert decoded.shape == (4, 32, 34, 3)
    assert fps == pytest.approx(30.0)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(MediaError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((3, 8, 8, 3), dtype=np.float32))
    with pytest.raises(MediaError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "f.mp4", np.zeros((3, 8, 8, 5), dtype=np.uint8))


@pytest.mark.smoke
def test_missing_empty_and_corrupt_video_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="missing.mp4: file not found"):
        read_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4: file is empty"):
        read_video(empty)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all " * 64)
    with pytest.raises(MediaError, match="garbage.mp4: cannot decode video"):
        read_video(garbage)


def test_truncated_video_names_the_file(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, _moving_square(), fps=25)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated.mp4"):
        read_video(truncated)


def test_audio_round_trip_is_16_bit_pcm(tmp_path):
    wave = (0.5 * np.sin(2 * np.pi * 220 * np.arange(4000) / 16000)).astype(np.float32)
    path = tmp_path / "a.wav"
    write_audio(path, wave)
    assert sf.info(str(path)).subtype == "PCM_16"
    back = read_audio(path)
    assert back.dtype == np.float32 and back.shape == wave.shape
    np.testing.assert_allclose(back, wave, atol=1 / 2**15 + 1e-6)


def test_wrong_rate_is_refused_or_resampled(tmp_path):
    wave = (0.5 * np.sin(2 * np.pi * 100 * np.arange(8000) / 8000)).astype(np.float32)
    path = tmp_path / "narrow.wav"
    write_audio(path, wave, sampling_rate=8000)
    with pytest.raises(MediaError, match=r"narrow.wav: sampling rate is 8000 Hz, expected 16000 Hz"):
        read_audio(path)
    upsampled = read_audio(path, resample=True)
    assert upsampled.shape == (16000,)
    # a 100 Hz tone stays a 100 Hz tone
    spectrum = np.abs(np.fft.rfft(upsampled))
    assert np.argmax(spectrum) == 100


def test_stereo_is_refused_or_averaged(tmp_path):
    path = tmp_path / "stereo.wav"
    left = np.full(1600, 0.5, dtype=np.float32)
    sf.write(str(path), np.stack([left, -0.25 * np.ones(1600, np.float32)], axis=1), 16000, subtype="PCM_16")
    with pytest.raises(MediaError, match="stereo.wav: audio has 2 channels"):
        read_audio(path)
    np.testing.assert_allclose(read_audio(path, mono=True), 0.125, atol=1e-4)


def test_missing_and_corrupt_wav_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="nowhere.wav: file not found"):
        read_audio(tmp_path / "nowhere.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk" * 10)
    with pytest.raises(MediaError, match="bad.wav: cannot read audio"):
        read_audio(bad)


def _nearest_by_search(num_frames: int, fps: float) -> list[int]:
    """The source frame nearest each 25 fps timestamp, found by comparing every timestamp (ties: the later frame)."""
    count = int(np.floor(num_frames / fps * 25 + 0.5))
    times = np.arange(num_frames) / fps
    picks = []
    for k in range(count):
        distance = np.abs(times - k / 25)
        picks.append(int(np.flatnonzero(distance <= distance.min() + 1e-9)[-1]))
    return picks


@pytest.mark.parametrize("fps", [12.5, 20, 24, 29.97, 30, 37.5, 48, 50, 59.94, 60])
def test_frames_are_picked_by_nearest_timestamp(fps):
    frames = np.arange(90)
    assert resample_frames(frames, fps).tolist() == _nearest_by_search(len(frames), fps)


def test_frame_rate_conversion_examples_and_errors():
    frames = np.arange(10)[:, None, None].repeat(4, 1).repeat(4, 2).astype(np.uint8)
    assert resample_frames(frames, 50.0)[:, 0, 0].tolist() == [0, 2, 4, 6, 8]
    # 0.5 s at 20 fps: 12.5 frames at 25 fps, rounded half up; each the nearest, the last one clamped
    assert resample_frames(frames, 20.0)[:, 0, 0].tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7, 8, 9, 9]
    assert resample_frames(np.arange(30), 30.0).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17] + [
        18,
        19,
        20,
        22,
        23,
        24,
        25,
        26,
        28,
        29,
    ]
    assert resample_frames(frames, 25.0) is frames
    assert resample_frames(frames, 30.0, target_fps=15.0)[:, 0, 0].tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(MediaError, match="clip.mp4: unknown frame rate"):
        resample_frames(frames, 0.0, source="clip.mp4")
    with pytest.raises(MediaError, match="clip.mp4: the video has no frame"):
        resample_frames(frames[:0], 30.0, source="clip.mp4")


def test_audio_is_cut_or_padded_to_640_samples_per_frame():
    wave = np.linspace(-1, 1, 1000, dtype=np.float32)
    padded = fit_audio_to_video(wave, 2)
    assert padded.dtype == np.float32 and len(padded) == 1280
    np.testing.assert_array_equal(padded[:1000], wave)
    assert not padded[1000:].any()
    np.testing.assert_array_equal(fit_audio_to_video(wave, 1), wave[:640])
    assert len(fit_audio_to_video(wave, 3, sampling_rate=8000, fps=30)) == 800  # other rates: the same duration


def test_one_second_at_30_fps_becomes_25_frames_and_16000_samples(tmp_path):
    path = tmp_path / "clip.mp4"
    rate = 44100
    sound = (0.3 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)).astype(np.float32)
    write_video(path, _moving_square(num_frames=30), fps=30, audio=sound, sampling_rate=rate)
    frames, fps = read_video(path)
    assert fps == pytest.approx(30) and count_frames(path) == 30
    frames = resample_frames(frames, fps, source=path)
    track = read_audio_track(path)  # converted to 16 kHz mono
    assert len(frames) == 25 and abs(len(track) - 16000) < 2048  # AAC adds priming samples
    assert len(fit_audio_to_video(track, len(frames))) == 16000


@pytest.mark.smoke
def test_audio_track_of_a_video_follows_read_audios_rules(tmp_path):
    rate = 44100
    sound = (0.3 * np.sin(2 * np.pi * 300 * np.arange(rate // 2) / rate)).astype(np.float32)
    path, silent = tmp_path / "talk.mp4", tmp_path / "silent.mp4"
    write_video(path, _moving_square(), audio=sound, sampling_rate=rate)
    write_video(silent, _moving_square())
    with pytest.raises(MediaError, match=r"talk.mp4: sampling rate is 44100 Hz, expected 16000 Hz"):
        read_audio(path)  # a video's sound is audio at its own rate, refused unless resampled
    wave = read_audio(path, resample=True)
    np.testing.assert_array_equal(wave, read_audio_track(path))
    assert abs(len(wave) - 8000) < 2048 and 0.2 < np.abs(wave).max() < 0.4
    assert read_audio_track(silent) is None
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all " * 64)
    for read, path, message in [
        (lambda path: read_audio(path, resample=True), silent, "silent.mp4: the video has no audio track"),
        (read_audio_track, tmp_path / "gone.mp4", "gone.mp4: file not found"),
        (read_audio_track, garbage, "garbage.mp4: cannot decode the audio track"),
        (count_frames, garbage, "garbage.mp4: cannot decode video"),
    ]:
        with pytest.raises(MediaError, match=message):
            read(path)


def test_training_data_path_reads_the_sound_of_an_mp4(tmp_path):
    """Raw LRS3 rows name the mp4 as their audio: the collator's reader takes its track through `read_audio`, under
    the feature extractor's `resample` flag."""
    from mmavsr_processing import MMAVSRProcessor
    from mmavsr_processing.collation import read_clip

    rate = 44100
    sound = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(0.48 * rate)) / rate)).astype(np.float32)
    path = tmp_path / "50001.mp4"
    write_video(path, _moving_square(), audio=sound, sampling_rate=rate)
    row = {"video": {"path": str(path), "bytes": None}, "audio": {"path": str(path), "bytes": None}, "text": "SO"}
    processor = MMAVSRProcessor.from_auto_avsr()
    with pytest.raises(MediaError, match=r"50001.mp4: sampling rate is 44100 Hz, expected 16000 Hz"):
        read_clip(row, processor)
    clip = read_clip(row, MMAVSRProcessor.from_auto_avsr(resample=True))
    assert tuple(clip["video"].shape) == (12, 3, 64, 64)
    assert abs(len(clip["audio"]) - 12 * 640) < 2048 and 0.2 < np.abs(clip["audio"]).max() < 0.4


def _write_variable_rate(path, milliseconds):
    """An mp4 whose frame i is uniformly grey at level 20 * i, shown at `milliseconds[i]` (a variable frame rate)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index, time in enumerate(milliseconds):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("decoder", ["torchcodec", "pyav"])
def test_a_variable_frame_rate_is_resampled_by_the_frames_own_timestamps(tmp_path, monkeypatch, decoder):
    if decoder == "pyav":
        monkeypatch.setattr(media_io, "_read_video_torchcodec", lambda path: None)
    path = tmp_path / "variable.mp4"
    _write_variable_rate(path, [0, 30, 45, 100, 170, 180, 190, 260, 330, 400])
    frames, fps = read_video(path, target_fps=25)
    # 25 fps times 0, 40, 80, ... 400 ms: the frame shown nearest each; the clip lasts 400 ms + one average frame
    assert fps == 25
    assert [round(level / 20) for level in frames[..., 0].mean((1, 2))] == [0, 2, 3, 3, 4, 6, 7, 7, 8, 8, 9]
    # taken for a constant rate, the same frames would be kept in order, one per 25 fps frame
    as_constant, _ = read_video(path)
    assert [round(level / 20) for level in resample_frames(as_constant, 25.0)[..., 0].mean((1, 2))] == list(range(10))
    # read in pieces for a long recording: the same frames, by the same timestamps
    streamed = np.concatenate(list(iter_video_frames(path, block_frames=4)))
    np.testing.assert_array_equal(streamed, frames)


def test_timestamps_that_do_not_fit_are_refused():
    frames = np.zeros((3, 2, 2, 3), np.uint8)
    with pytest.raises(MediaError, match="clip.mp4: 2 timestamps for 3 frames"):
        resample_frames(frames, 25.0, source="clip.mp4", timestamps=[0.0, 0.04])
    with pytest.raises(MediaError, match="clip.mp4: frame timestamps do not increase"):
        resample_frames(frames, 25.0, source="clip.mp4", timestamps=[0.0, 0.2, 0.1])
    # a constant rate given as timestamps: the formula's frames
    assert (
        resample_frames(np.arange(30), 30.0, timestamps=np.arange(30) / 30).tolist()
        == resample_frames(np.arange(30), 30.0).tolist()
    )


@pytest.mark.parametrize("decoder", ["torchcodec", "pyav"])
def test_the_containers_rotation_is_applied(tmp_path, monkeypatch, decoder):
    if decoder == "pyav":
        monkeypatch.setattr(media_io, "_read_video_torchcodec", lambda path: None)
    upright = np.zeros((3, 48, 64, 3), np.uint8)
    upright[:, :8, :16] = 255  # a white patch in the top-left corner of a landscape frame
    write_video(tmp_path / "stored.mp4", np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2))))
    # as a phone stores it: the frames as recorded, and a display matrix that turns them
    write_rotated_copy(tmp_path / "stored.mp4", tmp_path / "rotated.mp4")
    frames, _ = read_video(tmp_path / "rotated.mp4")
    assert frames.shape == (3, 48, 64, 3)
    assert frames[:, :8, :16].mean() > 200 and frames[:, -8:, -16:].mean() < 50
    np.testing.assert_array_equal(np.concatenate(list(iter_video_frames(tmp_path / "rotated.mp4"))), frames)
