"""Pretrained encoders (ViT, ViViT, CLIP-ViT, Whisper, WavLM), temporal alignment, fusion, freezing, composition.

Every encoder is a tiny random model (2 layers, width 32) built from its transformers config, so nothing here needs the
network; `test_real_whisper.py` runs Whisper-base itself where the assets are installed.
"""

import itertools
import shutil

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
    ViTModel,
    VivitConfig,
    WavLMConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
from modeling_mmavsr.modeling_mmavsr_fusion import align_streams, pool_pairs, repeat_frames

from .common import make_labels, tiny_config


VISION_ENCODERS = ("resnet", "vit", "vivit", "clip-vit")
AUDIO_ENCODERS = ("resnet1d", "whisper", "wavlm")
FUSIONS = ("concat", "add", "gated")
PRETRAINED = ("vit", "vivit", "clip-vit", "whisper", "wavlm")
TOKENS = [[3, 4, 5], [6, 7]]
FRAMES = [6, 4]
IMAGE = 32
MEL_BINS = 16


def vision_config(choice: str):
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=IMAGE)
    if choice == "vit":
        return ViTConfig(patch_size=8, **common)
    if choice == "clip-vit":
        return CLIPVisionConfig(patch_size=8, projection_dim=16, **common)
    if choice == "vivit":
        return VivitConfig(num_frames=4, tubelet_size=[2, 8, 8], **common)
    return None


def audio_config(choice: str, feat_extract_norm: str = "layer"):
    if choice == "whisper":
        return WhisperConfig(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=37,
            decoder_layers=2,
            decoder_attention_heads=4,
            decoder_ffn_dim=37,
            num_mel_bins=MEL_BINS,
            max_source_positions=64,
            max_target_positions=32,
            vocab_size=100,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=3,
            begin_suppress_tokens=None,
        )
    if choice == "wavlm":
        return WavLMConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            conv_dim=(8,) * 7,
            feat_extract_norm=feat_extract_norm,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            num_buckets=16,
            max_bucket_distance=64,
            apply_spec_augment=False,
            mask_time_prob=0.0,
            layerdrop=0.0,  # WavLM skips whole layers at random in training (0.1 by default): every layer trains here
        )
    return None


def build(vision=None, audio=None, fusion="concat", seed=0, feat_extract_norm="layer", **overrides):
    torch.manual_seed(seed)
    config = tiny_config(
        modality=None,  # the encoders below say what the model takes
        vision_encoder=vision,
        audio_encoder=audio,
        fusion_type=fusion,
        vision_config=vision_config(vision) if vision else None,
        audio_config=audio_config(audio, feat_extract_norm) if audio else None,
        **overrides,
    )
    return MMAVSRForConditionalGeneration(config).eval()


def make_inputs(vision, audio, frames=FRAMES, seed=0) -> dict:
    """A zero-padded batch for the chosen encoders: one row per length in `frames` (25 fps frames)."""
    generator = torch.Generator().manual_seed(seed)
    batch, longest = len(frames), max(frames)
    inputs = {}
    if vision:
        shape = (1, 24, 24) if vision == "resnet" else (3, IMAGE, IMAGE)
        video = torch.randn(batch, longest, *shape, generator=generator)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for row, length in enumerate(frames):
            video[row, length:] = 0
            mask[row, :length] = 1
        inputs.update(pixel_values_videos=video, video_attention_mask=mask)
    if audio:
        # whisper: 4 log-mel frames (10 ms) per video frame; raw waves: 640 samples, plus a few that fill no frame
        per_frame, extra = (4, 0) if audio == "whisper" else (640, 37)
        steps = longest * per_frame + extra
        features = (
            torch.randn(batch, MEL_BINS, steps, generator=generator)
            if audio == "whisper"
            else torch.randn(batch, steps, generator=generator)
        )
        mask = torch.zeros(batch, steps, dtype=torch.long)
        for row, length in enumerate(frames):
            real = length * per_frame + extra
            features[row, ..., real:] = 0
            mask[row, :real] = 1
        inputs.update(input_features=features, attention_mask=mask)
    return inputs


def select_row(inputs: dict, row: int) -> dict:
    """One sample of a padded batch cut to its real length, as if it had been processed alone."""
    single = {}
    for key, value in inputs.items():
        mask = inputs["video_attention_mask" if key.startswith(("pixel", "video")) else "attention_mask"]
        real = int(mask[row].sum())
        single[key] = value[row : row + 1, ..., :real] if key == "input_features" else value[row : row + 1, :real]
    return single


def encoder_parameters(model, kind):
    frontend = getattr(model.model.encoder, f"{kind}_frontend")
    return dict(frontend.encoder.named_parameters())


def train_one_step(model, inputs):
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**inputs, labels=make_labels(TOKENS)).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return loss, changed


@pytest.mark.parametrize("vision, audio, fusion", list(itertools.product(VISION_ENCODERS, AUDIO_ENCODERS, FUSIONS)))
def test_every_encoder_pair_and_fusion_trains_a_step(vision, audio, fusion):
    model = build(vision, audio, fusion)
    inputs = make_inputs(vision, audio)
    out = model(**inputs, labels=make_labels(TOKENS))
    assert out.encoder_last_hidden_state.shape == (2, max(FRAMES), 32)
    assert out.encoder_attention_mask.sum(-1).tolist() == FRAMES
    loss, changed = train_one_step(model, inputs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # encoders initialised at random train (only those loaded from a checkpoint are frozen by default): everything
    # trainable moved, and nothing is frozen but what the transformers model fixes itself (Whisper's positions)
    assert changed == trainable
    assert frozen <= {"model.encoder.audio_frontend.encoder.embed_positions.weight"}
    assert (model.config.freeze_vision_encoder, model.config.freeze_audio_encoder) == (
        False if vision else None,
        False if audio else None,
    )


ENCODERS = [("vision", v) for v in VISION_ENCODERS] + [("audio", a) for a in AUDIO_ENCODERS]


def single(kind, choice, **overrides):
    return build(choice if kind == "vision" else None, choice if kind == "audio" else None, **overrides)


def single_inputs(kind, choice, frames=FRAMES):
    return make_inputs(choice if kind == "vision" else None, choice if kind == "audio" else None, frames)


@pytest.mark.parametrize("kind, choice", ENCODERS + [("audio", "wavlm-group")])
def test_padding_gives_each_sample_its_own_outputs(kind, choice):
    norm = "group" if choice == "wavlm-group" else "layer"
    choice = choice.replace("-group", "")
    model = single(kind, choice, feat_extract_norm=norm)
    inputs = single_inputs(kind, choice)
    batch = model.get_encoder()(**inputs)
    frontend = getattr(model.model.encoder, f"{kind}_frontend")
    for row, frames in enumerate(FRAMES):
        alone = model.get_encoder()(**select_row(inputs, row))
        assert alone.last_hidden_state.shape[1] == frames
        torch.testing.assert_close(batch.last_hidden_state[row, :frames], alone.last_hidden_state[0], atol=1e-5, rtol=0)
        # and the encoder's own features, before the Conformer
        row_inputs = select_row(inputs, row)
        args = (row_inputs["pixel_values_videos"], None) if kind == "vision" else (row_inputs["input_features"], None)
        batch_args = (
            (inputs["pixel_values_videos"], inputs["video_attention_mask"])
            if kind == "vision"
            else (inputs["input_features"], inputs["attention_mask"])
        )
        torch.testing.assert_close(frontend(*batch_args)[row, :frames], frontend(*args)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, choice", [e for e in ENCODERS if e[1] in PRETRAINED])
def test_frozen_encoder_is_unchanged_and_unfrozen_encoder_trains(kind, choice):
    frozen_model = single(kind, choice, **{f"freeze_{kind}_encoder": True})
    wrapper = getattr(frozen_model.model.encoder, f"{kind}_frontend")
    before = {n: p.clone() for n, p in encoder_parameters(frozen_model, kind).items()}
    assert all(not p.requires_grad for p in before.values())
    inputs = single_inputs(kind, choice)
    _, changed = train_one_step(frozen_model, inputs)
    assert not any(f"{kind}_frontend" in n for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in encoder_parameters(frozen_model, kind).items())
    # a frozen encoder stays in eval mode (no dropout) inside a training model, and builds no graph
    assert frozen_model.training and not wrapper.encoder.training
    key = "pixel_values_videos" if kind == "vision" else "input_features"
    mask_key = "video_attention_mask" if kind == "vision" else "attention_mask"
    assert not wrapper(inputs[key], inputs[mask_key]).requires_grad

    # a random encoder trains unless told otherwise, as does one told so
    for unfrozen in (single(kind, choice), single(kind, choice, **{f"freeze_{kind}_encoder": False})):
        assert getattr(unfrozen.config, f"freeze_{kind}_encoder") is False
        _, changed = train_one_step(unfrozen, inputs)
        trainable = {n for n, p in encoder_parameters(unfrozen, kind).items() if p.requires_grad}
        prefix = f"{kind}_frontend.encoder."
        moved = {n.split(prefix, 1)[1] for n in changed if prefix in n}
        assert trainable and moved == trainable


@pytest.mark.parametrize("kind, choice", ENCODERS)
def test_single_modality_model_trains_and_generates(kind, choice):
    model = single(kind, choice)
    inputs = single_inputs(kind, choice)
    loss, changed = train_one_step(model, inputs)
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    model.eval()
    generated = model.generate(**inputs, num_beams=2, max_new_tokens=4)
    assert generated.shape[0] == 2


def test_whisper_accepts_a_full_window_and_rejects_longer_or_wrong_mels():
    model = single("audio", "whisper")
    wrapper = model.model.encoder.audio_frontend
    window = 2 * wrapper.encoder.config.max_source_positions
    full = torch.randn(1, MEL_BINS, window)
    # the whole window with an all-ones mask is WhisperEncoder itself (pooled to 25 fps)
    reference = wrapper.encoder(full).last_hidden_state
    expected = reference.view(1, -1, 2, reference.shape[-1]).mean(2)
    torch.testing.assert_close(wrapper(full, torch.ones(1, window, dtype=torch.long)), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"at most 128 frames = 30 s\), got `input_features` of shape \(1, 16, 130\)"):
        wrapper(torch.randn(1, MEL_BINS, window + 2))
    with pytest.raises(ValueError, match="16 mel bins"):
        wrapper(torch.randn(1, 80, 20))
    with pytest.raises(ValueError, match=r"'whisper' takes log-mel spectrograms of shape \(batch, n_mels, frames\)"):
        model(input_features=torch.randn(1, 640), labels=make_labels(TOKENS[:1]))


def test_vision_encoder_rejects_frames_of_the_wrong_size():
    model = single("vision", "vit")
    with pytest.raises(ValueError, match=r"'vit' takes frames of 3 channels and 32x32 pixels"):
        model(pixel_values_videos=torch.randn(1, 4, 1, 24, 24), labels=make_labels(TOKENS[:1]))


def test_vivit_repeats_each_tubelet_for_its_frames():
    model = single("vision", "vivit")
    wrapper = model.model.encoder.vision_frontend
    video = torch.randn(1, 6, 3, IMAGE, IMAGE)
    features = wrapper(video)
    assert features.shape == (1, 6, 32)
    # tubelets of 2 frames: frames (0, 1), (2, 3), (4, 5) share a feature, neighbours differ
    for start in (0, 2, 4):
        assert torch.equal(features[0, start], features[0, start + 1])
    assert not torch.allclose(features[0, 1], features[0, 2])
    # the second window (frames 4, 5 and two zero frames) is ViViT on that window alone
    window = torch.cat([video[:, 4:], torch.zeros(1, 2, 3, IMAGE, IMAGE)], dim=1)
    tokens = wrapper.encoder(pixel_values=window).last_hidden_state[:, 1:].reshape(1, 2, -1, 32).mean(2)
    torch.testing.assert_close(features[0, 4], tokens[0, 0], atol=1e-6, rtol=0)


def test_pool_pairs_and_repeat_frames():
    x = torch.arange(10.0).view(1, 5, 2).repeat(2, 1, 1)  # frames 0..4, two channels
    pooled, lengths = pool_pairs(x, torch.tensor([5, 3]))
    assert lengths.tolist() == [3, 2]
    assert pooled[0, :, 0].tolist() == [1.0, 5.0, 8.0]  # (0+2)/2, (4+6)/2, 8 alone
    assert pooled[1, :2, 0].tolist() == [1.0, 4.0]  # the third real frame is not averaged with padding
    assert pool_pairs(x)[0].shape == (2, 3, 2)
    assert repeat_frames(torch.tensor([[[1.0], [2.0]]]), 2, 3).flatten().tolist() == [1.0, 1.0, 2.0]


def test_align_streams_cuts_small_differences_and_rejects_large_ones():
    video, audio = torch.zeros(2, 10, 3), torch.zeros(2, 11, 5)
    video_mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    audio_mask = torch.tensor([[True] * 11, [True] * 8 + [False] * 3])
    v, a, mask = align_streams(video, video_mask, audio, audio_mask, max_difference=2)
    assert v.shape[1] == a.shape[1] == 10 and mask.sum(-1).tolist() == [10, 6]
    with pytest.raises(ValueError, match="Sample 1 has 6 video frames but 8 audio frames"):
        align_streams(video, video_mask, audio, audio_mask, max_difference=1)
    with pytest.raises(ValueError, match="10 video frames but 15 audio frames"):
        align_streams(torch.zeros(1, 10, 3), None, torch.zeros(1, 15, 5), None, max_difference=3)


def test_model_raises_when_streams_are_far_apart():
    model = build("vit", "wavlm")
    inputs = make_inputs("vit", "wavlm", frames=[6])
    inputs.update(make_inputs(None, "wavlm", frames=[12]))
    with pytest.raises(ValueError, match=r"6 video frames but 12 audio frames.*max_stream_length_difference` \(3\)"):
        model(**inputs, labels=make_labels(TOKENS[:1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vision_encoder="resnet", vision_config=ViTConfig()), "vision_encoder='resnet' has none"),
        (dict(audio_encoder="whisper", audio_config=ViTConfig()), "takes a 'whisper' configuration"),
        (dict(vision_encoder="vit", vision_pooling="max"), "valid choices are 'cls', 'mean'"),
        (dict(audio_encoder="resnet1d", max_stream_length_difference=-1), "max_stream_length_difference"),
        (dict(vision_encoder=None, audio_encoder="wavlm", audio_frame_rate=30), "valid choices are 25, 50"),
        (dict(vision_encoder=None, audio_encoder="resnet1d", audio_frame_rate=50), "'resnet1d' delivers 25 fps"),
        (dict(vision_encoder="vit", audio_encoder="whisper", audio_frame_rate=50), "for audio-only models"),
        (dict(vision_encoder=None, audio_encoder="whisper", encoder_layers=-1), "must be >= 0 .0: no Conformer"),
    ],
)
def test_bad_encoder_config_raises_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MMAVSRConfig(**kwargs)


def test_default_sub_configs_are_the_transformers_defaults():
    config = MMAVSRConfig(vision_encoder="clip-vit", audio_encoder="wavlm", audio_config={"hidden_size": 48})
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_config.hidden_size == 768
    assert config.audio_config.model_type == "wavlm" and config.audio_config.hidden_size == 48
    # undecided until a model is built: then loaded (pretrained) encoders are frozen and random ones train
    assert config.freeze_vision_encoder is None and config.freeze_audio_encoder is None
    assert MMAVSRConfig().vision_config is None


@pytest.mark.parametrize("vision_pooling", ["cls", "mean"])
def test_composed_model_round_trip_without_the_component_folders(tmp_path, vision_pooling):
    """from_pretrained_components from local "pretrained" folders; the saved model loads after they are gone."""
    torch.manual_seed(0)
    vit_dir, clip_dir, whisper_dir = tmp_path / "vit", tmp_path / "clip", tmp_path / "whisper"
    ViTModel(vision_config("vit"), add_pooling_layer=False).save_pretrained(vit_dir)
    CLIPVisionModel(vision_config("clip-vit")).save_pretrained(clip_dir)
    WhisperForConditionalGeneration(audio_config("whisper")).save_pretrained(whisper_dir)
    inputs, labels = make_inputs("vit", "whisper"), make_labels(TOKENS)
    for vision, vision_dir in (("vit", vit_dir), ("clip-vit", clip_dir)):
        if vision == "vit":
            pretrained_vision = ViTModel.from_pretrained(vision_dir, add_pooling_layer=False)
        else:
            pretrained_vision = CLIPVisionModel.from_pretrained(clip_dir)
        model = MMAVSRForConditionalGeneration.from_pretrained_components(
            vision_encoder=vision,
            vision_model_name=str(vision_dir),
            audio_encoder="whisper",
            audio_model_name=str(whisper_dir),
            fusion_type="gated",
            vision_pooling=vision_pooling,
            **{
                k: v
                for k, v in tiny_config().to_dict().items()
                if k
                in (
                    "hidden_size",
                    "encoder_layers",
                    "encoder_attention_heads",
                    "encoder_ffn_dim",
                    "conv_kernel_size",
                    "text_config",
                )
            },
        ).eval()
        encoder = model.model.encoder
        for name, value in pretrained_vision.state_dict().items():
            assert torch.equal(encoder.vision_frontend.encoder.state_dict()[name], value), name
        whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir).model.encoder.state_dict()
        for name, value in encoder.audio_frontend.encoder.state_dict().items():
            assert torch.equal(value, whisper[name]), name
        expected = model(**inputs, labels=labels)
        model.save_pretrained(tmp_path / f"mmavsr-{vision}")
    shutil.rmtree(vit_dir), shutil.rmtree(clip_dir), shutil.rmtree(whisper_dir)
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "mmavsr-clip-vit").eval()
    assert loaded.config.vision_config.model_type == "clip_vision_model"
    assert loaded.config.audio_config.num_mel_bins == MEL_BINS
    assert loaded.config.vision_model_name == str(clip_dir)
    out = loaded(**inputs, labels=labels)
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(out.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    assert not any(p.requires_grad for p in loaded.model.encoder.audio_frontend.parameters())


def test_a_loaded_encoder_is_frozen_by_default_and_the_choice_survives_saving(tmp_path):
    torch.manual_seed(0)
    ViTModel(vision_config("vit"), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    names = (
        "hidden_size",
        "encoder_layers",
        "encoder_attention_heads",
        "encoder_ffn_dim",
        "conv_kernel_size",
        "text_config",
    )
    sizes = {k: v for k, v in tiny_config().to_dict().items() if k in names}
    components = dict(vision_encoder="vit", vision_model_name=str(tmp_path / "vit"), **sizes)
    inputs = make_inputs("vit", None)
    loaded = MMAVSRForConditionalGeneration.from_pretrained_components(**components)
    assert loaded.config.freeze_vision_encoder is True
    assert not any(p.requires_grad for p in encoder_parameters(loaded, "vision").values())
    _, changed = train_one_step(loaded, inputs)
    assert changed and not any("vision_frontend" in n for n in changed)
    unfrozen = MMAVSRForConditionalGeneration.from_pretrained_components(**components, freeze_vision_encoder=False)
    _, changed = train_one_step(unfrozen, inputs)
    assert {n for n in changed if "vision_frontend.encoder." in n}
    # saved and loaded again (from_pretrained loads weights, but the choice is the saved one): both choices kept
    random_model = single("vision", "vit")
    for model, frozen in ((loaded, True), (unfrozen, False), (random_model, False)):
        model.save_pretrained(tmp_path / "saved")
        again = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "saved")
        assert again.config.freeze_vision_encoder is frozen
        assert all(p.requires_grad is not frozen for p in encoder_parameters(again, "vision").values())


def test_freezing_a_frontend_that_always_trains_is_refused_unless_the_config_predates_the_choice(tmp_path):
    with pytest.raises(ValueError, match="freeze_vision_encoder=True freezes a pretrained vision encoder"):
        MMAVSRConfig(vision_encoder="resnet", freeze_vision_encoder=True)
    with pytest.raises(ValueError, match="audio_encoder=None means no such encoder"):
        MMAVSRConfig(vision_encoder="resnet", freeze_audio_encoder=True)
    # configs saved before `decoder_type` hold True, the old default that froze pretrained encoders only
    legacy = MMAVSRConfig(
        decoder="transformer",
        vision_encoder="resnet",
        audio_encoder="whisper",
        freeze_vision_encoder=True,
        freeze_audio_encoder=True,
    )
    assert legacy.freeze_vision_encoder is None and legacy.freeze_audio_encoder is True


def test_from_pretrained_components_rejects_a_name_without_a_pretrained_choice(tmp_path):
    with pytest.raises(ValueError, match="audio_model_name='x' needs a pretrained audio_encoder"):
        MMAVSRForConditionalGeneration.from_pretrained_components(audio_encoder="resnet1d", audio_model_name="x")


@pytest.mark.parametrize("choice", ["whisper", "wavlm"])
def test_fifty_hz_audio_without_conformer_is_the_encoders_own_output(choice):
    model = single("audio", choice, audio_frame_rate=50, encoder_layers=0)
    encoder = model.model.encoder
    # no Conformer, no projection (the encoder's width is hidden_size): the CTC head is the only addition
    assert isinstance(encoder.projector, torch.nn.Identity) and not list(encoder.conformer.parameters())
    assert all(n.startswith("model.encoder.audio_frontend.") for n, _ in model.named_parameters() if ".encoder." in n)
    assert not any(n.startswith(("model.encoder.conformer", "model.encoder.projector")) for n in model.state_dict())
    inputs = single_inputs("audio", choice)
    wrapper = encoder.audio_frontend
    with torch.no_grad():
        batch = model.get_encoder()(**inputs)
        frames = wrapper.output_lengths(inputs["attention_mask"].sum(-1))
        assert batch.attention_mask.sum(-1).tolist() == frames.tolist()
        if choice == "whisper":  # 4 mel frames per 25 fps frame: two 50 Hz frames
            assert frames.tolist() == [2 * f for f in FRAMES]
        for row in range(len(FRAMES)):
            alone = select_row(inputs, row)
            expected = wrapper(alone["input_features"], None)[0]  # the encoder's 50 Hz frames, unpooled
            assert torch.equal(model.get_encoder()(**alone).last_hidden_state[0], expected)
            torch.testing.assert_close(batch.last_hidden_state[row, : frames[row]], expected, atol=1e-5, rtol=0)
    # a Conformer, or a width other than hidden_size, brings the projection back
    assert not isinstance(single("audio", choice, audio_frame_rate=50).model.encoder.projector, torch.nn.Identity)
    assert not isinstance(
        single("audio", choice, encoder_layers=0, hidden_size=48).model.encoder.projector, torch.nn.Identity
    )


def test_whisper_encoder_and_decoder_without_conformer_are_whisper():
    """Whisper's encoder and decoder composed with no Conformer at 50 Hz give WhisperForConditionalGeneration's
    encoder states and logits on its 30 s window (here 128 mel frames)."""
    torch.manual_seed(0)
    whisper_config = audio_config("whisper")
    whisper = WhisperForConditionalGeneration(whisper_config).eval()
    config = MMAVSRConfig(
        vision_encoder=None, audio_encoder="whisper", audio_config=whisper_config, decoder_type="whisper-decoder",
        text_config=whisper_config, hidden_size=32, encoder_layers=0, audio_frame_rate=50, ctc_weight=0.0,
        decoder_prompt_ids=[3, 4],
    )  # fmt: skip
    model = MMAVSRForConditionalGeneration(config).eval()
    model.model.encoder.audio_frontend.encoder.load_state_dict(whisper.model.encoder.state_dict())
    model.model.decoder.whisper.load_state_dict(whisper.model.decoder.state_dict())
    model.lm_head.load_state_dict(whisper.proj_out.state_dict())
    window = torch.randn(2, MEL_BINS, 2 * whisper_config.max_source_positions)
    decoder_input_ids = torch.tensor([[3, 4, 10, 11, 12], [3, 4, 20, 2, 2]])
    with torch.no_grad():
        expected = whisper(window, decoder_input_ids=decoder_input_ids)
        out = model(input_features=window, decoder_input_ids=decoder_input_ids)
    assert torch.equal(out.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    # and greedy generation continues the prompt with Whisper's own argmax tokens
    generated = model.generate(input_features=window, max_new_tokens=3, num_beams=1)
    ids = decoder_input_ids[:, :2]
    with torch.no_grad():
        for _ in range(3):
            ids = torch.cat([ids, whisper(window, decoder_input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    for row in range(2):  # up to and with eos, after which generate pads
        length = next((i + 1 for i in range(2, 5) if ids[row, i] == whisper_config.eos_token_id), 5)
        assert generated[row, :length].tolist() == ids[row, :length].tolist()
