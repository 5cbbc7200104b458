"""The presets of hub_configs/: every one builds (with tiny sizes and tiny sub-configs, no network), trains a step and
generates; the named Hub parts load through `from_pretrained_components` (tiny local checkpoints in their place)."""

import json

import numpy as np
import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    ViTConfig,
    ViTModel,
    VivitConfig,
    WavLMConfig,
    WhisperConfig,
    WhisperModel,
)

from mmavsr_training.presets import (
    PRESETS_DIR,
    build_model_from_preset,
    build_processor_from_preset,
    load_preset,
    preset_names,
    preset_path,
)

from .common import word_tokenizer


MMAVSR_PRESETS = [name for name in preset_names() if name.startswith("mmavsr-")]
# the configurations of the seed's tables: (vision encoder, audio encoder, decoder, QLoRA)
REQUIRED = {
    ("resnet", None, "transformer", False),
    ("vit", None, "transformer", False),
    ("vit", None, "llm", True),
    (None, "resnet1d", "transformer", False),
    (None, "whisper", "transformer", False),
    (None, "wavlm", "llm", True),
    ("resnet", "resnet1d", "transformer", False),
    ("vit", "whisper", "llm", True),
}
# the Hub checkpoints a preset may name, by the component choice that loads them
HUB_CHECKPOINTS = {
    "vit": {"google/vit-base-patch16-224-in21k"},
    "clip-vit": {"openai/clip-vit-base-patch16"},
    "vivit": {"google/vivit-b-16x2-kinetics400"},
    "whisper": {"openai/whisper-base"},
    "wavlm": {"microsoft/wavlm-base-plus"},
    "llm": {"meta-llama/Llama-3.2-1B"},
    "whisper-decoder": {"openai/whisper-base"},
}
IMAGE, MEL_BINS, FRAMES = 32, 16, 8
TINY_SIZES = dict(
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    fusion_hidden_size=48,
    hidden_size=32,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    conv_kernel_size=5,
    qlora_r=4,
    qlora_alpha=8,
)
TINY_VISION = {
    "vit": lambda: ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, image_size=IMAGE, patch_size=8
    ),
    "clip-vit": lambda: CLIPVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=IMAGE,
        patch_size=8,
        projection_dim=16,
    ),
    "vivit": lambda: VivitConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=IMAGE,
        num_frames=4,
        tubelet_size=[2, 8, 8],
    ),
}
TINY_AUDIO = {
    "whisper": lambda: WhisperConfig(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=37,
        num_mel_bins=MEL_BINS,
        max_source_positions=64,
        max_target_positions=32,
        vocab_size=60,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    ),
    "wavlm": lambda: WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        num_buckets=16,
        max_bucket_distance=64,
        apply_spec_augment=False,
        mask_time_prob=0.0,
    ),
}
TINY_TEXT = {
    "llm": lambda: LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    ),
    "whisper-decoder": TINY_AUDIO["whisper"],
    "transformer": lambda: dict(
        vocab_size=60,
        d_model=32,
        num_hidden_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        bos_token_id=2,
        eos_token_id=2,
        decoder_start_token_id=2,
    ),
}


def tiny_overrides(values: dict) -> dict:
    """Tiny sizes and sub-configs for a preset's choices; `*_model_name` dropped (no network)."""
    overrides = dict(TINY_SIZES, vision_model_name=None, audio_model_name=None, decoder_model_name=None)
    if values.get("vision_encoder") in TINY_VISION:
        overrides["vision_config"] = TINY_VISION[values["vision_encoder"]]()
    if values.get("audio_encoder") in TINY_AUDIO:
        overrides["audio_config"] = TINY_AUDIO[values["audio_encoder"]]()
    overrides["text_config"] = TINY_TEXT[values["decoder_type"]]()
    if values["decoder_type"] == "whisper-decoder":
        overrides["decoder_prompt_ids"] = [3, 4, 5, 6]
    return overrides


def tiny_inputs(name: str, values: dict) -> dict:
    """Real processor outputs for two clips of different lengths, with the preset's processor settings."""
    frames = {"size": {"height": IMAGE, "width": IMAGE}}
    if values.get("vision_encoder") == "resnet":  # auto_avsr's centre crop, scaled down
        frames["crop_size"] = {"height": IMAGE - 4, "width": IMAGE - 4}
    processor = build_processor_from_preset(name, video_processor=frames, feature_extractor={"num_mel_bins": MEL_BINS})
    rng = np.random.default_rng(0)
    lengths = [FRAMES, FRAMES - 4]
    inputs = {}
    if values.get("vision_encoder"):
        videos = [rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8) for n in lengths]
        inputs.update(processor(videos=videos))
    if values.get("audio_encoder"):
        waves = [rng.standard_normal(n * 640).astype(np.float32) for n in lengths]
        inputs.update(processor(audio=waves, sampling_rate=16000))
    return dict(inputs)


def test_presets_cover_the_seed_configurations_and_name_real_hub_checkpoints():
    found = set()
    for name in MMAVSR_PRESETS:
        values, settings = load_preset(name)
        choices = (values.get("vision_encoder"), values.get("audio_encoder"), values["decoder_type"])
        found.add((*choices, values.get("use_qlora", False)))
        for part, choice in (
            ("vision", values.get("vision_encoder")),
            ("audio", values.get("audio_encoder")),
            ("decoder", values["decoder_type"]),
        ):
            model_name = values.get(f"{part}_model_name")
            if choice in HUB_CHECKPOINTS:
                assert model_name in HUB_CHECKPOINTS[choice], f"{name}: {part} {choice!r} names {model_name!r}"
            else:
                assert model_name is None, f"{name}: {choice!r} has no pretrained checkpoint"
        if values.get("audio_encoder") == "whisper":  # Whisper's encoder reads its 80-bin log-mel
            assert settings["feature_extractor"] == {"feature_type": "log-mel", "num_mel_bins": 80}
        if values.get("vision_encoder") not in (None, "resnet"):
            assert settings["video_processor"]["vision_encoder"] == values["vision_encoder"]
    assert REQUIRED <= found, f"missing: {REQUIRED - found}"
    # the demo presets of the main job are kept and read the same way
    assert {"demo-vsr-resnet", "demo-asr-resnet1d", "demo-avsr-resnet"} <= set(preset_names())


@pytest.mark.parametrize("name", MMAVSR_PRESETS)
def test_preset_builds_tiny_trains_a_step_and_generates(name):
    values, _ = load_preset(name)
    torch.manual_seed(0)
    model = build_model_from_preset(name, pretrained=False, **tiny_overrides(values))
    config = model.config
    assert (config.vision_encoder, config.audio_encoder, config.decoder_type) == (
        values.get("vision_encoder"),
        values.get("audio_encoder"),
        values["decoder_type"],
    )
    assert config.ctc_weight == values["ctc_weight"]
    if values.get("use_qlora"):  # the adapters themselves are tested in test_decoders.py
        assert (config.use_qlora, config.qlora_r, config.qlora_alpha) == (
            True,
            TINY_SIZES["qlora_r"],
            TINY_SIZES["qlora_alpha"],
        )
        assert values["qlora_r"] == 16 and values["qlora_alpha"] == 32
    frozen = [
        model.model.encoder.vision_frontend
        if config.freeze_vision_encoder and config.vision_encoder != "resnet"
        else None,
        model.model.encoder.audio_frontend
        if config.freeze_audio_encoder and config.audio_encoder != "resnet1d"
        else None,
    ]
    for frontend in filter(None, frozen):
        assert not any(p.requires_grad for p in frontend.parameters())

    inputs = tiny_inputs(name, values)
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    model.train()
    output = model(**inputs, labels=labels)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.eval()
    generated = model.generate(**inputs, num_beams=2, max_new_tokens=4)
    assert generated.shape[0] == 2 and generated.dtype == torch.long


def test_named_parts_load_through_from_pretrained_components(tmp_path):
    """The preset's names go to `from_pretrained_components`; local tiny checkpoints stand in for the Hub ones."""
    torch.manual_seed(0)
    vit = ViTModel(TINY_VISION["vit"](), add_pooling_layer=False)
    whisper = WhisperModel(TINY_AUDIO["whisper"]())
    vit_dir, whisper_dir = tmp_path / "google" / "vit-base-patch16-224-in21k", tmp_path / "openai" / "whisper-base"
    vit.save_pretrained(vit_dir)
    whisper.save_pretrained(whisper_dir)

    model = build_model_from_preset(
        "mmavsr-vsr-vit-transformer",
        vision_model_name=str(vit_dir),
        text_config=TINY_TEXT["transformer"](),
        **TINY_SIZES,
    )
    assert model.config.vision_config.hidden_size == 32
    loaded = model.model.encoder.vision_frontend.encoder.state_dict()
    for key, value in vit.state_dict().items():
        assert torch.equal(loaded[key], value), key

    model = build_model_from_preset(
        "mmavsr-asr-whisper-transformer",
        audio_model_name=str(whisper_dir),
        text_config=TINY_TEXT["transformer"](),
        **TINY_SIZES,
    )
    loaded = model.model.encoder.audio_frontend.encoder.state_dict()
    for key, value in whisper.get_encoder().state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_preset_path_takes_names_files_and_saved_model_folders(tmp_path):
    """`--config_name` of the training script and `load_preset` find presets the same way."""
    for name in MMAVSR_PRESETS:
        assert preset_path(name) == preset_path(f"{name}.json") == PRESETS_DIR / f"{name}.json"
    (tmp_path / "config.json").write_text(json.dumps({"vision_encoder": "resnet", "model_type": "mmavsr"}))
    assert preset_path(str(tmp_path)) == tmp_path / "config.json"
    assert load_preset(str(tmp_path))[0] == {"vision_encoder": "resnet"}


def test_bad_presets_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No preset 'mmavsr-nope'.*mmavsr-vsr-resnet-transformer"):
        load_preset("mmavsr-nope")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_preset(str(broken))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"vision_encoder": "resnet", "processor": {"image_processor": {}}}))
    with pytest.raises(ValueError, match="odd.json: unknown processor settings \\['image_processor'\\]"):
        load_preset(str(odd))
    with pytest.raises(ValueError, match="needs the LLM's configuration"):
        build_model_from_preset("mmavsr-vsr-vit-llama-qlora", pretrained=False, vision_model_name=None)
    # a key that is no configuration field would be carried and never applied: refused, named
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps({"vision_encoder": "resnet", "system_promt": "Be brief.", "llm_stack_factor": 2}))
    with pytest.raises(ValueError, match="misspelt.json: unknown configuration fields \\['system_promt'\\]"):
        load_preset(str(misspelt))


def test_a_saved_llm_models_config_is_a_preset_of_known_fields(tmp_path):
    """Every key `save_pretrained` writes for an LLM-decoder model (prompt, template, compression) is one a preset
    may hold: a saved folder used as `--config_name` passes the unknown-field check."""
    from .test_decoders import build

    build("llm-query", modality="audio").save_pretrained(tmp_path)
    values, _ = load_preset(str(tmp_path))
    assert values["llm_compression"] == "query" and values["llm_query_window"] == 5


def test_the_lowercase_tokenizer_setting_lowercases_labels_and_is_saved_with_the_processor(tmp_path):
    from mmavsr_processing import MMAVSRProcessor, MMAVSRTokenizer
    from mmavsr_training.builder import processor_from_settings

    values = {"audio_encoder": "resnet1d", "decoder_type": "llm"}
    upper = ["PLACE", "RED"]
    plain = processor_from_settings(values, {}, word_tokenizer(upper + ["place", "red"]))
    lowered = processor_from_settings(
        values, {"tokenizer": {"lowercase": True}}, word_tokenizer(upper + ["place", "red"])
    )
    assert plain(text=["PLACE RED"])["labels"].tolist() == [[3, 4]]
    assert lowered(text=["PLACE RED"])["labels"].tolist() == [[5, 6]]
    assert lowered.batch_decode(lowered(text=["PLACE Red"])["labels"]) == ["place red"]
    lowered.save_pretrained(tmp_path)
    reloaded = MMAVSRProcessor.from_pretrained(tmp_path)
    assert reloaded(text=["PLACE RED"])["labels"].tolist() == [[5, 6]]  # the normalizer is in tokenizer.json
    with pytest.raises(ValueError, match="auto_avsr's units are upper case"):
        processor_from_settings(values, {"tokenizer": {"lowercase": True}}, MMAVSRTokenizer.from_auto_avsr())
    with pytest.raises(ValueError, match="unknown tokenizer settings \\['casing'\\]"):
        processor_from_settings(values, {"tokenizer": {"casing": "lower"}}, word_tokenizer(upper))
