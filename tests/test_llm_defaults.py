"""An LLM-decoder model built with the defaults trains, and a correct adapter folder reloads without a false alarm:
a tiny random Llama saved as a local folder (with a word-level tokenizer) stands in for a pretrained LLM."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

from .common import make_inputs, word_tokenizer
from .test_decoders import DEFAULT_SYSTEM_TEMPLATE, llama_config


TINY_ENCODER = dict(
    vision_encoder=None,
    audio_encoder="resnet1d",
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    hidden_size=32,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    conv_kernel_size=5,
    encoder_dropout=0.0,
    positional_dropout=0.0,
)
WORDS = ["[system]", "[user]", "[assistant]", "Transcribe.", "Be", "helpful.", *(f"w{i}" for i in range(20))]
CORRUPTED = "This checkpoint seem corrupted"


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    """A tiny Llama (lm_head tied to its token embeddings, as SmolLM2's) and its tokenizer, whose chat template
    inserts a default system prompt (as SmolLM2's)."""
    folder = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = word_tokenizer(WORDS)
    tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    values = llama_config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.pop("model_type")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**values)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def batch(vocab_size: int) -> dict:
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    assert labels.max() < vocab_size
    return {**make_inputs("audio", [9, 6]), "labels": labels}


def train_steps(model, inputs, steps=4, lr=3e-3) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_an_llm_model_built_with_the_defaults_trains(llm_folder):
    """`ctc_weight` left at its default: the LLM's CTC head is over auto_avsr's units of its own (`separate`), whose
    targets (`ctc_labels`) a batch of `labels` does not carry, so it defaults to 0 and the model trains."""
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm", decoder_model_name=llm_folder, **TINY_ENCODER
    )
    assert model.config.ctc_vocabulary == "separate" and model.config.ctc_weight == 0.0
    losses = train_steps(model, batch(model.config.vocab_size))
    assert losses[-1] < losses[0], losses
    # the constructor's defaults too; a head over the decoder's own tokens keeps auto_avsr's 0.1
    config = MMAVSRConfig(decoder_type="llm", text_config=llama_config(), **TINY_ENCODER)
    assert config.ctc_weight == 0.0
    train_steps(MMAVSRForConditionalGeneration(config), batch(40), steps=1)
    assert MMAVSRConfig(decoder_type="llm", text_config=llama_config(), ctc_vocabulary="decoder").ctc_weight == 0.1
    assert MMAVSRConfig().ctc_weight == 0.1  # the Transformer decoder: auto_avsr's
    # an asked-for CTC weight over the separate head still needs its labels, and says so
    asked = MMAVSRForConditionalGeneration(
        MMAVSRConfig(decoder_type="llm", text_config=llama_config(), ctc_weight=0.3, **TINY_ENCODER)
    )
    with pytest.raises(ValueError, match="pass `ctc_labels`"):
        asked(**batch(40))


def test_the_default_prompt_has_no_system_turn(llm_folder):
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm", decoder_model_name=llm_folder, instruction="Transcribe.", **TINY_ENCODER
    )
    tokenizer = word_tokenizer(WORDS)
    assert tokenizer.decode(model.config.instruction_ids) == "[user] Transcribe."  # the template's default left out
    assert model.config.llm_chat_template == DEFAULT_SYSTEM_TEMPLATE and model.config.system_prompt is None
    asked = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm",
        decoder_model_name=llm_folder,
        instruction="Transcribe.",
        system_prompt="Be helpful.",
        **TINY_ENCODER,
    )
    assert tokenizer.decode(asked.config.instruction_ids) == "[system] Be helpful. [user] Transcribe."


def reload_logging(folder) -> tuple[MMAVSRForConditionalGeneration, str]:
    logging.Logger.warning_once.cache_clear()
    with CaptureLogger(hf_logging.get_logger("transformers")) as captured:
        model = MMAVSRForConditionalGeneration.from_pretrained(folder).eval()
    return model, captured.out


def test_a_correct_adapter_folder_reloads_without_a_false_alarm(llm_folder, tmp_path):
    """The folder keeps the adapters, not the LLM's base (nor its tied lm_head and token embeddings), which comes
    back from `decoder_model_name`: transformers must not call it corrupted, and lm_head is tied again."""
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm",
        decoder_model_name=llm_folder,
        use_lora=True,
        qlora_r=4,
        qlora_alpha=8,
        ctc_weight=0.0,
        **TINY_ENCODER,
    )
    inputs = batch(model.config.vocab_size)
    train_steps(model, inputs, steps=2)
    model.eval().save_pretrained(tmp_path)
    assert not any(
        k.startswith(("lm_head.", "model.decoder.language_model.")) for k in load_file(tmp_path / "model.safetensors")
    )
    loaded, log = reload_logging(tmp_path)
    assert CORRUPTED not in log and "tied" not in log, log
    assert loaded.lm_head.weight is loaded.model.decoder.language_model.embed_tokens.weight
    assert "lm_head.weight" in loaded.all_tied_weights_keys  # the mapping is whole again (saving, merging)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_a_folder_missing_its_tied_weights_is_still_called_corrupted(tmp_path):
    """A LoRA model over a random LLM saves its full base; with the token embeddings (and so the tied lm_head) cut
    out of model.safetensors, transformers' warning stands."""
    config = MMAVSRConfig(
        decoder_type="llm", text_config=llama_config(), use_lora=True, qlora_r=4, qlora_alpha=8, **TINY_ENCODER
    )
    MMAVSRForConditionalGeneration(config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    cut = {k: v for k, v in weights.items() if "embed_tokens" not in k and not k.startswith("lm_head.")}
    assert len(cut) < len(weights)
    save_file(cut, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, log = reload_logging(tmp_path)
    assert CORRUPTED in log, log


def test_the_training_script_builds_the_presets_prompt(llm_folder, tmp_path):
    """A preset's `instruction` and `system_prompt` reach the model through the training script's builder (a
    preset file read as `--config_name` is), rendered with the LLM's template and saved with the model."""
    import json

    from mmavsr_training.builder import build_model
    from mmavsr_training.presets import load_preset

    preset = tmp_path / "tiny-llm.json"
    values = dict(
        TINY_ENCODER,
        decoder_type="llm",
        decoder_model_name=llm_folder,
        instruction="Transcribe.",
        system_prompt="Be helpful.",
        llm_compression="pool",
        llm_compression_rates={"audio": 4},
    )
    preset.write_text(json.dumps(values))
    base, _ = load_preset(str(preset))
    model = build_model({"config_name": str(preset)}, base=base)
    tokenizer = word_tokenizer(WORDS)
    assert tokenizer.decode(model.config.instruction_ids) == "[system] Be helpful. [user] Transcribe."
    assert (model.config.llm_compression, model.config.llm_compression_rate) == ("pool", 4)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert (saved["instruction"], saved["system_prompt"]) == ("Transcribe.", "Be helpful.")
    assert saved["llm_chat_template"] == DEFAULT_SYSTEM_TEMPLATE
