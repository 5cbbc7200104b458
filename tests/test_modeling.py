"""Behaviour of MMAVSRForConditionalGeneration for video-only, audio-only and audio-visual input."""

import copy
import pickle

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration, MMAVSRModel

from .common import EOS, MODALITIES, VOCAB_SIZE, make_inputs, make_labels, select_row, tiny_config


FRAMES = [12, 7]
TOKENS = [[3, 4, 5, 6], [7, 8]]


def build(modality, seed=0, **overrides):
    torch.manual_seed(seed)
    return MMAVSRForConditionalGeneration(tiny_config(modality, **overrides)).eval()


@pytest.mark.parametrize("modality", MODALITIES)
def test_output_shapes_and_losses(modality):
    model = build(modality)
    labels = make_labels(TOKENS)
    out = model(**make_inputs(modality, FRAMES), labels=labels)
    assert out.logits.shape == (2, labels.shape[1], VOCAB_SIZE)
    assert out.ctc_logits.shape == (2, max(FRAMES), VOCAB_SIZE)
    assert out.encoder_last_hidden_state.shape == (2, max(FRAMES), 32)
    assert out.encoder_attention_mask.sum(-1).tolist() == FRAMES
    assert torch.isfinite(out.loss)
    expected = 0.1 * out.ctc_loss + 0.9 * out.att_loss
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("modality", MODALITIES)
def test_backward_reaches_every_parameter(modality):
    model = build(modality).train()
    model(**make_inputs(modality, FRAMES), labels=make_labels(TOKENS)).loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []


@pytest.mark.parametrize("modality", MODALITIES)
def test_padding_does_not_change_outputs_or_loss(modality):
    model = build(modality)
    inputs, labels = make_inputs(modality, FRAMES), make_labels(TOKENS)
    batch = model(**inputs, labels=labels)
    losses = []
    for row, frames in enumerate(FRAMES):
        row_labels = labels[row : row + 1, : len(TOKENS[row]) + 1]
        alone = model(**select_row(inputs, row, frames), labels=row_labels)
        losses.append(alone.loss)
        assert alone.encoder_last_hidden_state.shape[1] == frames
        torch.testing.assert_close(
            batch.encoder_last_hidden_state[row, :frames], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(batch.ctc_logits[row, :frames], alone.ctc_logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.logits[row, : row_labels.shape[1]], alone.logits[0], atol=1e-5, rtol=0)
    # auto_avsr's normalisation: per-utterance sums divided by the batch size
    torch.testing.assert_close(batch.loss, torch.stack(losses).mean(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", MODALITIES)
def test_overfits_two_samples_until_generate_returns_the_labels(modality):
    model = build(
        modality,
        seed=1,
        encoder_dropout=0.0,
        positional_dropout=0.0,
        ctc_dropout=0.0,
        text_config=dict(dropout=0.0, attention_dropout=0.0, positional_dropout=0.0),
    )
    inputs, labels = make_inputs(modality, FRAMES, seed=3), make_labels(TOKENS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
    model.eval()
    for num_beams in (1, 3):
        generated = model.generate(**inputs, num_beams=num_beams)
        hypotheses = [[t for t in row.tolist()[1:] if t not in (EOS, 0)] for row in generated]
        assert hypotheses == TOKENS, f"loss {loss.item():.3f}, beams {num_beams}"


@pytest.mark.parametrize("modality", MODALITIES)
def test_generate_is_bounded_by_encoder_frames(modality):
    model = build(modality)
    # random weights never emit eos on their own: every hypothesis runs to its utterance's limit
    # (attention only: the CTC prefix score would end impossible hypotheses earlier)
    model.lm_head.bias.data[EOS] = -1e4
    for num_beams in (1, 2):
        generated = model.generate(**make_inputs(modality, FRAMES), num_beams=num_beams, ctc_weight=0.0)
        for row, frames in enumerate(FRAMES):
            tokens = generated[row].tolist()[1:]
            assert tokens.index(EOS) == frames  # as many tokens as frames, then eos (auto_avsr's maxlen)


@pytest.mark.parametrize("modality", MODALITIES)
def test_kv_cache_gives_the_same_hypotheses(modality):
    model = build(modality)
    inputs = make_inputs(modality, FRAMES)
    for num_beams in (1, 3):
        cached = model.generate(**inputs, num_beams=num_beams, use_cache=True)
        uncached = model.generate(**inputs, num_beams=num_beams, use_cache=False)
        assert torch.equal(cached, uncached)


def test_generate_from_precomputed_encoder_outputs():
    model = build("video")
    inputs = make_inputs("video", FRAMES)
    encoder_outputs = model.get_encoder()(**inputs)
    expected = model.generate(**inputs, num_beams=3)
    for _ in range(2):  # the same encoder outputs serve several calls
        assert torch.equal(model.generate(encoder_outputs=encoder_outputs, num_beams=3), expected)
    assert encoder_outputs.last_hidden_state.shape[0] == len(FRAMES)


@pytest.mark.parametrize("modality", MODALITIES)
def test_save_load_round_trip_is_exact(modality, tmp_path):
    model = build(modality)
    inputs, labels = make_inputs(modality, FRAMES), make_labels(TOKENS)
    expected = model(**inputs, labels=labels).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    for loader in (MMAVSRForConditionalGeneration, AutoModelForSpeechSeq2Seq):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MMAVSRForConditionalGeneration)
        assert loaded.config.modality == modality
        assert torch.equal(loaded(**inputs, labels=labels).logits, expected)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MMAVSRConfig)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, MMAVSRModel)
    torch.testing.assert_close(
        base(**inputs, decoder_input_ids=labels.clamp(min=0)).encoder_last_hidden_state,
        model.model(**inputs, decoder_input_ids=labels.clamp(min=0)).encoder_last_hidden_state,
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize("modality", MODALITIES)
def test_sdpa_matches_eager(modality):
    inputs, labels = make_inputs(modality, FRAMES), make_labels(TOKENS)
    eager = build(modality, attn_implementation="eager")
    sdpa = build(modality, attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    sdpa.load_state_dict(eager.state_dict())
    a, b = eager(**inputs, labels=labels), sdpa(**inputs, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.ctc_logits, b.ctc_logits, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs, labels = make_inputs("audiovisual", FRAMES), make_labels(TOKENS)
    grads = []
    for checkpointing in (False, True):
        model = build(
            "audiovisual",
            encoder_dropout=0.0,
            positional_dropout=0.0,
            ctc_dropout=0.0,
            text_config=dict(dropout=0.0, attention_dropout=0.0, positional_dropout=0.0),
        ).train()
        if checkpointing:  # the newer name; transformers 5.20 (the lowest allowed) has only the older one
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_no_split_modules_name_layers_of_the_model():
    # device_map="auto" keeps these classes whole on one device; a renamed class would silently drop that guarantee
    model = build("audiovisual")
    class_names = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) <= class_names


def test_legacy_modality_maps_onto_encoders():
    assert (MMAVSRConfig(modality="video").vision_encoder, MMAVSRConfig(modality="video").audio_encoder) == (
        "resnet",
        None,
    )
    assert MMAVSRConfig(modality="audio").audio_encoder == "resnet1d"
    assert MMAVSRConfig(modality="audiovisual").modality == "audiovisual"
    assert MMAVSRConfig().modality == "video"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vision_encoder="resnet3d"), "valid choices are 'resnet', 'vit', 'vivit', 'clip-vit'"),
        (dict(audio_encoder="mfcc"), "valid choices are 'resnet1d', 'whisper', 'wavlm'"),
        (dict(decoder_type="lstm"), "valid choices are 'transformer', 'llm', 'whisper-decoder'"),
        (dict(fusion_type="mul", audio_encoder="resnet1d"), "valid choices are 'concat', 'add', 'gated'"),
        (dict(vision_encoder=None, audio_encoder=None), "needs at least one encoder"),
        (dict(modality="lips"), "valid choices are 'video', 'audio', 'audiovisual'"),
        (dict(ctc_weight=1.5), "ctc_weight"),
        (dict(hidden_size=30, encoder_attention_heads=4), "divisible"),
    ],
)
def test_bad_config_raises_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MMAVSRConfig(**kwargs)


def test_missing_modality_input_raises_a_clear_error():
    model = build("audiovisual")
    video_only = {k: v for k, v in make_inputs("video", FRAMES).items()}
    with pytest.raises(ValueError, match=r"audiovisual model needs `input_features` \(audio\)"):
        model(**video_only, labels=make_labels(TOKENS))
    with pytest.raises(ValueError, match="batch, frames, channels, height, width"):
        build("video")(pixel_values_videos=torch.zeros(2, 5, 24, 24), labels=make_labels(TOKENS))


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_an_input_the_model_has_no_encoder_for_is_refused(modality):
    model = build(modality)
    inputs = make_inputs(modality, FRAMES)
    other = make_inputs("audiovisual", FRAMES)
    extra = {k: v for k, v in other.items() if k not in inputs}
    name = "input_features" if modality == "video" else "pixel_values_videos"
    missing = "audio" if modality == "video" else "video"
    message = rf"This {modality} model has no {missing} encoder, so it cannot read `{name}`"
    with pytest.raises(ValueError, match=message):
        model(**inputs, **extra, labels=make_labels(TOKENS))
    with pytest.raises(ValueError, match=message):
        model.generate(**inputs, **extra, max_new_tokens=3)
    mask = "attention_mask" if modality == "video" else "video_attention_mask"
    with pytest.raises(ValueError, match=f"cannot read `{mask}`"):
        model.generate(**inputs, **{mask: extra[mask]}, max_new_tokens=3)
    assert model.config.input_streams == (modality,)


def test_sub_configs_are_declared_and_the_text_config_is_the_decoders():
    config = tiny_config("audiovisual")
    assert set(MMAVSRConfig.sub_configs) == {"text_config", "vision_config", "audio_config"}
    assert config.get_text_config() is config.text_config
    assert config.get_text_config(decoder=True) is config.text_config
    assert config.input_streams == ("video", "audio")
    # the attention implementation asked for reaches the decoder's config (a sub-config), as in composite models
    model = MMAVSRForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    assert model.config.text_config._attn_implementation == "eager"


def test_trainers_own_checkpoint_loading_restores_the_weights(tmp_path):
    """Trainer._load_from_checkpoint reads config.json with the base PreTrainedConfig (a version check): the saved
    MMAVSR config must pass it, so that resuming needs no override of its own."""
    from transformers import Trainer, TrainingArguments

    model = build("audiovisual")
    model.save_pretrained(tmp_path / "checkpoint-1")
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    Trainer(model=model, args=args)._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("modality", ["video", "audiovisual"])
def test_hidden_states_and_attentions_are_returned_as_whisper_returns_them(modality):
    model = build(modality)
    inputs, labels = make_inputs(modality, FRAMES), make_labels(TOKENS)
    plain = model(**inputs, labels=labels)
    assert plain.encoder_hidden_states is None and plain.decoder_attentions is None
    out = model(**inputs, labels=labels, output_hidden_states=True, output_attentions=True)
    # the same model (the weights are asked of the eager kernel, which may round differently from sdpa)
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=0)
    batch, frames, steps, heads = len(FRAMES), max(FRAMES), labels.shape[1], 4
    config = model.config
    # the Conformer's input and each layer's output, the last one the encoder's output; one weight map per layer
    assert len(out.encoder_hidden_states) == config.encoder_layers + 1
    assert all(h.shape == (batch, frames, config.hidden_size) for h in out.encoder_hidden_states)
    assert torch.equal(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    assert [a.shape for a in out.encoder_attentions] == [(batch, heads, frames, frames)] * config.encoder_layers
    # padded frames get no attention; each row of weights sums to one
    for weights in out.encoder_attentions:
        assert torch.all(weights[1, :, :, FRAMES[1] :] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    layers = config.text_config.num_hidden_layers
    assert len(out.decoder_hidden_states) == layers + 1
    assert all(h.shape == (batch, steps, config.text_config.d_model) for h in out.decoder_hidden_states)
    assert [a.shape for a in out.decoder_attentions] == [(batch, heads, steps, steps)] * layers
    assert [a.shape for a in out.cross_attentions] == [(batch, heads, steps, frames)] * layers
    assert torch.all(out.decoder_attentions[0].triu(1) == 0)  # causal
    assert torch.all(out.cross_attentions[0][1, :, :, FRAMES[1] :] == 0)
    # the config's defaults apply when a call leaves the flags out
    model.config.output_hidden_states = True
    assert len(model(**inputs, labels=labels).encoder_hidden_states) == config.encoder_layers + 1
    model.config.output_hidden_states = False
    encoder = model.get_encoder()(**inputs, output_hidden_states=True)
    for ours, expected in zip(encoder.hidden_states, out.encoder_hidden_states, strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_return_dict_false_gives_a_tuple_in_the_outputs_order():
    model = build("audiovisual")
    inputs, labels = make_inputs("audiovisual", FRAMES), make_labels(TOKENS)
    out = model(**inputs, labels=labels, output_hidden_states=True)
    as_tuple = model(**inputs, labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple())
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
    encoder_tuple = model.get_encoder()(**inputs, return_dict=False)
    assert isinstance(encoder_tuple, tuple) and torch.equal(encoder_tuple[0], out.encoder_last_hidden_state)
    model.config.return_dict = False
    assert isinstance(model.model(**inputs, decoder_input_ids=labels.clamp(min=0)), tuple)
    # generate() asks the model for dicts whatever the config says
    assert model.generate(**inputs, num_beams=2, max_new_tokens=3).shape[0] == len(FRAMES)


def test_generate_returns_the_encoder_and_decoder_states_asked_for():
    model = build("audiovisual")
    inputs = make_inputs("audiovisual", FRAMES)
    plain = model.generate(**inputs, num_beams=3, max_new_tokens=4)
    out = model.generate(
        **inputs,
        num_beams=3,
        max_new_tokens=4,
        output_hidden_states=True,
        output_attentions=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, plain)
    assert len(out.encoder_hidden_states) == model.config.encoder_layers + 1
    assert len(out.encoder_attentions) == model.config.encoder_layers
    steps = out.sequences.shape[1] - 1
    assert len(out.decoder_hidden_states) == len(out.cross_attentions) == steps
    # one step's cross-attention: every beam's own rows (the beams share one copy of the encoder's keys)
    assert out.cross_attentions[1][0].shape == (len(FRAMES) * 3, 4, 1, max(FRAMES))


@pytest.mark.parametrize("modality, expected", [("video", 250_383_410), ("audio", 243_049_202)])
def test_released_configs_have_auto_avsr_parameter_counts(modality, expected):
    with torch.device("meta"):
        model = MMAVSRForConditionalGeneration(MMAVSRConfig(modality=modality))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_encoder_frame_sees_its_own_input(modality):
    """Changing the input of one real frame changes the features of that frame (masks hide only padding)."""
    encoder = build(modality).model.encoder
    inputs = make_inputs(modality, FRAMES)
    before = encoder(**inputs).last_hidden_state
    for row, frames in enumerate(FRAMES):
        last = frames - 1
        changed = {k: v.clone() for k, v in inputs.items()}
        if "pixel_values_videos" in changed:
            changed["pixel_values_videos"][row, last] += 1.0
        if "input_features" in changed:
            changed["input_features"][row, last * 640 : frames * 640] += 1.0
        after = encoder(**changed).last_hidden_state
        assert (after[row, last] - before[row, last]).abs().max() > 1e-3
        # and the padded tail of the row changes nothing: masking made it invisible
        torch.testing.assert_close(after[1 - row], before[1 - row])


def test_processing_names_are_reexported_from_the_model_package():
    import mmavsr_processing
    import modeling_mmavsr

    for name in mmavsr_processing.__all__:
        assert getattr(modeling_mmavsr, name) is getattr(mmavsr_processing, name)
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        modeling_mmavsr.NotAThing


def test_video_frontend_cpu_convolution_equals_the_3d_convolution():
    # on CPU the 3D conv runs as a 2D conv over stacked temporal neighbours: same weights, same result
    from modeling_mmavsr.modeling_mmavsr_vision import MMAVSRVideoResNet

    torch.manual_seed(0)
    frontend = MMAVSRVideoResNet(tiny_config("video"))
    video = torch.randn(2, 1, 7, 24, 24)
    torch.testing.assert_close(frontend.conv3d_as_conv2d(video), frontend.conv3d(video), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 16), (40, 1, 16), (2, 7, 16), (300, 16), "transposed"])
@pytest.mark.parametrize("bias", [True, False])
def test_decoding_linear_equals_nn_linear(shape, bias):
    """MMAVSRLinear's inference path (oneDNN's packed weight, which the x86 builds of torch have) gives nn.Linear's
    output, also for an input that is a transposed view; with gradients it trains as nn.Linear does."""
    from modeling_mmavsr.cpu_decoding_mmavsr import ONEDNN_LINEAR, MMAVSRLinear

    torch.manual_seed(0)
    ours = MMAVSRLinear(16, 24, bias=bias)
    reference = torch.nn.Linear(16, 24, bias=bias)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(16, 5).t() if shape == "transposed" else torch.randn(shape)
    with torch.no_grad():
        assert ours.uses_packed_weight(x) == ONEDNN_LINEAR
        got, expected = ours(x), reference(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not ours.uses_packed_weight(x.requires_grad_())
    ours(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)


def test_decoding_linear_follows_changes_of_its_weight():
    """The packed copy is made again after an optimizer step, an in-place edit, `load_state_dict` and a new weight
    tensor, so inference always uses the current weight; the module still deep-copies and pickles after use."""
    from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRLinear

    torch.manual_seed(0)
    ours = MMAVSRLinear(16, 24).eval()
    x = torch.randn(40, 1, 16)

    def assert_current():
        with torch.no_grad():
            expected = torch.nn.functional.linear(x, ours.weight, ours.bias)
            torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)

    assert_current()
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    ours(x).square().sum().backward()  # gradients enabled: nn.Linear's path
    optimizer.step()
    assert_current()
    with torch.no_grad():
        ours.weight.mul_(-2.0)
    assert_current()
    ours.load_state_dict({"weight": torch.randn(24, 16), "bias": torch.randn(24)})
    assert_current()
    ours.weight = torch.nn.Parameter(torch.randn(24, 16))
    assert_current()
    copied = pickle.loads(pickle.dumps(copy.deepcopy(ours)))
    with torch.no_grad():
        torch.testing.assert_close(copied(x), ours(x))


def test_decoding_linear_built_under_inference_mode():
    """A layer built under `torch.inference_mode` (its weight keeps no version counter) runs nn.Linear's path."""
    from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRLinear

    with torch.inference_mode():
        ours = MMAVSRLinear(16, 24)
        x = torch.randn(40, 16)
        assert not ours.uses_packed_weight(x)
        torch.testing.assert_close(ours(x), torch.nn.functional.linear(x, ours.weight, ours.bias))


def test_decoding_linear_refuses_a_wrong_width():
    """An input whose last dimension is not `in_features` fails as nn.Linear does, even when its size would reshape."""
    from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRLinear

    with torch.no_grad(), pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        MMAVSRLinear(16, 24)(torch.randn(2, 32))


@pytest.mark.parametrize("training", [False, True])
def test_decoder_feed_forward_equals_the_plain_layers(training):
    """The decoder's feed-forward (MMAVSRLinear layers) gives the plain Linear -> ReLU -> Linear in inference; in
    training mode without gradients its dropout still applies."""
    from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRLinear
    from modeling_mmavsr.modeling_mmavsr_layers import MMAVSRFeedForward

    torch.manual_seed(0)
    ours = MMAVSRFeedForward(16, 48, dropout=0.5, linear=MMAVSRLinear).train(training)
    x = torch.randn(40, 1, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        got = ours(x)
        torch.manual_seed(1)
        linear = torch.nn.functional.linear
        inner = torch.nn.functional.dropout(torch.relu(linear(x, ours.w_1.weight, ours.w_1.bias)), 0.5, training)
        expected = linear(inner, ours.w_2.weight, ours.w_2.bias)
    assert got.shape == (40, 1, 16) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
