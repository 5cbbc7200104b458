"""MMAVSRProcessor: modality subsets, labels, decoding, AutoProcessor round trip, other tokenizers, random shapes."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, AutoVideoProcessor

from mmavsr_processing import (
    MMAVSRFeatureExtractor,
    MMAVSRProcessor,
    MMAVSRTokenizer,
    MMAVSRVideoProcessor,
    write_audio,
    write_video,
)


TEXTS = ["PLACE BLUE AT A ONE NOW", "BIN RED"]


@pytest.fixture(scope="module")
def processor():
    return MMAVSRProcessor.from_auto_avsr()


def _videos(lengths, size=96, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for n in lengths]


def _audio(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def test_audio_visual_batch_has_every_model_key(processor):
    batch = processor(audio=_audio([3200, 1920]), videos=_videos([5, 3]), text=TEXTS, sampling_rate=16000)
    assert set(batch) == {"input_features", "attention_mask", "pixel_values_videos", "video_attention_mask", "labels"}
    assert batch["input_features"].shape == batch["attention_mask"].shape == (2, 3200)
    assert batch["attention_mask"].sum(-1).tolist() == [3200, 1920]
    assert batch["pixel_values_videos"].shape == (2, 5, 1, 88, 88)
    assert batch["video_attention_mask"].sum(-1).tolist() == [5, 3]
    labels = batch["labels"]
    assert labels.dtype == torch.int64
    lengths = [len(processor.tokenizer(text)["input_ids"]) for text in TEXTS]
    assert (labels != -100).sum(-1).tolist() == lengths
    assert labels[1, lengths[1] :].eq(-100).all()
    assert labels[0, lengths[0] - 1] == processor.tokenizer.eos_token_id


@pytest.mark.parametrize(
    "inputs, keys",
    [
        ({"videos": "v"}, {"pixel_values_videos", "video_attention_mask"}),
        ({"audio": "a"}, {"input_features", "attention_mask"}),
        ({"videos": "v", "text": "t"}, {"pixel_values_videos", "video_attention_mask", "labels"}),
        ({"audio": "a", "text": "t"}, {"input_features", "attention_mask", "labels"}),
        ({"text": "t"}, {"labels"}),
    ],
)
def test_any_subset_of_modalities(processor, inputs, keys):
    values = {"v": _videos([4, 2]), "a": _audio([1280, 640]), "t": TEXTS}
    batch = processor(**{name: values[key] for name, key in inputs.items()})
    assert set(batch) == keys
    assert all(len(value) == 2 for value in batch.values())


def test_bad_calls_are_explained(processor):
    with pytest.raises(ValueError, match="at least one of"):
        processor()
    with pytest.raises(ValueError, match=r"batch sizes differ between inputs: \{'videos': 2, 'text': 1\}"):
        processor(videos=_videos([3, 3]), text="ONE TEXT")
    with pytest.raises(ValueError, match="8000 Hz, expected 16000 Hz"):
        processor(audio=_audio([800]), sampling_rate=8000)


def test_decoding_labels_and_generated_ids(processor):
    labels = processor(text=TEXTS)["labels"]
    assert processor.batch_decode(labels) == TEXTS
    assert processor.decode(labels[1]) == TEXTS[1]
    bin_red = processor.tokenizer.encode("BIN RED")  # ids + eos
    generated = torch.tensor([[5048, *bin_red], [5048, 2468, 5048] + [0] * (len(bin_red) - 2)])
    assert processor.batch_decode(generated) == ["BIN RED", "HI"]


def test_files_on_disk(processor, tmp_path):
    write_video(tmp_path / "a.mp4", _videos([4])[0], fps=25)
    write_audio(tmp_path / "a.wav", _audio([2560])[0])
    batch = processor(audio=[str(tmp_path / "a.wav")], videos=[str(tmp_path / "a.mp4")], text=["HI"])
    assert batch["pixel_values_videos"].shape == (1, 4, 1, 88, 88)
    assert batch["input_features"].shape == (1, 2560)
    with pytest.raises(Exception, match="missing.wav: file not found"):
        processor(audio=[str(tmp_path / "missing.wav")])


def test_save_and_auto_load_round_trip(tmp_path):
    processor = MMAVSRProcessor.from_auto_avsr(vision_encoder="clip-vit", feature_type="log-mel", num_mel_bins=128)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MMAVSRProcessor)
    assert isinstance(loaded.tokenizer, MMAVSRTokenizer) and loaded.tokenizer.vocab_size == 5049
    assert loaded.video_processor.vision_encoder == "clip-vit"
    assert (loaded.feature_extractor.feature_type, loaded.feature_extractor.num_mel_bins) == ("log-mel", 128)
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), MMAVSRFeatureExtractor)
    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), MMAVSRVideoProcessor)
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path), MMAVSRTokenizer)
    inputs = dict(audio=_audio([4000]), videos=_videos([2], size=64), text=["BIN RED"])
    expected, actual = processor(**inputs), loaded(**inputs)
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])


def test_another_tokenizer_without_pad_token(tmp_path):
    """LLM and Whisper decoders bring their own tokenizer; labels are still padded with -100."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(["<unk>", "</s>", "BIN", "RED", "AT", "NOW"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    assert tokenizer.pad_token_id is None
    processor = MMAVSRProcessor(MMAVSRFeatureExtractor(), MMAVSRVideoProcessor(), tokenizer)
    labels = processor(text=["BIN RED AT NOW", "RED"])["labels"]
    assert labels.tolist() == [[2, 3, 4, 5], [3, -100, -100, -100]]
    assert processor.batch_decode(labels) == ["BIN RED AT NOW", "RED"]
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded(text="AT NOW")["labels"].tolist() == [[4, 5]]


def test_importing_the_model_package_first_also_registers_the_processor():
    """This test module imported mmavsr_processing first; the other order runs in a fresh interpreter."""
    code = (
        "import modeling_mmavsr, mmavsr_processing\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
        "assert PROCESSOR_MAPPING[modeling_mmavsr.MMAVSRConfig] is mmavsr_processing.MMAVSRProcessor\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=3),
    size=st.sampled_from([88, 96, 100]),
    seed=st.integers(0, 1000),
)
def test_padding_and_masks_hold_for_random_shapes(processor, lengths, size, seed):
    videos = _videos(lengths, size=size, seed=seed)
    audio = _audio([640 * n for n in lengths], seed=seed)
    words = ["BIN", "RED", "PLACE", "NOW", "AGAIN"]
    texts = [" ".join(words[: 1 + (n + seed) % 5]) for n in lengths]
    batch = processor(audio=audio, videos=videos, text=texts)
    batch_size, longest = len(lengths), max(lengths)
    assert batch["pixel_values_videos"].shape == (batch_size, longest, 1, 88, 88)
    assert batch["video_attention_mask"].sum(-1).tolist() == lengths
    assert batch["attention_mask"].sum(-1).tolist() == [640 * n for n in lengths]
    assert batch["input_features"].shape == (batch_size, 640 * longest)
    for row, n in enumerate(lengths):
        assert batch["pixel_values_videos"][row, n:].eq(0).all()
        assert batch["input_features"][row, 640 * n :].eq(0).all()
    assert processor.batch_decode(batch["labels"]) == texts
