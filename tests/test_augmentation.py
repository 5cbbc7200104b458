"""Time masking, additive noise (exact SNRs, babble, seeding, clean passthrough, bad noise files) and clip boundaries
moved the same in audio and video."""

import numpy as np
import pytest
import torch

from mmavsr_processing.augmentation import (
    CLEAN_SNR,
    AddNoise,
    BoundaryJitter,
    TimeMask,
    make_babble,
    snr_db,
    training_augmentations,
)
from mmavsr_processing.media_io import MediaError, write_audio


def _speech(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (envelope * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))).astype(np.float32)


def _zeroed_runs(mask):
    """Lengths of the runs of True in a 1-D boolean array."""
    runs, current = [], 0
    for value in mask:
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


def test_video_time_mask_scales_with_length_and_keeps_type():
    video = torch.ones(100, 1, 8, 8)
    masked = TimeMask.for_video(seed=0)(video)
    assert isinstance(masked, torch.Tensor) and masked.shape == video.shape
    assert torch.all(video == 1), "the input is not modified"
    zero_frames = (masked.flatten(1) == 0).all(1)
    assert 0 < zero_frames.sum() <= 4 * 9  # 4 masks of at most 9 frames for 100 frames (4 s)
    assert all(run <= 4 * 9 for run in _zeroed_runs(zero_frames.numpy()))
    # frames are masked whole, never partly
    assert torch.all((masked.flatten(1) == 0).all(1) | (masked.flatten(1) == 1).all(1))


def test_audio_time_mask_counts_and_seeding():
    wave = np.ones(48000, dtype=np.float32)  # 3 s -> 3 masks of < 6400 samples
    first, second = TimeMask.for_audio(seed=3)(wave), TimeMask.for_audio(seed=3)(wave)
    np.testing.assert_array_equal(first, second)
    zeros = int((first == 0).sum())
    assert 0 < zeros <= 3 * 6399
    other = TimeMask.for_audio(seed=4)(wave)
    assert not np.array_equal(first, other)
    short = TimeMask(max_width=5, stride=25, seed=0)(np.ones(1))
    np.testing.assert_array_equal(short, np.ones(1))


@pytest.mark.parametrize("target", [-5.0, 0.0, 7.5, 20.0])
def test_white_noise_hits_the_snr_exactly(target):
    speech = _speech()
    noisy = AddNoise(target, seed=1)(speech)
    assert noisy.dtype == np.float32 and noisy.shape == speech.shape
    assert snr_db(speech, noisy) == pytest.approx(target, abs=0.1)


def test_noise_file_and_babble_hit_the_snr(tmp_path):
    utterances = [_speech(0.6, seed=s) * (s + 1) for s in range(5)]
    babble = make_babble(utterances, n_speakers=3, length=24000, seed=0)
    assert babble.shape == (24000,) and babble.dtype == np.float32 and np.abs(babble).max() == pytest.approx(0.9)
    speech = _speech(2.0, seed=9)  # longer than the babble: it is looped
    assert snr_db(speech, AddNoise(5, noise=babble, seed=0)(speech)) == pytest.approx(5, abs=0.1)

    path = tmp_path / "noise_8k.wav"  # a file at another rate is resampled
    write_audio(path, babble[::2], sampling_rate=8000)
    adder = AddNoise(0, noise=str(path), seed=0)
    assert len(adder.noise) == 24000
    assert snr_db(speech, adder(speech)) == pytest.approx(0, abs=0.1)


def test_evaluation_noise_is_seeded_and_clean_means_clean():
    speech = _speech()
    first, second = AddNoise(0, seed=7)(speech), AddNoise(0, seed=7)(speech)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(AddNoise(CLEAN_SNR, seed=0)(speech), speech)
    torch_out = AddNoise(10, seed=0)(torch.from_numpy(speech))
    assert isinstance(torch_out, torch.Tensor)


def test_snr_drawn_from_a_list():
    speech = _speech()
    adder = AddNoise([-5, 5, CLEAN_SNR], seed=0)
    measured = set()
    for _ in range(30):
        noisy = adder(speech)
        measured.add("clean" if np.array_equal(noisy, speech) else round(snr_db(speech, noisy)))
    assert measured == {-5, 5, "clean"}


def test_bad_noise_inputs(tmp_path):
    with pytest.raises(MediaError, match="nothing.wav: file not found"):
        AddNoise(0, noise=str(tmp_path / "nothing.wav"))
    with pytest.raises(ValueError, match="non-silent mono"):
        AddNoise(0, noise=np.zeros(100))
    with pytest.raises(ValueError, match="mono wave"):
        AddNoise(0)(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="at least one non-silent"):
        make_babble([np.zeros(10)])
    with pytest.raises(ValueError, match="max_width and stride"):
        TimeMask(0, 25)


def _numbered_clip(frames: int) -> dict:
    """Video frame t filled with t + 1 (1 .. T), its audio samples with the same value: where each came from shows."""
    video = torch.arange(1, frames + 1, dtype=torch.uint8).view(frames, 1, 1, 1).expand(frames, 1, 4, 4).clone()
    audio = np.repeat(np.arange(1, frames + 1, dtype=np.float32), 640)
    return {"video": video, "audio": audio, "text": "HI"}


def test_boundary_jitter_moves_both_streams_alike():
    jitter = BoundaryJitter(max_frames=5, seed=0)
    heads, tails = set(), set()
    for _ in range(200):
        clip = jitter(_numbered_clip(20))
        video, audio = clip["video"][:, 0, 0, 0].numpy().astype(np.float32), clip["audio"]
        assert clip["text"] == "HI" and video.dtype == np.float32
        assert len(audio) == 640 * len(video), "audio and video keep 640 samples a frame"
        # frame t and its 640 samples stay together: the sound under each frame is the frame's (0 = added silence)
        per_frame = audio.reshape(len(video), 640)
        assert np.all((per_frame == video[:, None]) | (per_frame == 0))
        kept = video[per_frame[:, 0] != 0]
        assert np.array_equal(kept, np.arange(kept[0], kept[-1] + 1)), "the middle is kept in order, uncut"
        added_head = int(np.argmax(per_frame[:, 0] != 0))
        added_tail = int(np.argmax(per_frame[::-1, 0] != 0))
        assert np.all(video[:added_head] == kept[0]) and np.all(video[len(video) - added_tail :] == kept[-1])
        head = added_head if added_head else -(int(kept[0]) - 1)
        tail = added_tail if added_tail else -(20 - int(kept[-1]))
        assert -5 <= head <= 5 and -5 <= tail <= 5
        heads.add(head)
        tails.add(tail)
    assert heads == tails == set(range(-5, 6)), "every shift from -5 to 5 frames is drawn, at both ends"


def test_boundary_jitter_keeps_half_a_short_clip_and_one_stream_alone():
    jitter = BoundaryJitter.from_seconds(0.4, seed=1)  # 10 frames at 25 fps
    assert jitter.max_frames == 10
    for _ in range(50):
        assert len(jitter(_numbered_clip(8))["video"]) >= 4  # at most a quarter trimmed from each end
        audio_only = jitter({"audio": np.ones(12 * 640, np.float32)})["audio"]
        assert len(audio_only) % 640 == 0 and len(audio_only) >= 6 * 640
    with pytest.raises(ValueError, match=">= 0"):
        BoundaryJitter.from_seconds(-0.1)
    assert BoundaryJitter(0, seed=0)(_numbered_clip(7))["video"].shape[0] == 7


def test_training_augmentations_add_the_jitter_only_when_asked():
    assert training_augmentations(("audio",), boundary_jitter_s=0.0)["clip"] is None
    (jitter,) = training_augmentations(("video", "audio"), boundary_jitter_s=0.2)["clip"]
    assert isinstance(jitter, BoundaryJitter) and jitter.max_frames == 5
