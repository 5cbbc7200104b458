"""auto_avsr checkpoint conversion: the released key map, errors, and numerical parity with auto_avsr itself.

The parity fixtures (tests/fixtures/auto_avsr/, see its README) hold small random-weight models saved by auto_avsr's
own classes and auto_avsr's outputs for them: encoder states, CTC log-probs, decoder logits and beam-search
hypotheses.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmavsr_training.convert_auto_avsr_checkpoint import (
    CheckpointConversionError,
    convert_auto_avsr_state_dict,
    convert_checkpoint,
    load_auto_avsr_checkpoint,
    main,
    rename_key,
)
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration


FIXTURES = Path(__file__).parent / "fixtures" / "auto_avsr"
RELEASED = {"video": "full_vsr_state_dict_shapes.json", "audio": "full_asr_state_dict_shapes.json"}
# what the shapes cannot tell: the fixture video model's decoder has 2 heads (its encoder 4)
DECODER_HEADS = {"video": 2, "audio": None}
TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and far faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def released_state_dict(modality: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The released checkpoint's keys with meta tensors of their shapes."""
    shapes = json.loads((FIXTURES / RELEASED[modality]).read_text())
    return {prefix + key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("modality,prefix", [("video", ""), ("audio", "model.")])
def test_released_keys_map_onto_model(modality, prefix):
    state_dict = released_state_dict(modality, prefix)
    config, converted = convert_auto_avsr_state_dict(state_dict)

    # every released key has a model key of the same shape, and nothing of the model is left out
    with torch.device("meta"):
        expected = MMAVSRForConditionalGeneration(MMAVSRConfig(modality=modality)).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    for key, value in state_dict.items():
        new_key = rename_key(key[len(prefix) :], modality)
        assert new_key in converted and converted[new_key].shape == value.shape, key
    assert len(converted) == len(state_dict) == 767

    # the sizes read from the shapes are the released configuration
    released = MMAVSRConfig(modality=modality)
    for name in (
        "vision_encoder",
        "audio_encoder",
        "frontend_channels",
        "frontend_layers",
        "frontend_activation",
        "hidden_size",
        "encoder_layers",
        "encoder_attention_heads",
        "encoder_ffn_dim",
        "conv_kernel_size",
        "macaron_style",
        "ctc_vocab_size",
        "decoder_prompt_ids",
    ):
        assert getattr(config, name) == getattr(released, name), name
    assert config.text_config.to_dict() == released.text_config.to_dict()


def test_unknown_missing_and_mismatched_keys_are_listed():
    state_dict = released_state_dict("video")
    dropped = [k for k in state_dict if k.endswith(("norm_conv.weight", "norm1.bias"))]
    dropped += ["decoder.after_norm.weight", "ctc.ctc_lo.bias", "proj_encoder.bias"]
    for key in dropped:
        del state_dict[key]
    state_dict["encoder.embed.0.pe"] = torch.empty(1, 10, 768, device="meta")
    state_dict["decoder.output_layer.bias"] = torch.empty(5000, device="meta")
    with pytest.raises(CheckpointConversionError) as error:
        convert_auto_avsr_state_dict(state_dict)
    message = str(error.value)
    assert len(dropped) == 21
    assert "unknown (no MMAVSR counterpart) 1 key(s):\n  encoder.embed.0.pe" in message
    assert "missing (the MMAVSR model needs them) 21 key(s)" in message and "... and 1 more" in message
    assert "model.decoder.after_norm.weight" in message and "ctc_head.ctc_lo.bias" in message
    assert "shape mismatches 1 key(s):\n  lm_head.bias: checkpoint (5000,) vs model (5049,)" in message


def test_not_an_auto_avsr_checkpoint():
    with pytest.raises(CheckpointConversionError, match="neither `frontend.frontend3D.0.weight`"):
        convert_auto_avsr_state_dict({"encoder.weight": torch.zeros(2)})


def test_attention_heads():
    state_dict = released_state_dict("audio")
    with pytest.raises(CheckpointConversionError, match="contradicts the checkpoint.*12 encoder heads"):
        convert_auto_avsr_state_dict(state_dict, attention_heads=8)
    config, _ = convert_auto_avsr_state_dict(state_dict, attention_heads=12, decoder_attention_heads=8)
    assert config.encoder_attention_heads == 12 and config.text_config.decoder_attention_heads == 8


def test_pickled_and_corrupt_checkpoints_are_refused(tmp_path, capsys):
    # a Lightning checkpoint as auto_avsr's trainer writes it: its hyper-parameters are a pickled Namespace
    state_dict = torch.load(FIXTURES / "audio_model.pth", weights_only=True)
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state_dict, "hyper_parameters": argparse.Namespace(lr=1e-3)}, lightning)
    with pytest.raises(CheckpointConversionError, match="lightning.ckpt: refused to load.*weights_only=True"):
        load_auto_avsr_checkpoint(lightning)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointConversionError, match="corrupt.pth: not a readable PyTorch checkpoint"):
        load_auto_avsr_checkpoint(corrupt)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "absent.pth"), "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "absent.pth: no such checkpoint file" in capsys.readouterr().err


def with_auto_avsr_vocabulary(modality: str) -> dict[str, torch.Tensor]:
    """The fixture model of `modality` with its vocabulary-sized tensors redrawn at auto_avsr's 5049 units (the
    checkpoint layout of a model trained with unigram5000)."""
    state_dict = torch.load(FIXTURES / f"{modality}_model.pth", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key in ("decoder.embed.0.weight", "decoder.output_layer.weight", "ctc.ctc_lo.weight"):
        state_dict[key] = torch.randn(5049, 64, generator=generator)
    for key in ("decoder.output_layer.bias", "ctc.ctc_lo.bias"):
        state_dict[key] = torch.randn(5049, generator=generator)
    return state_dict


def test_lightning_checkpoint_with_auto_avsr_vocabulary_gets_the_tokenizer(tmp_path):
    """A Lightning checkpoint (`state_dict` with `model.` keys) of a model with auto_avsr's 5049-unit vocabulary: the
    command writes a loadable model and the unigram5000 tokenizer beside it."""
    from mmavsr_processing.tokenization_mmavsr import MMAVSRTokenizer

    state_dict = with_auto_avsr_vocabulary("audio")
    checkpoint = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in state_dict.items()}, "epoch": 3}, checkpoint)

    main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "converted")])
    model = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "converted")
    assert torch.equal(model.lm_head.weight, state_dict["decoder.output_layer.weight"])
    assert model.config.text_config.eos_token_id == 5048 and model.generation_config.num_beams == 40
    tokenizer = MMAVSRTokenizer.from_pretrained(tmp_path / "converted")
    reference = MMAVSRTokenizer.from_auto_avsr()
    assert tokenizer("HELLO WORLD").input_ids == reference("HELLO WORLD").input_ids


# --- parity with auto_avsr -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture checkpoints converted with the command's code path and loaded back with `from_pretrained`."""
    models = {}
    for modality in ("video", "audio"):
        folder = tmp_path_factory.mktemp(f"converted_{modality}")
        convert_checkpoint(FIXTURES / f"{modality}_model.pth", folder, decoder_attention_heads=DECODER_HEADS[modality])
        models[modality] = MMAVSRForConditionalGeneration.from_pretrained(folder).eval()
    return models


def reference_batch(modality: str):
    """auto_avsr's outputs, and both utterances as one zero-padded batch of model inputs."""
    reference = load_file(FIXTURES / f"{modality}_reference.safetensors")
    inputs = [reference["input_0"].float(), reference["input_1"].float()]
    length = max(len(x) for x in inputs)
    padded = torch.zeros((2, length) + inputs[0].shape[1:])
    mask = torch.zeros(2, length, dtype=torch.long)
    for row, x in enumerate(inputs):
        padded[row, : len(x)] = x
        mask[row, : len(x)] = 1
    if modality == "video":
        return reference, {"pixel_values_videos": padded, "video_attention_mask": mask}
    return reference, {"input_features": padded, "attention_mask": mask}


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_converted_config(converted, modality):
    config = converted[modality].config
    expected = {
        "video": {"frontend_layers": [2, 1, 1, 2], "conv_kernel_size": 15, "macaron_style": True, "decoder_heads": 2},
        "audio": {"frontend_layers": [1, 1, 1, 1], "conv_kernel_size": 31, "macaron_style": False, "decoder_heads": 4},
    }[modality]
    assert config.modality == modality and config.frontend_channels == 8 and config.hidden_size == 64
    assert config.frontend_layers == expected["frontend_layers"]
    assert config.conv_kernel_size == expected["conv_kernel_size"]
    assert config.macaron_style == expected["macaron_style"]
    assert (config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim) == (2, 4, 128)
    text = config.text_config
    assert (text.num_hidden_layers, text.decoder_attention_heads, text.decoder_ffn_dim) == (
        2,
        expected["decoder_heads"],
        96,
    )
    assert (text.vocab_size, text.eos_token_id, config.ctc_vocab_size) == (300, 299, 300)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_forward_matches_auto_avsr(converted, modality):
    model = converted[modality]
    reference, inputs = reference_batch(modality)
    prefix = reference["decoder_prefix"][None].repeat(2, 1)
    with torch.no_grad():
        outputs = model(**inputs, decoder_input_ids=prefix)
    for row in range(2):
        frames = len(reference[f"encoder_out_{row}"])
        assert int(outputs.encoder_attention_mask[row].sum()) == frames
        encoder = outputs.encoder_last_hidden_state[row, :frames]
        ctc = torch.log_softmax(outputs.ctc_logits[row, :frames], dim=-1)
        torch.testing.assert_close(encoder, reference[f"encoder_out_{row}"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ctc, reference[f"ctc_log_probs_{row}"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(outputs.logits[row], reference[f"decoder_logits_{row}"], atol=TOLERANCE, rtol=0)


def hypothesis_cases():
    for modality in ("video", "audio"):
        hypotheses = json.loads((FIXTURES / f"{modality}_hypotheses.json").read_text())
        for case in hypotheses["utterances"][0]["hypotheses"]:
            yield modality, case["num_beams"], case["ctc_weight"]


@pytest.mark.parametrize("modality,num_beams,ctc_weight", list(hypothesis_cases()))
def test_beam_search_matches_auto_avsr(converted, modality, num_beams, ctc_weight):
    """`generate(num_beams=B, ctc_weight=w)` with the converted generation config gives auto_avsr's best hypothesis
    and score for each utterance of a padded batch (ctc_weight 0: attention only; 0.1: joint CTC prefix scoring)."""
    model = converted[modality]
    _, inputs = reference_batch(modality)
    hypotheses = json.loads((FIXTURES / f"{modality}_hypotheses.json").read_text())
    eos = hypotheses["eos"]
    with torch.no_grad():
        outputs = model.generate(
            **inputs, num_beams=num_beams, ctc_weight=ctc_weight, return_dict_in_generate=True, output_scores=True
        )
    for row, utterance in enumerate(hypotheses["utterances"]):
        (expected,) = [
            h for h in utterance["hypotheses"] if h["num_beams"] == num_beams and h["ctc_weight"] == ctc_weight
        ]
        tokens = outputs.sequences[row, 1:].tolist()
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        assert tokens == expected["tokens"], f"utterance {row}"
        assert abs(float(outputs.sequences_scores[row]) - expected["score"]) < 1e-3, f"utterance {row}"


# --- the converted folder is ready for AutoProcessor and the pipelines ----------------------------------------------


@pytest.fixture(scope="module")
def converted_with_vocabulary(tmp_path_factory):
    """Both fixture models at unigram5000's vocabulary, converted by the command into folders."""
    folders = {}
    for modality in ("video", "audio"):
        root = tmp_path_factory.mktemp(f"vocabulary_{modality}")
        torch.save(with_auto_avsr_vocabulary(modality), root / "model.pth")
        heads = ["--decoder-attention-heads", str(DECODER_HEADS[modality])] if DECODER_HEADS[modality] else []
        main(["--checkpoint", str(root / "model.pth"), "--output-dir", str(root / "converted"), *heads])
        folders[modality] = root / "converted"
    return folders


def test_converted_processor_applies_auto_avsr_test_transforms(converted_with_vocabulary):
    """`AutoProcessor` on a converted folder, against auto_avsr's own `VideoTransform("test")` and
    `AudioTransform("test")` outputs on the same frames and wave (fixture made as its README says)."""
    from transformers import AutoProcessor

    import mmavsr_processing  # noqa: F401  (registers the processor classes with the Auto classes)
    from mmavsr_processing import MMAVSRProcessor

    reference = load_file(FIXTURES / "transforms_reference.safetensors")
    for modality, folder in converted_with_vocabulary.items():
        processor = AutoProcessor.from_pretrained(folder)
        assert isinstance(processor, MMAVSRProcessor), modality
        video = processor(videos=reference["video_frames"])  # (T, 3, 96, 96) uint8, as auto_avsr's load_video
        torch.testing.assert_close(video["pixel_values_videos"][0], reference["video_expected"], atol=1e-5, rtol=0)
        audio = processor(audio=reference["audio_wave"].numpy(), sampling_rate=16000)
        torch.testing.assert_close(
            audio["input_features"][0].reshape(-1), reference["audio_expected"], atol=1e-5, rtol=0
        )
        assert processor.decode(processor(text="HELLO WORLD")["labels"][0]) == "HELLO WORLD"


def test_pipelines_run_on_converted_folders(converted_with_vocabulary, tmp_path):
    """`pipeline(task, model=CONVERTED)` loads the processor from the folder and transcribes as the model and
    processor do by hand: the video model a 96x96 mp4 (audio-visual pipeline), the audio model a wave (ASR pipeline)."""
    from transformers import pipeline

    import mmavsr_processing  # noqa: F401
    from mmavsr_processing import MMAVSRProcessor, write_video

    reference = load_file(FIXTURES / "transforms_reference.safetensors")
    frames = reference["video_frames"].permute(0, 2, 3, 1).numpy().repeat(4, axis=0)  # 12 frames (T, 96, 96, 3)
    write_video(tmp_path / "clip.mp4", frames, crf=0)
    wave = reference["audio_wave"].numpy()
    settings = {"num_beams": 2, "max_new_tokens": 3}
    for task, modality, inputs in (
        ("audio-visual-speech-recognition", "video", str(tmp_path / "clip.mp4")),
        ("automatic-speech-recognition", "audio", {"raw": wave, "sampling_rate": 16000}),
    ):
        folder = converted_with_vocabulary[modality]
        result = pipeline(task, model=str(folder))(inputs, generate_kwargs=settings)
        model = MMAVSRForConditionalGeneration.from_pretrained(folder).eval()
        processor = MMAVSRProcessor.from_pretrained(folder)
        if modality == "video":
            features = processor(videos=mmavsr_processing.read_video(tmp_path / "clip.mp4")[0])
        else:
            features = processor(audio=wave, sampling_rate=16000)
        expected = processor.batch_decode(model.generate(**features, **settings))[0]
        assert result["text"] == expected, task


def test_other_vocabularies_get_the_transforms_but_no_tokenizer(tmp_path, capsys):
    from transformers import AutoFeatureExtractor, AutoVideoProcessor

    import mmavsr_processing  # noqa: F401

    convert_checkpoint(FIXTURES / "audio_model.pth", tmp_path)
    assert "No tokenizer written" in capsys.readouterr().out and not (tmp_path / "tokenizer_config.json").exists()
    assert AutoFeatureExtractor.from_pretrained(tmp_path).feature_type == "raw"
    assert AutoVideoProcessor.from_pretrained(tmp_path).crop_size.height == 88
