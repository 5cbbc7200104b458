"""MMAVSRFeatureExtractor: raw normalised wave, Whisper-identical log-mel, input types, bad rates and stereo."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from mmavsr_processing.feature_extraction_mmavsr import MMAVSRFeatureExtractor
from mmavsr_processing.media_io import write_audio


def _tone(seconds, freq=300.0, rate=16000, amplitude=0.3, offset=0.0):
    t = np.arange(int(seconds * rate)) / rate
    return (offset + amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_raw_normalises_each_utterance_over_its_real_samples():
    extractor = MMAVSRFeatureExtractor()
    short, long = _tone(0.25, offset=0.5), _tone(0.5, amplitude=2.0)
    batch = extractor([short, long], sampling_rate=16000, return_tensors="pt")
    features, mask = batch["input_features"], batch["attention_mask"]
    assert features.shape == mask.shape == (2, 8000) and features.dtype == torch.float32
    assert mask[0].sum() == 4000 and mask[1].sum() == 8000
    real = features[0, :4000].double()
    assert abs(real.mean()) < 1e-5 and abs(real.std(unbiased=False) - 1) < 1e-3
    assert torch.all(features[0, 4000:] == 0)
    # auto_avsr normalises the whole utterance with a layer norm: same numbers for the unpadded clip
    expected = torch.nn.functional.layer_norm(torch.from_numpy(short), short.shape, eps=1e-8)
    torch.testing.assert_close(features[0, :4000], expected, atol=1e-5, rtol=1e-5)


def test_raw_accepts_lists_tensors_dicts_and_files(tmp_path):
    extractor = MMAVSRFeatureExtractor()
    wave = _tone(0.1)
    path = tmp_path / "clip.wav"
    write_audio(path, wave)
    inputs = [wave.tolist(), torch.from_numpy(wave), {"array": wave, "sampling_rate": 16000}, str(path)]
    batch = extractor(inputs, return_tensors="np")["input_features"]
    for row in batch[1:]:
        np.testing.assert_allclose(row, batch[0], atol=2e-3)  # the wav file is 16-bit
    single = extractor(wave, return_tensors="np")["input_features"]
    assert single.shape == (1, len(wave))


def test_raw_accepts_a_torchcodec_audio_decoder(tmp_path):
    from torchcodec.decoders import AudioDecoder

    extractor = MMAVSRFeatureExtractor()
    wave = _tone(0.2)
    write_audio(tmp_path / "clip.wav", wave)
    batch = extractor([AudioDecoder(str(tmp_path / "clip.wav"))], return_tensors="np")
    np.testing.assert_allclose(batch["input_features"][0], extractor(wave)["input_features"][0], atol=2e-3)


def test_wrong_rate_is_refused_or_resampled():
    with pytest.raises(ValueError, match="sampling rate is 8000 Hz, expected 16000 Hz"):
        MMAVSRFeatureExtractor()(_tone(0.1, rate=8000), sampling_rate=8000)
    with pytest.raises(ValueError, match="44100 Hz, expected 16000 Hz"):
        MMAVSRFeatureExtractor()([{"array": _tone(0.1, rate=44100), "sampling_rate": 44100}])
    resampled = MMAVSRFeatureExtractor(resample=True)(_tone(0.1, rate=8000), sampling_rate=8000)
    assert resampled["input_features"].shape == (1, 1600)


def test_stereo_is_refused_or_averaged():
    stereo = np.stack([_tone(0.1), _tone(0.1, amplitude=0.1)])  # (2, S)
    with pytest.raises(ValueError, match=r"audio item 0: audio of shape \(2, 1600\) is not mono"):
        MMAVSRFeatureExtractor()([stereo])
    averaged = MMAVSRFeatureExtractor(mono=True)([stereo])["input_features"]
    expected = MMAVSRFeatureExtractor()(stereo.mean(0))["input_features"]
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    with pytest.raises(ValueError, match="is empty"):
        MMAVSRFeatureExtractor()([np.zeros(0, np.float32)])


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_log_mel_equals_whisper(num_mel_bins):
    rng = np.random.default_rng(0)
    clips = [_tone(1.3) + 0.05 * rng.standard_normal(20800).astype(np.float32), _tone(0.7, freq=900)]
    whisper = WhisperFeatureExtractor(feature_size=num_mel_bins)

    padded = MMAVSRFeatureExtractor("log-mel", num_mel_bins=num_mel_bins, pad_to_whisper_window=True)(clips)
    expected = whisper(clips, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
    assert padded["input_features"].shape == (2, num_mel_bins, 3000)
    np.testing.assert_array_equal(padded["input_features"], expected["input_features"])
    np.testing.assert_array_equal(padded["attention_mask"], expected["attention_mask"])

    short = MMAVSRFeatureExtractor("log-mel", num_mel_bins=num_mel_bins)(clips)
    expected = whisper(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="np")
    assert short["input_features"].shape == (2, num_mel_bins, 130)
    np.testing.assert_array_equal(short["input_features"], expected["input_features"])
    assert short["attention_mask"].sum(-1).tolist() == [130, 70]


def test_save_and_load_round_trip(tmp_path):
    extractor = MMAVSRFeatureExtractor("log-mel", num_mel_bins=128, resample=True)
    assert extractor.whisper_feature_extractor.feature_size == 128  # built lazily; must not end up in the json
    extractor.save_pretrained(tmp_path)
    loaded = MMAVSRFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.feature_type, loaded.num_mel_bins, loaded.resample, loaded.feature_size) == (
        "log-mel",
        128,
        True,
        128,
    )
    clip = _tone(0.5)
    np.testing.assert_array_equal(loaded(clip)["input_features"], extractor(clip)["input_features"])


def test_unknown_feature_type_is_refused():
    with pytest.raises(ValueError, match="feature_type must be one of"):
        MMAVSRFeatureExtractor("mfcc")


def test_undecoded_dataset_rows_are_read_from_their_files(tmp_path):
    # rows of `datasets.Audio(decode=False)` / `datasets.Video(decode=False)` columns: {"path": ..., "bytes": None}
    import datasets

    from mmavsr_processing.media_io import write_video
    from mmavsr_processing.video_processing_mmavsr import to_video_tensor

    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 3200).astype(np.float32)
    write_audio(tmp_path / "a.wav", wave)
    frames = np.random.default_rng(1).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames)
    rows = datasets.Dataset.from_dict({"audio": [str(tmp_path / "a.wav")], "video": [str(tmp_path / "a.mp4")]})
    rows = rows.cast_column("audio", datasets.Audio(16000, decode=False))
    rows = rows.cast_column("video", datasets.Video(decode=False))
    row = rows[0]
    assert row["audio"]["path"].endswith("a.wav") and row["audio"]["bytes"] is None
    extractor = MMAVSRFeatureExtractor()
    from_row = extractor(row["audio"], sampling_rate=16000, return_tensors="np")["input_features"]
    from_path = extractor(str(tmp_path / "a.wav"), sampling_rate=16000, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(from_row, from_path)
    assert torch.equal(to_video_tensor(row["video"]), to_video_tensor(str(tmp_path / "a.mp4")))
    with pytest.raises(ValueError, match="'array' key .* or a 'path'"):
        extractor({"sampling_rate": 16000}, sampling_rate=16000)


def test_log_mel_of_clips_shorter_than_the_stft_window():
    """A clip of one to two hops (10-25 ms) still gets its frames (Whisper's STFT mirrors 200 samples past each end,
    more than it holds); a longer clip in the same batch gets the frames it gets alone; under one hop is refused."""
    extractor = MMAVSRFeatureExtractor(feature_type="log-mel")
    rng = np.random.default_rng(0)
    short, longer = rng.standard_normal(160).astype(np.float32), rng.standard_normal(3200).astype(np.float32)
    for samples in (160, 200, 399):
        batch = extractor(rng.standard_normal(samples).astype(np.float32), return_tensors="pt")
        assert batch["input_features"].shape == (1, 80, samples // 160)
        assert torch.isfinite(batch["input_features"]).all()
    together = extractor([short, longer], return_tensors="pt")
    alone = extractor(longer, return_tensors="pt")
    assert together["attention_mask"].sum(-1).tolist() == [1, 20]
    torch.testing.assert_close(together["input_features"][1], alone["input_features"][0])
    with pytest.raises(ValueError, match="audio item 1 has 100 samples, less than one log-mel frame"):
        extractor([short, short[:100]])
