"""The LLM prefix decoder and the Whisper decoder with tiny random Llama / Whisper configs; LoRA on the CPU path."""

import json
import logging
import math
import warnings

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from safetensors.torch import load_file
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperDecoder
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

from .common import make_inputs, word_tokenizer


FRAMES = [12, 7]
TOKENS = [[3, 4, 5, 6], [7, 8]]
EOS, START = 2, 9
INSTRUCTION_IDS = [10, 11, 12]
LLM_PROMPT = [13, START]  # the prompt's tail after the features; its last token starts the text
WHISPER_PROMPT = [30, 31, 32, 33]  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
CTC_TOKENS = [[5, 6, 7], [8, 9]]
NO_DROPOUT = dict(encoder_dropout=0.0, positional_dropout=0.0, ctc_dropout=0.0)


def llama_config(**overrides) -> dict:
    values = dict(
        model_type="llama",
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return values | overrides


def whisper_config(**overrides) -> dict:
    values = dict(
        model_type="whisper",
        vocab_size=40,
        d_model=32,
        decoder_layers=2,
        encoder_layers=2,
        decoder_attention_heads=4,
        encoder_attention_heads=4,
        decoder_ffn_dim=64,
        encoder_ffn_dim=64,
        max_target_positions=32,
        max_source_positions=64,
        pad_token_id=EOS,
        bos_token_id=EOS,
        eos_token_id=EOS,
        decoder_start_token_id=WHISPER_PROMPT[0],
        suppress_tokens=None,
        begin_suppress_tokens=None,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return values | overrides


# a decoder choice, or a variant of one: (decoder_type, config values); the LLM reading compressed encoder frames
VARIANTS = {
    "llm-stacked": ("llm", dict(llm_compression_rates={"audio": 3})),  # groups of 3 frames concatenated
    "llm-pooled": ("llm", dict(llm_compression="pool", llm_compression_rates={"audio": 4})),  # means of 4 frames
    "llm-query": ("llm", dict(llm_compression="query", llm_query_window=5, llm_num_queries=2)),  # 2 per 5 frames
}


def build(decoder, modality="audio", seed=0, hidden_size=32, **overrides) -> MMAVSRForConditionalGeneration:
    decoder, variant = VARIANTS.get(decoder, (decoder, {}))
    overrides = variant | overrides
    if decoder == "llm":
        decoder_values = dict(
            text_config=llama_config(), instruction_ids=INSTRUCTION_IDS, decoder_prompt_ids=LLM_PROMPT
        )
    else:
        decoder_values = dict(text_config=whisper_config(), decoder_prompt_ids=WHISPER_PROMPT)
    values = dict(
        modality=modality,
        decoder_type=decoder,
        frontend_channels=4,
        frontend_layers=[1, 1, 1, 1],
        fusion_hidden_size=48,
        hidden_size=hidden_size,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        conv_kernel_size=5,
        ctc_vocab_size=12,
        ctc_weight=0.1,  # the separate CTC head trains on `ctc_labels` (its default weight is 0)
        label_smoothing=0.0,
        **NO_DROPOUT,
    )
    values.update(decoder_values)
    values.update(overrides)
    torch.manual_seed(seed)
    return MMAVSRForConditionalGeneration(MMAVSRConfig(**values)).eval()


def pad(sequences, end=None) -> torch.Tensor:
    """Token lists (+ `end`) -> (B, L) int64 padded with -100."""
    rows = [s + ([end] if end is not None else []) for s in sequences]
    out = torch.full((len(rows), max(map(len, rows))), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def texts(generated: torch.Tensor, prompt_length: int) -> list[list[int]]:
    return [[t for t in row[prompt_length:] if t not in (EOS, 0)] for row in generated.tolist()]  # eos, padding


def train(model, inputs, steps, lr=3e-3, **batch):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**inputs, **batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


DECODERS = ("llm", "llm-stacked", "llm-pooled", "llm-query", "whisper-decoder")
PROMPT_LENGTH = {name: 0 for name in DECODERS} | {"whisper-decoder": len(WHISPER_PROMPT)}  # the LLM: new tokens only


@pytest.mark.parametrize("decoder", DECODERS)
def test_logits_align_with_labels_and_padding_changes_nothing(decoder):
    model = build(decoder)
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    batch = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
    assert batch.logits.shape == (2, labels.shape[1], 40)
    assert batch.ctc_logits.shape == (2, max(FRAMES), 12)  # the CTC head keeps its own vocabulary
    torch.testing.assert_close(batch.loss, 0.1 * batch.ctc_loss + 0.9 * batch.att_loss)
    for row, frames in enumerate(FRAMES):
        alone_inputs = {k: v[row : row + 1, : int(inputs["attention_mask"][row].sum())] for k, v in inputs.items()}
        row_labels = labels[row : row + 1, : len(TOKENS[row]) + 1]
        alone = model(**alone_inputs, labels=row_labels, ctc_labels=pad(CTC_TOKENS[row : row + 1]))
        torch.testing.assert_close(batch.logits[row, : row_labels.shape[1]], alone.logits[0], atol=1e-5, rtol=0)
        # and the clip's attention loss (summed over its tokens), from its rows of the batch's logits
        row_loss = nn.functional.cross_entropy(batch.logits[row, : row_labels.shape[1]], row_labels[0], reduction="sum")
        torch.testing.assert_close(row_loss, alone.att_loss, atol=1e-5, rtol=0)


def llm_sequence_lengths(model, inputs, labels) -> list[int]:
    """How many embeddings the LLM reads, per call of its forward, in one forward pass of the model."""
    lengths = []
    hook = model.model.decoder.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS[: labels.shape[0]]))
    finally:
        hook.remove()
    return lengths


COMPRESSIONS = [
    ("stack", {"llm_compression_rates": {"audio": 2}}),
    ("stack", {"llm_compression_rates": {"audio": 5, "video": 2}}),  # another modality's rate stays unused
    ("pool", {"llm_compression_rates": {"audio": 2}}),
    ("pool", {"llm_compression_rates": {"audio": 4}}),
    ("query", {"llm_query_window": 4, "llm_num_queries": 1}),
    ("query", {"llm_query_window": 6, "llm_num_queries": 3}),
]


@pytest.mark.parametrize("compression, options", COMPRESSIONS)
def test_llm_reads_ceil_frames_over_the_rate(compression, options):
    """T frames reach the LLM as ceil(T / k) embeddings (stack, pool), ceil(T / window) * queries (query), alone
    and in a padded batch; a stacking projector is k times as wide."""
    plain, compressed = build("llm"), build("llm", llm_compression=compression, **options)
    rate = options.get("llm_compression_rates", {}).get("audio")
    width = plain.config.hidden_size * (rate if compression == "stack" else 1)
    assert compressed.model.decoder.projector.linear_1.in_features == width
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    for row, frames in enumerate(FRAMES):
        if compression == "query":
            expected = math.ceil(frames / options["llm_query_window"]) * options["llm_num_queries"]
            assert compressed.config.llm_compression_rate == options["llm_query_window"] / options["llm_num_queries"]
        else:
            expected = math.ceil(frames / rate)
            assert compressed.config.llm_compression_rate == rate
        assert compressed.config.llm_num_embeddings(frames) == expected
        alone = {k: v[row : row + 1, : int(inputs["attention_mask"][row].sum())] for k, v in inputs.items()}
        row_labels = labels[row : row + 1, : len(TOKENS[row]) + 1]
        [full] = llm_sequence_lengths(plain, alone, row_labels)
        assert llm_sequence_lengths(compressed, alone, row_labels) == [full - frames + expected]
    [batch] = llm_sequence_lengths(compressed, inputs, labels)
    assert batch == len(INSTRUCTION_IDS) + compressed.config.llm_num_embeddings(max(FRAMES)) + len(LLM_PROMPT) + 4


@pytest.mark.parametrize("decoder", ["llm", "llm-stacked", "llm-pooled", "llm-query"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_clip_generates_the_same_alone_and_in_a_padded_batch(decoder, num_beams):
    """Random weights (no training): greedy and beam search give each clip of a padded batch the tokens it gets alone,
    at every compression."""
    model = build(decoder, seed=2)
    inputs = make_inputs("audio", FRAMES, seed=4)
    batch = texts(model.generate(**inputs, num_beams=num_beams, max_new_tokens=6, min_new_tokens=6), 0)
    for row in range(len(FRAMES)):
        alone = {k: v[row : row + 1, : int(inputs["attention_mask"][row].sum())] for k, v in inputs.items()}
        single = texts(model.generate(**alone, num_beams=num_beams, max_new_tokens=6, min_new_tokens=6), 0)
        assert single == [batch[row]] and len(batch[row]) > 0


def test_llm_query_compressor_gives_each_query_its_own_embedding():
    """The learned queries start distinct (equal ones would train alike and stay equal): a window's queries read
    it differently; a window's padded frames are not attended to."""
    model = build("llm", llm_compression="query", llm_query_window=4, llm_num_queries=3)
    compressor = model.model.decoder.compressor
    assert compressor.queries.std() > 0 and not torch.equal(compressor.queries[0], compressor.queries[1])
    states, mask = torch.randn(1, 6, 32), torch.tensor([[True] * 6])
    out = model.model.decoder.compress(states, mask)  # 2 windows x 3 queries
    assert out.shape == (1, 6, 32) and not torch.allclose(out[0, 0], out[0, 1])
    # two padded frames fill the second window: its queries read the same two real frames
    padded = torch.cat([states, torch.randn(1, 2, 32)], 1)
    padded_out = model.model.decoder.compress(padded, torch.tensor([[True] * 6 + [False] * 2]))
    torch.testing.assert_close(padded_out, out, atol=1e-6, rtol=0)


def test_llm_pool_averages_the_real_frames_of_each_group():
    """The projector of a pooling model reads the mean of each group's real frames: a lone clip's last, partial
    group averages only its own frames, and padding is never averaged in."""
    model = build("llm", llm_compression="pool", llm_compression_rates={"audio": 3})
    decoder = model.model.decoder
    states = torch.randn(2, 7, 32)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    pooled = decoder.compress(states, mask)
    assert pooled.shape == (2, 3, 32)
    torch.testing.assert_close(pooled[0, 2], states[0, 6])  # 7 frames: the last group is frame 6 alone
    torch.testing.assert_close(pooled[1, 1], states[1, 3:5].mean(0))  # frames 3, 4; frame 5 is padding
    assert decoder.feature_mask(mask).tolist() == [[True, True, True], [True, True, False]]


@pytest.mark.parametrize("decoder", ["llm-stacked", "llm-pooled", "llm-query"])
def test_compressed_llm_saves_and_reloads_exactly(decoder, tmp_path):
    model = build(decoder)
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    model, _ = train(model, inputs, 2, labels=labels, ctc_labels=pad(CTC_TOKENS))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    for name in ("llm_compression", "llm_compression_rates", "llm_query_window", "llm_num_queries", "ctc_weight"):
        assert saved[name] == getattr(model.config, name) == getattr(loaded.config, name), name
    with torch.no_grad():
        expected = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
        actual = loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
    torch.testing.assert_close(actual.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=0, rtol=0)
    assert torch.equal(
        model.generate(**inputs, num_beams=3, max_new_tokens=5),
        loaded.generate(**inputs, num_beams=3, max_new_tokens=5),
    )


def test_a_config_saved_with_llm_stack_factor_loads_with_identical_outputs(tmp_path):
    """A folder from before `llm_compression`: `llm_stack_factor` 3 and no `ctc_weight` (0.1 was every config's
    default then, and left out of config.json)."""
    model = build("llm-stacked")
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for name in ("llm_compression", "llm_compression_rates", "llm_query_window", "llm_num_queries", "ctc_weight"):
        config.pop(name, None)
    (tmp_path / "config.json").write_text(json.dumps({**config, "llm_stack_factor": 3}))
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (loaded.config.llm_compression, loaded.config.llm_compression_rates) == ("stack", {"audio": 3})
    assert loaded.config.ctc_weight == 0.1 and not hasattr(loaded.config, "llm_stack_factor")
    with torch.no_grad():
        expected = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
        actual = loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
    torch.testing.assert_close(actual.logits, expected.logits, atol=0, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, atol=0, rtol=0)
    # and the legacy keyword in the constructor: the same model
    assert build("llm", llm_stack_factor=3).config.llm_compression_rates == {"audio": 3}
    assert "llm_stack_factor" not in json.loads(loaded.config.to_json_string())


def test_llm_compression_options_are_checked_and_only_for_the_llm():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="`llm_stack_factor` must be >= 1"):
            build("llm", llm_stack_factor=bad)
    with pytest.raises(ValueError, match="groups encoder frames for an LLM decoder; .*'whisper-decoder'"):
        build("whisper-decoder", llm_stack_factor=2)
    refusals = [
        (dict(llm_compression="mean"), "Unknown llm_compression 'mean'"),
        (dict(llm_compression_rates={"audio": 0}), r"llm_compression_rates\['audio'\]` must be an integer >= 1"),
        (dict(llm_compression_rates={"audio": 2.5}), "must be an integer >= 1"),
        (dict(llm_compression_rates={"speech": 2, "audio": 2}), "keyed by modality .*'speech'"),
        (dict(llm_compression_rates={"video": 2}), "no rate for this model's modality 'audio'"),
        (dict(llm_compression="query", llm_compression_rates={"audio": 4}), "would not apply"),
        (dict(llm_compression="query", llm_num_queries=0), "`llm_num_queries` must be an integer >= 1"),
        (dict(llm_query_window=4), "sets the query compressor; .*'stack'"),
        (dict(llm_compression="pool", llm_stack_factor=2), "is the rate of llm_compression='stack'"),
        (dict(llm_stack_factor=2, llm_compression_rates={"audio": 3}), "disagrees with llm_compression_rates"),
    ]
    for options, message in refusals:
        with pytest.raises(ValueError, match=message):
            build("llm", **options)
    with pytest.raises(StrictDataclassFieldValidationError, match="llm_compression_rates"):
        build("llm", llm_compression_rates=4)  # the config's type check: a dict keyed by modality
    with pytest.raises(ValueError, match="compression of the encoder frames; this config has .*'whisper-decoder'"):
        build("whisper-decoder", llm_compression="pool")
    # the audio-visual model fuses its streams first: its own rate applies, not the audio or the video one
    with pytest.raises(ValueError, match="no rate for this model's modality 'audiovisual'"):
        build("llm", modality="audiovisual", llm_compression_rates={"audio": 4, "video": 2})
    assert (
        build("llm", modality="audiovisual", llm_compression_rates={"audiovisual": 4}).config.llm_compression_rate == 4
    )
    assert build("llm").config.llm_compression_rates == {"audio": 1}  # default: one embedding per frame
    query = build("llm", llm_compression="query").config
    assert (query.llm_query_window, query.llm_num_queries) == (4, 1)


HEADER = "{% if add_generation_prompt %}[assistant] {% endif %}"
SYSTEM_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}" + HEADER
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m.role }}] {{ m.content }} {% endfor %}" + HEADER
)
# as SmolLM2's: a default system prompt when the messages hold none
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and messages[0].role != 'system' %}[system] Be helpful. {% endif %}"
    "[{{ m.role }}] {{ m.content }} {% endfor %}" + HEADER
)
# as Llama 3's: bos, then the turns
BOS_TEMPLATE = "<s> " + DEFAULT_SYSTEM_TEMPLATE


@pytest.mark.parametrize(
    "template, system_prompt, before",
    [
        (SYSTEM_TEMPLATE, None, "[user] Transcribe."),
        (DEFAULT_SYSTEM_TEMPLATE, None, "[user] Transcribe."),
        (BOS_TEMPLATE, None, "<s> [user] Transcribe."),
        (NO_SYSTEM_TEMPLATE, None, "[user] Transcribe."),
        (None, None, "Transcribe."),
        (SYSTEM_TEMPLATE, "Be brief.", "[system] Be brief. [user] Transcribe."),
        (DEFAULT_SYSTEM_TEMPLATE, "Be brief.", "[system] Be brief. [user] Transcribe."),
        (None, "Be brief.", "Be brief. Transcribe."),
    ],
)
def test_llm_prompt_has_a_system_turn_only_when_asked(template, system_prompt, before):
    from modeling_mmavsr.modeling_mmavsr_decoder_loading import llm_prompt_ids

    tokenizer = word_tokenizer(["[system]", "[user]", "[assistant]", "Transcribe.", "Be", "brief.", "helpful."])
    tokenizer.chat_template = template
    instruction_ids, prompt_ids = llm_prompt_ids(tokenizer, "Transcribe.", system_prompt)
    assert tokenizer.decode(instruction_ids) == before
    assert tokenizer.decode(prompt_ids) == ("[assistant]" if template else "<s>")  # a template's header, or bos


def test_a_system_prompt_without_its_rendered_ids_is_refused():
    with pytest.raises(ValueError, match="`system_prompt` is rendered into the prompt ids by the LLM's tokenizer"):
        build("llm", instruction_ids=None, system_prompt="Be brief.")
    with pytest.raises(ValueError, match="`system_prompt` belongs to the LLM decoder's prompt; .*'whisper-decoder'"):
        build("whisper-decoder", system_prompt="Be brief.")


def test_a_system_prompt_the_template_cannot_render_is_refused():
    from modeling_mmavsr.modeling_mmavsr_decoder_loading import llm_prompt_ids

    tokenizer = word_tokenizer(["[user]", "[assistant]", "Transcribe."])
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(ValueError, match="system_prompt='Be brief.': the LLM's chat template cannot render"):
        llm_prompt_ids(tokenizer, "Transcribe.", "Be brief.")


def test_the_prompt_and_its_template_are_saved_and_rebuild_the_same_ids(tmp_path):
    from modeling_mmavsr.modeling_mmavsr_decoder_loading import llm_prompt_ids, set_instruction

    tokenizer = word_tokenizer(["[system]", "[user]", "[assistant]", "Transcribe.", "Be", "brief.", "helpful."])
    tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    model = build("llm", text_config=llama_config(vocab_size=len(tokenizer)))
    set_instruction(model, tokenizer, "Transcribe.", system_prompt="Be brief.")
    ids = (model.config.instruction_ids, model.config.decoder_prompt_ids)
    model.save_pretrained(tmp_path)
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path)
    config = loaded.config
    assert (config.instruction, config.system_prompt) == ("Transcribe.", "Be brief.")
    assert config.llm_chat_template == DEFAULT_SYSTEM_TEMPLATE
    assert (config.instruction_ids, config.decoder_prompt_ids) == ids
    plain = word_tokenizer(["[system]", "[user]", "[assistant]", "Transcribe.", "Be", "brief.", "helpful."])
    rebuilt = llm_prompt_ids(plain, config.instruction, config.system_prompt, config.llm_chat_template)
    assert rebuilt == ids  # the saved template, not the tokenizer's (none here), renders the prompt
    assert tokenizer.decode(ids[0]) == "[system] Be brief. [user] Transcribe."
    # generate starts from the saved prompt: the model reads the same sequence as before saving
    inputs = make_inputs("audio", FRAMES)
    assert torch.equal(model.generate(**inputs, max_new_tokens=3), loaded.eval().generate(**inputs, max_new_tokens=3))


def test_llm_loss_covers_only_the_target_tokens():
    model = build("llm", ctc_weight=0.0)
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    out = model(**inputs, labels=labels)
    log_probs = torch.log_softmax(out.logits, -1)
    keep = labels != -100
    expected = -log_probs[keep].gather(-1, labels[keep][:, None]).sum() / 2
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("decoder", DECODERS)
def test_overfits_two_samples_until_generate_returns_them(decoder):
    model = build(decoder, seed=1)
    inputs = make_inputs("audio", FRAMES, seed=3)
    model, losses = train(model, inputs, 40, lr=5e-3, labels=pad(TOKENS, EOS), ctc_labels=pad(CTC_TOKENS))
    assert losses[-1] < 0.2 * losses[0]
    for num_beams in (1, 3):
        generated = model.generate(**inputs, num_beams=num_beams, max_new_tokens=8)
        assert texts(generated, PROMPT_LENGTH[decoder]) == TOKENS, f"loss {losses[-1]:.3f}, beams {num_beams}"
        # a padded batch gives each utterance its own output
        for row, frames in enumerate(FRAMES if num_beams == 1 else []):
            alone = {k: v[row : row + 1, : int(inputs["attention_mask"][row].sum())] for k, v in inputs.items()}
            single = model.generate(**alone, num_beams=num_beams, max_new_tokens=8)
            assert texts(single, PROMPT_LENGTH[decoder]) == [TOKENS[row]]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_on_a_padded_batch_warns_of_nothing(decoder, num_beams):
    """generate() gets the mask of the encoder frames the decoder attends to: it does not warn that it cannot infer
    one where the pad token is the eos token (SmolLM2's, Whisper's), nor of a beam-search flag in a greedy search."""
    model = build(decoder, text_config=llama_config(pad_token_id=EOS)) if "llm" in decoder else build(decoder)
    assert model.generation_config.pad_token_id == model.generation_config.eos_token_id == EOS
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: forget earlier tests' warnings
    with CaptureLogger(hf_logging.get_logger("transformers")) as captured:
        model.generate(**make_inputs("audio", FRAMES), num_beams=num_beams, max_new_tokens=4)
    assert captured.out == ""


@pytest.mark.parametrize("decoder", DECODERS)
def test_kv_cache_gives_the_same_hypotheses(decoder):
    model = build(decoder)
    inputs = make_inputs("audio", FRAMES)
    for num_beams in (1, 3):
        cached = model.generate(**inputs, num_beams=num_beams, max_new_tokens=6, use_cache=True)
        uncached = model.generate(**inputs, num_beams=num_beams, max_new_tokens=6, use_cache=False)
        assert torch.equal(cached, uncached)


def test_whisper_decoder_is_whispers_own_on_unpadded_input():
    model = build("whisper-decoder")
    reference = WhisperDecoder(model.config.text_config).eval()
    reference.load_state_dict(model.model.decoder.whisper.state_dict())
    encoder_states = torch.randn(2, 9, 32)
    ids = torch.tensor([WHISPER_PROMPT + [5, 6], WHISPER_PROMPT + [7, 8]])
    ours = model.model.decoder(ids, encoder_states).last_hidden_state
    theirs = reference(input_ids=ids, encoder_hidden_states=encoder_states).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    assert model.lm_head.weight is model.model.decoder.whisper.embed_tokens.weight  # Whisper ties proj_out


def test_whisper_decoder_projects_a_narrower_encoder_and_strips_given_prompts():
    model = build("whisper-decoder", hidden_size=16)
    assert model.model.decoder.projector.weight.shape == (32, 16)
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    prompt = torch.tensor([WHISPER_PROMPT] * 2)
    reference = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).loss
    # labels as Whisper's tokenizer writes them (forced prompt first), or with <|startoftranscript|> dropped
    for given in (torch.cat([prompt, labels], 1), torch.cat([prompt[:, 1:], labels], 1)):
        torch.testing.assert_close(model(**inputs, labels=given, ctc_labels=pad(CTC_TOKENS)).loss, reference)


@pytest.mark.parametrize("modality", ["video", "audiovisual"])
def test_llm_decoder_takes_every_modality(modality):
    model = build("llm", modality=modality, ctc_weight=0.0)
    out = model(**make_inputs(modality, FRAMES), labels=pad(TOKENS, EOS))
    assert torch.isfinite(out.loss)
    assert model.config.instruction.startswith("Transcribe what the speaker says")


def test_ctc_needs_its_own_labels_and_joint_decoding_is_refused():
    model = build("llm")
    inputs = make_inputs("audio", FRAMES)
    with pytest.raises(ValueError, match="pass `ctc_labels`"):
        model(**inputs, labels=pad(TOKENS, EOS))
    with pytest.raises(ValueError, match="ctc_vocabulary='decoder'"):
        model.generate(**inputs, ctc_weight=0.3)
    with pytest.raises(ValueError, match="needs the LLM's configuration"):
        MMAVSRConfig(modality="audio", decoder_type="llm")
    with pytest.raises(ValueError, match="use_qlora"):
        MMAVSRConfig(modality="audio", use_qlora=True)


@pytest.mark.parametrize("decoder", DECODERS)
def test_ctc_over_the_decoders_tokens_trains_on_the_labels(decoder):
    model = build(decoder, ctc_vocabulary="decoder", ctc_vocab_size=None, ctc_weight=0.3)
    vocab = model.config.vocab_size
    assert model.ctc_head.ctc_lo.out_features == vocab + 1 and model.config.ctc_blank_id == vocab
    inputs = make_inputs("audio", FRAMES)
    out = model(**inputs, labels=pad(TOKENS, EOS))  # no ctc_labels: the labels are the CTC targets, eos dropped
    log_probs = torch.log_softmax(out.ctc_logits, -1).transpose(0, 1)
    frames = out.encoder_attention_mask.sum(-1)
    targets = torch.tensor([t for row in TOKENS for t in row])
    expected = (
        torch.nn.functional.ctc_loss(
            log_probs, targets, frames, torch.tensor([len(r) for r in TOKENS]), blank=vocab, reduction="sum"
        )
        / 2
    )
    torch.testing.assert_close(out.ctc_loss, expected)
    with pytest.raises(ValueError, match="means a CTC head of 41 outputs"):
        build(decoder, ctc_vocabulary="decoder", ctc_vocab_size=40)


@pytest.mark.parametrize("decoder", DECODERS)
def test_joint_ctc_decoding_with_the_decoders_vocabulary(decoder):
    model = build(decoder, seed=1, ctc_vocabulary="decoder", ctc_vocab_size=None, ctc_weight=0.5)
    inputs = make_inputs("audio", FRAMES, seed=3)
    # behind the query compressor the CTC head needs more steps to decode alone (at 40: ctc loss 2.4, two words lost)
    steps = 60 if decoder == "llm-query" else 40
    model, losses = train(model, inputs, steps, lr=5e-3, labels=pad(TOKENS, EOS))
    assert losses[-1] < 0.2 * losses[0]
    for ctc_weight in (0.3, 1.0):
        generated = model.generate(
            **inputs,
            num_beams=3,
            max_new_tokens=8,
            ctc_weight=ctc_weight,
            return_dict_in_generate=True,
            output_scores=True,
        )
        assert texts(generated.sequences, PROMPT_LENGTH[decoder]) == TOKENS
    # CTC alone (weight 1) scores a hypothesis by its CTC likelihood: the prompt's tokens (Whisper's four, the
    # LLM's tail) are no part of it, nor is the blank, which lies past the decoder's vocabulary
    with torch.no_grad():
        ctc_logits = model(**inputs, labels=pad(TOKENS, EOS)).ctc_logits
    log_probs = torch.log_softmax(ctc_logits, -1).transpose(0, 1)
    for row, tokens in enumerate(TOKENS):
        likelihood = -torch.nn.functional.ctc_loss(
            log_probs[: FRAMES[row], row : row + 1],
            torch.tensor([tokens]),
            torch.tensor([FRAMES[row]]),
            torch.tensor([len(tokens)]),
            blank=model.config.ctc_blank_id,
            reduction="sum",
        )
        torch.testing.assert_close(generated.sequences_scores[row], likelihood, atol=1e-4, rtol=1e-4)


def lora_model(**overrides):
    """Plain LoRA (full-precision LLM); QLoRA's 4-bit path is tested in test_qlora.py."""
    return build("llm", use_lora=True, qlora_r=4, qlora_alpha=8, lora_dropout=0.0, **overrides)


def test_lora_trains_adapters_and_encoder_not_the_llm_base():
    model = build("llm", qlora_r=4, qlora_alpha=8, lora_dropout=0.0)
    model.model.encoder.conformer.requires_grad_(False)  # a part frozen before the adapters stays frozen
    model.add_lora()  # over a full-precision LLM: plain LoRA
    assert model.config.use_lora and not model.config.use_qlora
    model.train()
    model(**make_inputs("audio", FRAMES), labels=pad(TOKENS, EOS), ctc_labels=pad(CTC_TOKENS)).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    lora = {n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}
    assert len(lora) == 2 * 2 * 7  # A and B of every attention and MLP projection of both layers
    assert {n for n in lora if "lora_B" in n} <= with_grad  # B starts at zero, so only B has a gradient at first
    llm_base = {
        n for n, _ in model.named_parameters() if n.startswith("model.decoder.language_model") and "lora_" not in n
    }
    assert llm_base and not (llm_base & with_grad)
    assert not any(n.startswith("model.encoder.conformer") for n in with_grad)
    for part in ("model.encoder.audio_frontend", "model.decoder.projector", "ctc_head"):
        assert any(n.startswith(part) for n in with_grad), part


def test_lora_save_load_round_trip_and_merge(tmp_path):
    model = lora_model()
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    model, _ = train(model, inputs, 3, labels=labels, ctc_labels=pad(CTC_TOKENS))
    expected = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    assert all("lora_" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in load_file(tmp_path / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    out = loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS))
    torch.testing.assert_close(out.logits, expected.logits, atol=0, rtol=0)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad and "language_model" in n} == {
        n for n, _ in loaded.named_parameters() if "lora_" in n
    }

    loaded.save_pretrained(tmp_path / "again")  # a model loaded with its adapter saves the same files again
    again = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "again").eval()
    torch.testing.assert_close(
        again(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits, expected.logits, atol=0, rtol=0
    )

    loaded.merge_lora()
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(
        loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits, expected.logits, atol=1e-5, rtol=0
    )
    loaded.save_pretrained(tmp_path / "merged")
    merged = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert not merged.config.use_qlora
    torch.testing.assert_close(
        merged(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits, expected.logits, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("decoder", DECODERS)
def test_save_load_round_trip_without_adapters(decoder, tmp_path):
    model = build(decoder)
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    expected = model(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits
    model.save_pretrained(tmp_path)
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(loaded.config.text_config).__name__ == ("LlamaConfig" if decoder.startswith("llm") else "WhisperConfig")
    assert loaded.config.decoder_prompt_ids == model.config.decoder_prompt_ids
    assert torch.equal(loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits, expected)
    assert torch.equal(loaded.generate(**inputs, max_new_tokens=4), model.generate(**inputs, max_new_tokens=4))


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_hidden_states_and_attentions(decoder):
    model = build(decoder)
    inputs, labels, ctc_labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS), pad(CTC_TOKENS)
    plain = model(**inputs, labels=labels, ctc_labels=ctc_labels)
    out = model(**inputs, labels=labels, ctc_labels=ctc_labels, output_hidden_states=True)
    assert torch.equal(out.logits, plain.logits)
    # every decoder position (prompt included) of the decoder's input and of each layer, the last one after the norm
    prompt = len(model.config.decoder_prompt_ids)
    width = model.config.text_config.hidden_size
    states = out.decoder_hidden_states
    assert len(states) == model.config.text_config.num_hidden_layers + 1
    assert all(h.shape == (len(FRAMES), prompt - 1 + labels.shape[1], width) for h in states)
    assert torch.equal(model.lm_head(states[-1][:, prompt - 1 :]), out.logits)
    if decoder.startswith("llm"):
        with pytest.raises(ValueError, match="decoder_type='llm' has no cross-attention to report"):
            model(**inputs, labels=labels, ctc_labels=ctc_labels, output_attentions=True)
        return
    with pytest.raises(ValueError, match="attn_implementation='eager'"):  # sdpa returns no weights
        model(**inputs, labels=labels, ctc_labels=ctc_labels, output_attentions=True)
    model.set_attn_implementation("eager")
    out = model(**inputs, labels=labels, ctc_labels=ctc_labels, output_attentions=True)
    steps, heads = prompt - 1 + labels.shape[1], model.config.text_config.decoder_attention_heads
    assert [a.shape for a in out.decoder_attentions] == [(len(FRAMES), heads, steps, steps)] * 2
    assert [a.shape for a in out.cross_attentions] == [(len(FRAMES), heads, steps, max(FRAMES))] * 2
    assert torch.all(out.cross_attentions[0][1, :, :, FRAMES[1] :] == 0)  # the shorter clip's padding


def test_legacy_decoder_name_builds_and_a_config_saved_with_it_loads(tmp_path):
    """`decoder` was the field's name before `decoder_type`: the constructor takes it, and a config.json holding it
    loads with the same decoder (its value may be any choice, here the LLM whose config differs most)."""
    values = build("llm").config.to_dict()
    values["decoder"] = values.pop("decoder_type")
    torch.manual_seed(0)
    legacy = MMAVSRForConditionalGeneration(MMAVSRConfig(**values)).eval()
    assert legacy.config.decoder_type == "llm"
    assert type(legacy.model.decoder).__name__ == type(build("llm").model.decoder).__name__
    saved = legacy.config.to_dict()
    assert saved["decoder_type"] == "llm" and "decoder" not in saved
    inputs, labels = make_inputs("audio", FRAMES), pad(TOKENS, EOS)
    expected = legacy(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits
    legacy.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    values = json.loads(config_file.read_text())
    values["decoder"] = values.pop("decoder_type")  # as written before the rename
    config_file.write_text(json.dumps(values))
    assert MMAVSRConfig.from_pretrained(tmp_path).decoder_type == "llm"
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.decoder_type == "llm" and not hasattr(loaded.config, "decoder")
    assert torch.equal(loaded(**inputs, labels=labels, ctc_labels=pad(CTC_TOKENS)).logits, expected)
    with pytest.raises(ValueError, match="legacy name of `decoder_type`"):
        MMAVSRConfig(modality="audio", decoder={"model_type": "llama"})


def _cache_pair(batch=3, heads=2, dim=4, **capacity):
    from transformers.cache_utils import DynamicLayer

    from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRAppendingCacheLayer

    return DynamicLayer(), MMAVSRAppendingCacheLayer(**capacity), lambda length: torch.randn(batch, heads, length, dim)


@pytest.mark.parametrize("capacity", [{}, {"initial_capacity": 1}, {"initial_capacity": 64}])
def test_appending_cache_layer_holds_what_concatenation_does(capacity):
    """Through growth past its first buffers (32 positions by default, 1, or room for all 46), beam reordering,
    cropping and batch selection, the in-place cache returns the keys and values DynamicLayer (concatenation)
    returns."""
    torch.manual_seed(0)
    reference, ours, states = _cache_pair(**capacity)
    steps = [("update", 5)] + [("update", 1), ("reorder", None)] * 40 + [("crop", -3), ("update", 1)]
    steps += [("select", torch.tensor([2, 0])), ("update", 2), ("reorder", None), ("update", 1)]
    for op, arg in steps:
        if op == "update":
            key, value = states(arg), states(arg)
            if ours.is_initialized and ours.keys.shape[0] == 2:
                key, value = key[:2], value[:2]
            expected = reference.update(key.clone(), value.clone())
            got = ours.update(key, value)
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), op
        elif op == "reorder":
            beam_idx = torch.randint(0, reference.keys.shape[0], (reference.keys.shape[0],))
            reference.reorder_cache(beam_idx)
            ours.reorder_cache(beam_idx)
        elif op == "crop":
            reference.crop(arg)
            ours.crop(arg)
        else:
            reference.batch_select_indices(arg)
            ours.batch_select_indices(arg)
        assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values), op
        assert ours.get_seq_length() == reference.get_seq_length()
    assert ours.get_seq_length() == 5 + 40 - 3 + 1 + 2 + 1


def test_appending_cache_layer_reorders_without_reallocating():
    """A beam step writes in place: after the first reorder the layer alternates between two pairs of buffers."""
    torch.manual_seed(0)
    _, ours, states = _cache_pair()
    ours.update(states(1), states(1))
    pointers = set()
    for _ in range(6):
        ours.reorder_cache(torch.tensor([1, 1, 0]))
        ours.update(states(1), states(1))
        pointers.add(ours.keys.data_ptr())
    assert len(pointers) == 2


@pytest.mark.parametrize("capacity, expected_buffers", [(None, 4), (50, 2)])
def test_appending_cache_layer_sized_for_the_search_never_grows(capacity, expected_buffers):
    """A search of 45 steps in a layer given room for 50 positions only ever alternates between its two pairs of
    buffers; with the default room (32) it has to move into two new, larger ones."""
    torch.manual_seed(0)
    _, ours, states = _cache_pair(**({} if capacity is None else {"initial_capacity": capacity}))
    pointers = set()
    for _ in range(45):
        ours.update(states(1), states(1))
        ours.reorder_cache(torch.tensor([2, 0, 1]))
        pointers.add(ours.keys.data_ptr())
    assert len(pointers) == expected_buffers
