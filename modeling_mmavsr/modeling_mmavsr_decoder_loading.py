"""Pretrained decoders: the LLM (any causal LM; GGUF files too) or Whisper's decoder, with their tokenizers and prompts.

The decoder step of `from_pretrained_components`: `pretrained_decoder_settings` gives the config fields (the decoder's
own config saved as `text_config`, its prompt ids), `load_pretrained_decoder` puts the weights into a built model.
`decoder_model_name` is a Hub id or local folder, or a `.gguf` file (loaded by transformers with `gguf_file=`).
"""

import os

from jinja2 import TemplateError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, WhisperForConditionalGeneration

from .configuration_mmavsr import DEFAULT_INSTRUCTIONS
from .modeling_mmavsr_quantization import (
    qlora_compute_dtype,
    qlora_device,
    qlora_quantization_config,
    quantize_linear_layers_4bit,
    require_bitsandbytes,
)


WHISPER_TRANSCRIBE_PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
FEATURES_MARKER = "<<mmavsr-features>>"
# the config fields that fix a pretrained decoder's weight shapes (LLM names, then Whisper's)
DECODER_SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "d_model",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_dim",
)


def is_missing_local_path(name_or_path: str) -> bool:
    """A GGUF file, an absolute path or a path starting with '.' (not a Hub id) that does not exist."""
    local = name_or_path.endswith(".gguf") or os.path.isabs(name_or_path) or name_or_path.startswith(".")
    return local and not os.path.exists(name_or_path)


def _location(name_or_path: str) -> dict:
    """`from_pretrained` arguments for a Hub id / folder, or a `.gguf` file."""
    if name_or_path.endswith(".gguf"):
        folder, file = os.path.split(os.path.abspath(name_or_path))
        return {"pretrained_model_name_or_path": folder, "gguf_file": file}
    return {"pretrained_model_name_or_path": name_or_path}


def load_decoder_tokenizer(decoder_type: str, decoder_model_name: str):
    """The decoder's own tokenizer, set up so that `tokenizer(text)` gives the model's labels: for an LLM the text's
    ids followed by eos (no bos); for Whisper its forced prompt, the text and `<|endoftext|>`."""
    if decoder_type == "whisper-decoder":
        tokenizer = AutoTokenizer.from_pretrained(**_location(decoder_model_name))
        tokenizer.set_prefix_tokens(language="english", task="transcribe", predict_timestamps=False)
        return tokenizer
    tokenizer = AutoTokenizer.from_pretrained(**_location(decoder_model_name), add_bos_token=False, add_eos_token=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def llm_prompt_ids(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the encoder features: with the tokenizer's chat template, the instruction as the
    system turn (in place of the template's default system prompt, tokens that every step would pay for) and the
    features as the user turn, then the assistant header (a template without a system role: the instruction opens
    the user turn); `instruction\\n<features>\\n` without a template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": FEATURES_MARKER}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:  # e.g. "System role not supported"
            messages = [{"role": "user", "content": f"{instruction}\n{FEATURES_MARKER}"}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{instruction}\n{FEATURES_MARKER}\n"
    before, after = text.split(FEATURES_MARKER)
    encode = lambda part: tokenizer(part, add_special_tokens=False)["input_ids"] if part else []  # noqa: E731
    after_ids = encode(after)
    if not after_ids:  # the decoder prompt needs a start token
        after_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return encode(before), after_ids


def set_instruction(model, tokenizer, instruction: str | None = None) -> None:
    """Set an LLM-decoder model's instruction (default: the one for its modality) and its prompt ids."""
    config = model.config
    config.instruction = instruction or DEFAULT_INSTRUCTIONS[config.modality]
    config.instruction_ids, config.decoder_prompt_ids = llm_prompt_ids(tokenizer, config.instruction)
    model.generation_config.decoder_start_token_id = config.decoder_prompt_ids[0]


def pretrained_decoder_settings(
    decoder_type: str, decoder_model_name: str, modality: str, instruction: str | None = None
) -> dict:
    """`MMAVSRConfig` fields of a pretrained decoder: `text_config`, `decoder_prompt_ids` (and the LLM's
    `instruction`, `instruction_ids`); read from the checkpoint and its tokenizer, no weights loaded."""
    text_config = AutoConfig.from_pretrained(**_location(decoder_model_name))
    tokenizer = load_decoder_tokenizer(decoder_type, decoder_model_name)
    if decoder_type == "whisper-decoder":
        prompt = tokenizer.convert_tokens_to_ids(list(WHISPER_TRANSCRIBE_PROMPT))
        return {"text_config": text_config, "decoder_prompt_ids": prompt}
    if decoder_type != "llm":
        raise ValueError(
            f"decoder_type={decoder_type!r} has no pretrained weights to load; use 'llm' or 'whisper-decoder'."
        )
    instruction = instruction or DEFAULT_INSTRUCTIONS[modality]
    instruction_ids, decoder_prompt_ids = llm_prompt_ids(tokenizer, instruction)
    return {
        "text_config": text_config,
        "instruction": instruction,
        "instruction_ids": instruction_ids,
        "decoder_prompt_ids": decoder_prompt_ids,
    }


def load_pretrained_llm(decoder_model_name: str, load_in_4bit: bool = False, **kwargs):
    """The pretrained causal LM (`AutoModelForCausalLM`); with `load_in_4bit`, its decoder's linear layers in NF4
    4-bit (`qlora_quantization_config()`) on `qlora_device()`, the rest in the compute dtype there.

    A Hub id or folder is quantized while loading (`quantization_config`); a GGUF file, which transformers cannot
    combine with bitsandbytes, is dequantized and then quantized in memory (`quantize_linear_layers_4bit`, the same
    NF4 weights as the `quantization_config` route, after a full-precision copy of the LLM in CPU memory)."""
    location = _location(decoder_model_name)
    if not load_in_4bit:
        return AutoModelForCausalLM.from_pretrained(**location, **kwargs)
    require_bitsandbytes()
    device = qlora_device()
    dtype = qlora_compute_dtype(device)
    kwargs.setdefault("dtype", dtype)
    if "gguf_file" in location:
        causal_lm = AutoModelForCausalLM.from_pretrained(**location, **kwargs)
        quantize_linear_layers_4bit(causal_lm.get_decoder(), device, dtype)
        causal_lm.get_output_embeddings().to(device=device, dtype=dtype)
        return causal_lm
    kwargs.setdefault("quantization_config", qlora_quantization_config(dtype))
    kwargs.setdefault("device_map", {"": device.index} if device.type == "cuda" else "cpu")
    return AutoModelForCausalLM.from_pretrained(**location, **kwargs)


def check_same_decoder(text_config, found, decoder_model_name: str) -> None:
    """Refuse a pretrained decoder (of config `found`, loaded from `decoder_model_name`) whose shape differs from
    `text_config` (the one a model was built and trained with): its weights would not fit the model's projector,
    adapters or output layer, or would fit by chance."""
    differences = [
        f"{name} {getattr(found, name)} (the model's: {getattr(text_config, name)})"
        for name in DECODER_SHAPE_FIELDS
        if hasattr(found, name) and hasattr(text_config, name) and getattr(found, name) != getattr(text_config, name)
    ]
    if differences:
        raise ValueError(
            f"decoder_model_name={decoder_model_name!r} is not the decoder this model was built with: "
            f"{', '.join(differences)}."
        )


def load_pretrained_decoder(model, decoder_model_name: str, **kwargs) -> None:
    """Put the pretrained decoder's weights into `model` (built from `pretrained_decoder_settings`' config): the LLM
    and its output layer (in 4-bit NF4 when `config.use_qlora`, `load_pretrained_llm`), or Whisper's decoder and
    `proj_out`. A decoder of another shape than the model's `text_config` is refused (`check_same_decoder`). Adds no
    adapters (`apply_adapter_config` does). `kwargs` go to `from_pretrained` (e.g. `dtype`)."""
    config = model.config
    if config.decoder_type == "whisper-decoder":
        whisper = WhisperForConditionalGeneration.from_pretrained(**_location(decoder_model_name), **kwargs)
        check_same_decoder(config.text_config, whisper.config, decoder_model_name)
        model.model.decoder.whisper.load_state_dict(whisper.model.decoder.state_dict())
        model.lm_head.load_state_dict(whisper.proj_out.state_dict())
        return
    if config.decoder_type != "llm":
        raise ValueError(
            f"decoder_type={config.decoder_type!r} has no pretrained weights to load; use 'llm' or 'whisper-decoder'."
        )
    causal_lm = load_pretrained_llm(decoder_model_name, load_in_4bit=config.use_qlora, **kwargs)
    check_same_decoder(config.text_config, causal_lm.config, decoder_model_name)
    model.model.decoder.language_model = causal_lm.get_decoder()
    model.lm_head = causal_lm.get_output_embeddings()
    model.tie_weights()


__all__ = [
    "check_same_decoder",
    "load_decoder_tokenizer",
    "is_missing_local_path",
    "llm_prompt_ids",
    "set_instruction",
    "pretrained_decoder_settings",
    "load_pretrained_llm",
    "load_pretrained_decoder",
]
