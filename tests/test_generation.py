"""Joint CTC/attention decoding: the CTC prefix scorer and generate(ctc_weight=...)."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

import modeling_mmavsr.cpu_decoding_mmavsr as cpu_decoding
from modeling_mmavsr.cpu_decoding_mmavsr import MMAVSRAppendingCacheLayer, MMAVSRLinear, top_k_over_beams
from modeling_mmavsr.generation_mmavsr import (
    CTCPrefixScoreLogitsProcessor,
    CTCPrefixScorer,
    logsumexp_without_denormals,
)

from .common import EOS, MODALITIES, make_inputs, make_labels, select_row
from .test_modeling import FRAMES, TOKENS, build


def _run_prefix(scorer, tokens, rows=1):
    """Walk a token sequence through the scorer; return the prefix scores and the final eos score."""
    r, _ = scorer.initial_state(rows // scorer.log_probs.shape[0])
    last = torch.full((rows,), -1)
    prefix_scores = []
    for length, token in enumerate(tokens):
        candidates = torch.full((rows, 1), token)
        psi, states, _ = scorer.score(r, last, length, candidates)
        prefix_scores.append(psi[:, 0])
        r, last = states[:, :, :, 0], candidates[:, 0]
    _, _, psi_eos = scorer.score(r, last, len(tokens), torch.full((rows, 1), 1))
    return prefix_scores, psi_eos


def strip_special(ids) -> list[int]:
    """A generated row's tokens without padding (0) and eos."""
    return [t for t in ids.tolist() if t not in (0, EOS)]


@pytest.mark.parametrize("tokens", [[3], [3, 4, 5], [3, 3, 5], [7, 7, 7]])
def test_prefix_scorer_ends_in_the_ctc_likelihood(tokens):
    torch.manual_seed(0)
    frames, vocab = 9, 8
    log_probs = torch.log_softmax(torch.randn(1, frames, vocab), dim=-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([frames]))
    prefix_scores, psi_eos = _run_prefix(scorer, tokens)
    expected = -torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        torch.tensor([tokens]),
        torch.tensor([frames]),
        torch.tensor([len(tokens)]),
        reduction="sum",
    )
    torch.testing.assert_close(psi_eos[0], expected, atol=1e-4, rtol=1e-5)
    # a prefix is at least as likely as any of its extensions, and as the complete sequence
    assert all(a >= b - 1e-5 for a, b in zip(prefix_scores, prefix_scores[1:]))
    assert prefix_scores[-1] >= psi_eos[0] - 1e-5


def test_prefix_scorer_ignores_padded_frames():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 12, 8), dim=-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([7, 12]))
    alone = CTCPrefixScorer(log_probs[:1, :7], torch.tensor([7]))
    padded_scores, padded_eos = _run_prefix(scorer, [3, 4], rows=2)
    alone_scores, alone_eos = _run_prefix(alone, [3, 4], rows=1)
    torch.testing.assert_close(padded_eos[0], alone_eos[0])
    torch.testing.assert_close(padded_scores[-1][0], alone_scores[-1][0])


@pytest.mark.parametrize("modality", MODALITIES)
def test_joint_decoding_of_a_padded_batch_equals_one_utterance_at_a_time(modality):
    model = build(modality)
    inputs = make_inputs(modality, FRAMES)
    for num_beams in (1, 4):
        batch = model.generate(**inputs, num_beams=num_beams, ctc_weight=0.3)
        for row, frames in enumerate(FRAMES):
            alone = model.generate(**select_row(inputs, row, frames), num_beams=num_beams, ctc_weight=0.3)
            assert strip_special(batch[row]) == strip_special(alone[0])


def test_ctc_weight_changes_the_search_and_defaults_to_the_generation_config():
    model = build("video")
    inputs = make_inputs("video", FRAMES)
    assert model.generation_config.ctc_weight == 0.1
    default = model.generate(**inputs, num_beams=3)
    explicit = model.generate(**inputs, num_beams=3, ctc_weight=0.1)
    assert torch.equal(default, explicit)
    model.generation_config.ctc_weight = 0.0
    attention_only = model.generate(**inputs, num_beams=3)
    ctc_heavy = model.generate(**inputs, num_beams=3, ctc_weight=0.9)
    assert not torch.equal(attention_only, ctc_heavy)
    with pytest.raises(ValueError, match="ctc_weight"):
        model.generate(**inputs, ctc_weight=1.5)


def test_joint_decoding_recovers_trained_labels():
    model = build(
        "audio",
        seed=1,
        encoder_dropout=0.0,
        positional_dropout=0.0,
        ctc_dropout=0.0,
        text_config=dict(dropout=0.0, attention_dropout=0.0, positional_dropout=0.0),
    )
    inputs, labels = make_inputs("audio", FRAMES, seed=3), make_labels(TOKENS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    for ctc_weight in (0.1, 0.5, 1.0):
        generated = model.generate(**inputs, num_beams=4, ctc_weight=ctc_weight)
        assert [[t for t in row.tolist()[1:] if t not in (EOS, 0)] for row in generated] == TOKENS


def test_a_prefix_ctc_rules_out_stays_ruled_out_without_nan():
    """After a token CTC gives probability zero, every continuation scores -inf (not NaN, which breaks the search)."""
    log_probs = torch.log_softmax(torch.randn(1, 4, 6), dim=-1)
    log_probs[..., 3] = -float("inf")
    processor = CTCPrefixScoreLogitsProcessor(log_probs, torch.tensor([4]), ctc_weight=0.5, num_beams=1, eos_token_id=5)
    logits = torch.zeros(1, 6)
    logits[0, 3] = 5.0  # the decoder insists on token 3
    first = processor(torch.tensor([[5]]), logits)
    assert first[0, 3] < -1e30
    second = processor(torch.tensor([[5, 3]]), logits)
    assert not torch.isnan(second).any()
    assert second[0, 3] < -1e30 and second[0, 5] < -1e30


def test_saved_generation_settings_survive_loading(tmp_path):
    model = build("audio")
    assert model.generation_config.ctc_weight == 0.1
    model.save_pretrained(tmp_path / "default")
    reloaded = type(model).from_pretrained(tmp_path / "default")
    assert reloaded.generation_config.ctc_weight == 0.1
    model.generation_config.ctc_weight, model.generation_config.num_beams = 0.3, 5
    model.save_pretrained(tmp_path / "tuned")
    reloaded = type(model).from_pretrained(tmp_path / "tuned")
    assert (reloaded.generation_config.ctc_weight, reloaded.generation_config.num_beams) == (0.3, 5)


def test_a_saved_max_new_tokens_holds_in_generate_and_the_pipeline(tmp_path):
    from transformers import pipeline

    from mmavsr_processing import MMAVSRProcessor
    from modeling_mmavsr import MMAVSRForConditionalGeneration

    from .test_pipelines import AUTO_AVSR_TEXT, tiny_config

    torch.manual_seed(0)
    model = MMAVSRForConditionalGeneration(tiny_config("audio", text_config=AUTO_AVSR_TEXT)).eval()
    inputs = make_inputs("audio", [40])
    free = model.generate(**inputs, num_beams=1, ctc_weight=0.0)
    assert free.shape[1] > 4, "random weights run on: the limit below is what stops them"
    model.generation_config.max_new_tokens = 2
    model.generation_config.num_beams, model.generation_config.ctc_weight = 1, 0.0
    model.save_pretrained(tmp_path)
    MMAVSRProcessor.from_auto_avsr().save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    prompt = len(reloaded.config.decoder_prompt_ids)
    assert reloaded.generate(**inputs).shape[1] == prompt + 2
    assert reloaded.generate(**inputs, max_new_tokens=3).shape[1] == prompt + 3  # the call's argument wins
    asr = pipeline("audio-visual-speech-recognition", model=str(tmp_path))
    text = asr(inputs["input_features"][0].numpy())["text"]
    assert text and len(asr.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 2


def test_generate_sizes_the_self_attention_cache_by_its_length_limit(monkeypatch):
    """generate() passes the search's length limit (prompt + new tokens) to the decoder's cache."""
    model = build("video")
    decoder = model.model.decoder
    seen = []
    prefill = decoder.prefill_cross_attention

    def recording_prefill(encoder_hidden_states, max_length, appending_cache=True):
        seen.append(max_length)
        return prefill(encoder_hidden_states, max_length, appending_cache)

    monkeypatch.setattr(decoder, "prefill_cross_attention", recording_prefill)
    inputs = make_inputs("video", FRAMES)
    prompt = len(model.config.decoder_prompt_ids)
    model.generate(**inputs, num_beams=2, max_new_tokens=3)
    model.generate(**inputs, num_beams=2)  # each utterance stops at its frame count, the longest + 1 for eos
    assert seen == [prompt + 3, prompt + max(FRAMES) + 1]


@pytest.mark.parametrize("beams, vocab, k", [(4, 50, 8), (40, 5049, 80), (3, 5, 12), (1, 9, 2)])
def test_top_k_over_beams_equals_one_top_k_over_all_beams(beams, vocab, k):
    """The two-stage top-k picks the scores and flat indices that one `topk` over beams x vocab picks, also when
    most scores are ruled out (-inf, finfo.min) and when k exceeds the vocabulary."""
    torch.manual_seed(0)
    scores = torch.randn(2, beams, vocab) * 5
    scores[0, :, ::3] = -float("inf")
    scores[1, beams // 2 :] = torch.finfo(scores.dtype).min
    scores[1, : beams // 2] -= 1e3
    values, indices = top_k_over_beams(scores, k)
    expected_values, expected_indices = scores.flatten(1).topk(k)
    assert torch.equal(values, expected_values)
    assert torch.equal(scores.flatten(1).gather(1, indices), expected_values)
    distinct = values > torch.finfo(values.dtype).min  # ruled-out scores tie: any of them may come first
    assert torch.equal(indices[distinct], expected_indices[distinct])


@pytest.mark.parametrize("modality", MODALITIES)
def test_cpu_decoding_speedups_switched_off_give_the_same_search(modality, monkeypatch):
    """With the CPU decoding speed-ups off (plain nn.Linear products, Transformers' DynamicLayer cache and its own
    beam step), beam search of 5 returns what it returns with them on: sequences, scores and beam indices; and off,
    none of the three runs."""
    model = build(modality)
    inputs = make_inputs(modality, FRAMES)
    settings = dict(
        num_beams=5, num_return_sequences=3, output_scores=True, return_dict_in_generate=True, ctc_weight=0.3
    )
    top_k_calls = []

    def counting_top_k(scores, k):
        top_k_calls.append(k)
        return top_k_over_beams(scores, k)

    monkeypatch.setattr(cpu_decoding, "top_k_over_beams", counting_top_k)
    linears = [m for m in model.modules() if isinstance(m, MMAVSRLinear)]
    assert model.cpu_decoding_speedups and linears
    fast = model.generate(**inputs, **settings)
    fast_cache = fast.past_key_values.self_attention_cache.layers
    assert top_k_calls and all(isinstance(layer, MMAVSRAppendingCacheLayer) for layer in fast_cache)
    if cpu_decoding.ONEDNN_LINEAR:  # x86 builds of torch: the decoder multiplied by packed weights
        assert all(m._packed_weight is not None for m in linears)

    model.set_cpu_decoding_speedups(False)
    assert all(m._packed_weight is None for m in linears)  # the packed copies are freed
    top_k_calls.clear()
    plain = model.generate(**inputs, **settings)
    assert not top_k_calls
    assert all(type(layer) is DynamicLayer for layer in plain.past_key_values.self_attention_cache.layers)
    assert all(m._packed_weight is None for m in linears)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.sequences_scores, plain.sequences_scores, atol=1e-5, rtol=0)
    assert torch.equal(fast.beam_indices, plain.beam_indices)

    model.set_cpu_decoding_speedups(True)  # and back on
    assert torch.equal(model.generate(**inputs, **settings).sequences, fast.sequences) and top_k_calls


def test_logsumexp_without_denormals_equals_torch_logsumexp():
    """Bit for bit, on terms spread over hundreds of nats (whose exponentials would be denormal), -inf terms and
    columns of -inf only."""
    torch.manual_seed(0)
    x = torch.randn(50, 40, 60) * 60
    x[::4] = -float("inf")
    x[:, :, 7] = -float("inf")
    x[:, 3, 5] = torch.linspace(-200, 0, 50)
    expected = torch.logsumexp(x, dim=0)
    got = logsumexp_without_denormals(x, dim=0)
    assert torch.equal(got, expected)
    assert torch.isneginf(got[:, 7]).all()
