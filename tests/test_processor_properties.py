"""Property-based tests of MMAVSRProcessor over random batch sizes, clip lengths, frame sizes, audio lengths and texts:
shapes, masks and lengths agree; padding never changes an item's features; bad items are refused by name."""

import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mmavsr_processing import MMAVSRFeatureExtractor, MMAVSRProcessor, MMAVSRTokenizer, MMAVSRVideoProcessor
from mmavsr_processing.processing_mmavsr import AV_DURATION_TOLERANCE


SAMPLES_PER_FRAME = 640  # 16 kHz audio, 25 fps video
CROP = 88
PROPERTY_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# letters, apostrophes and spaces: what auto_avsr's unigram5000 pieces spell in any order (LRS3 writes numbers as
# words; most runs of digits, "444" or "852", have no pieces and become <unk>, which the processor refuses)
SPELLABLE = string.ascii_uppercase + string.ascii_lowercase + "' "


@pytest.fixture(scope="module")
def tokenizer():
    return MMAVSRTokenizer.from_auto_avsr()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MMAVSRProcessor(MMAVSRFeatureExtractor(), MMAVSRVideoProcessor(), tokenizer)


@pytest.fixture(scope="module")
def log_mel_processor(tokenizer):
    return MMAVSRProcessor(MMAVSRFeatureExtractor(feature_type="log-mel"), MMAVSRVideoProcessor(), tokenizer)


@st.composite
def clips(draw, max_batch=4):
    """A batch of clips: frames per clip, one frame size (H, W, C) per batch, audio samples per clip within the
    audio/video tolerance, a seed, and optionally a transcript per clip."""
    batch = draw(st.integers(1, max_batch))
    frames = draw(st.lists(st.integers(1, 8), min_size=batch, max_size=batch))
    height, width = draw(st.integers(24, 112)), draw(st.integers(24, 112))
    channels = draw(st.sampled_from([1, 3]))
    slack = int(AV_DURATION_TOLERANCE * 16000) - 1
    samples = [
        max(1, n * SAMPLES_PER_FRAME + draw(st.integers(-min(slack, n * SAMPLES_PER_FRAME - 1), slack))) for n in frames
    ]
    words = st.text(alphabet=SPELLABLE, min_size=1, max_size=20).filter(lambda text: text.strip())
    texts = draw(st.one_of(st.none(), st.lists(words, min_size=batch, max_size=batch)))
    return {"frames": frames, "size": (height, width, channels), "samples": samples, "texts": texts}


def _media(spec, seed=0):
    rng = np.random.default_rng(seed)
    height, width, channels = spec["size"]
    videos = [rng.integers(0, 256, (n, height, width, channels), dtype=np.uint8) for n in spec["frames"]]
    if channels == 1 and rng.random() < 0.5:
        videos = [video[..., 0] for video in videos]  # grayscale (T, H, W)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in spec["samples"]]
    return videos, audio


@PROPERTY_SETTINGS
@given(spec=clips(), seed=st.integers(0, 2**16))
def test_shapes_masks_and_lengths_agree(processor, spec, seed):
    videos, audio = _media(spec, seed)
    batch = processor(videos=videos, audio=audio, text=spec["texts"])
    size, frames, samples = len(spec["frames"]), spec["frames"], spec["samples"]

    assert batch["pixel_values_videos"].shape == (size, max(frames), 1, CROP, CROP)
    assert batch["pixel_values_videos"].dtype == torch.float32
    assert batch["video_attention_mask"].sum(-1).tolist() == frames
    assert batch["input_features"].shape == batch["attention_mask"].shape == (size, max(samples))
    assert batch["attention_mask"].sum(-1).tolist() == samples
    for row, (n, s) in enumerate(zip(frames, samples)):
        # masks are 1 on the real steps then 0, and padding is zero
        assert batch["video_attention_mask"][row, :n].eq(1).all() and batch["video_attention_mask"][row, n:].eq(0).all()
        assert batch["attention_mask"][row, :s].eq(1).all() and batch["attention_mask"][row, s:].eq(0).all()
        assert batch["pixel_values_videos"][row, n:].eq(0).all()
        assert batch["input_features"][row, s:].eq(0).all()
        assert torch.isfinite(batch["input_features"][row]).all()

    if spec["texts"] is None:
        assert "labels" not in batch
        return
    labels = batch["labels"]
    lengths = (labels != -100).sum(-1)
    assert labels.shape == (size, int(lengths.max()))
    eos = processor.tokenizer.eos_token_id
    for row, length in enumerate(lengths.tolist()):
        assert labels[row, length - 1] == eos and labels[row, length:].eq(-100).all()
        assert processor.tokenizer.unk_token_id not in labels[row].tolist()
    assert processor.batch_decode(labels) == [" ".join(text.upper().split()) for text in spec["texts"]]


@PROPERTY_SETTINGS
@given(spec=clips(), seed=st.integers(0, 2**16))
def test_padding_never_changes_an_items_features(processor, spec, seed):
    videos, audio = _media(spec, seed)
    batch = processor(videos=videos, audio=audio, text=spec["texts"])
    for row, (video, wave) in enumerate(zip(videos, audio)):
        text = None if spec["texts"] is None else [spec["texts"][row]]
        alone = processor(videos=[video], audio=[wave], text=text)
        n, s = len(video), len(wave)
        torch.testing.assert_close(batch["pixel_values_videos"][row : row + 1, :n], alone["pixel_values_videos"])
        torch.testing.assert_close(batch["input_features"][row : row + 1, :s], alone["input_features"])
        if text is not None:
            length = alone["labels"].shape[1]
            assert batch["labels"][row, :length].tolist() == alone["labels"][0].tolist()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=clips(max_batch=3), seed=st.integers(0, 2**16))
def test_log_mel_frames_follow_the_audio_length(log_mel_processor, spec, seed):
    # whole hops: Whisper's mask of a padded clip counts a partly filled last hop, the clip alone does not
    spec["samples"] = [max(160, s - s % 160) for s in spec["samples"]]
    _, audio = _media(spec, seed)
    batch = log_mel_processor(audio=audio)
    frames = [s // 160 for s in spec["samples"]]  # 100 frames a second
    assert batch["input_features"].shape == (len(audio), 80, max(frames))
    assert batch["attention_mask"].sum(-1).tolist() == frames
    assert torch.isfinite(batch["input_features"]).all()


@PROPERTY_SETTINGS
@given(
    frames=st.integers(1, 30),
    extra=st.floats(AV_DURATION_TOLERANCE + 0.01, 3.0),
    longer=st.sampled_from(["audio", "video"]),
    row=st.integers(0, 2),
)
def test_audio_and_video_further_apart_than_the_tolerance_are_refused(processor, frames, extra, longer, row):
    extra_frames = int(np.ceil(extra * 25))
    video_frames = frames + (extra_frames if longer == "video" else 0)
    samples = frames * SAMPLES_PER_FRAME + (int(extra * 16000) if longer == "audio" else 0)
    videos = [np.zeros((frames, 24, 24), np.uint8) for _ in range(3)]
    audio = [np.ones(frames * SAMPLES_PER_FRAME, np.float32) for _ in range(3)]
    videos[row] = np.zeros((video_frames, 24, 24), np.uint8)
    audio[row] = np.ones(samples, np.float32)
    with pytest.raises(ValueError, match=rf"item {row}: the audio lasts .* s and the video .* s; they differ by more"):
        processor(videos=videos, audio=audio)
    assert processor(videos=videos, audio=audio, av_tolerance=None)["video_attention_mask"].shape[0] == 3


@PROPERTY_SETTINGS
@given(
    text=st.text(alphabet=SPELLABLE, min_size=1, max_size=12),
    unknown=st.text(alphabet="ÉÏÑ,.?!-;:日本", min_size=1, max_size=3),
    position=st.integers(0, 12),
)
def test_text_with_characters_the_vocabulary_lacks_is_refused_by_name(processor, text, unknown, position):
    position = min(position, len(text))
    bad = text[:position] + unknown + text[position:]
    assume(bad.strip())
    with pytest.raises(ValueError, match="text item 1: the transcript .* holds characters the tokenizer does not know"):
        processor(text=["BIN RED", bad])


@PROPERTY_SETTINGS
@given(blank=st.text(alphabet=" \t\n", max_size=5), row=st.integers(0, 2))
def test_empty_transcripts_are_refused_by_name(processor, blank, row):
    texts = ["BIN", "RED", "NOW"]
    texts[row] = blank
    with pytest.raises(ValueError, match=rf"text item {row}: the transcript is empty"):
        processor(text=texts)
