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


SYSTEM_MARKER = "<<mmavsr-system>>"
_TOKENIZER_TEMPLATE = object()  # `chat_template` not given: the tokenizer's own


def render_llm_prompt(tokenizer, instruction: str, system_prompt: str | None = None, chat_template=_TOKENIZER_TEMPLATE):
    """The LLM prompt's text with `FEATURES_MARKER` where the encoder features go: with a chat template (default: the
    tokenizer's), a user turn `instruction\n<features>` and the assistant header, after a system turn only when
    `system_prompt` asks for one; without a template `[system_prompt\n]instruction\n<features>\n`.

    A template that opens with a default system prompt when the messages hold none (SmolLM2's: 20 tokens that
    every step would pay for) is rendered without it: its output for `[system: X, user: U]` minus its output for
    `[system: X]` is the user turn alone (a bos string before the template's system turn is kept). A
    `system_prompt` that the template cannot render (no system role) is refused."""
    if chat_template is _TOKENIZER_TEMPLATE:
        chat_template = getattr(tokenizer, "chat_template", None)
    user = f"{instruction}\n{FEATURES_MARKER}" if instruction else FEATURES_MARKER
    if not chat_template:
        return (f"{system_prompt}\n" if system_prompt else "") + f"{user}\n"

    def render(messages, generation=True):
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=generation
        )

    turn = [{"role": "user", "content": user}]
    if system_prompt:
        try:
            return render([{"role": "system", "content": system_prompt}, *turn])
        except TemplateError as error:
            raise ValueError(
                f"system_prompt={system_prompt!r}: the LLM's chat template cannot render a system turn ({error}); "
                "leave `system_prompt` unset (the instruction opens the user turn)."
            ) from None
    text = render(turn)
    system = [{"role": "system", "content": SYSTEM_MARKER}]
    try:
        with_system, system_only = render(system + turn), render(system, generation=False)
    except TemplateError:  # no system role: the template cannot have put one in
        return text
    if SYSTEM_MARKER not in system_only or not with_system.startswith(system_only):
        return text  # the system turn is not a turn of its own (folded into the user turn): nothing to leave out
    user_turn = with_system[len(system_only) :]
    if text == user_turn or not text.endswith(user_turn):
        return text
    bos = getattr(tokenizer, "bos_token", None)
    inserted = text[: -len(user_turn)]  # what the template wrote before the user turn: its default system turn
    keep_bos = bos and inserted.startswith(bos) and not user_turn.startswith(bos)
    return (bos if keep_bos else "") + user_turn


def llm_prompt_ids(
    tokenizer, instruction: str, system_prompt: str | None = None, chat_template=_TOKENIZER_TEMPLATE
) -> tuple[list[int], list[int]]:
    """Token ids before and after the encoder features of `render_llm_prompt`'s prompt (no system turn unless
    `system_prompt`); the ids after end with the assistant header, or are a start token (bos, else eos)."""
    text = render_llm_prompt(tokenizer, instruction, system_prompt, chat_template)
    before, after = text.split(FEATURES_MARKER)
    encode = lambda part: tokenizer(part, add_special_tokens=False)["input_ids"] if part else []  # noqa: E731
    after_ids = encode(after)
    if not after_ids:  # the decoder prompt needs a start token
        after_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return encode(before), after_ids


def llm_prompt_settings(
    tokenizer,
    modality: str,
    instruction: str | None = None,
    system_prompt: str | None = None,
    chat_template: str | None = None,
) -> dict:
    """The `MMAVSRConfig` fields of an LLM decoder's prompt, rendered with `chat_template` (default: `tokenizer`'s
    own): `instruction` (default: the modality's), `system_prompt`, `llm_chat_template` (the template, saved with
    the model), `instruction_ids` and `decoder_prompt_ids`."""
    instruction = instruction or DEFAULT_INSTRUCTIONS[modality]
    template = chat_template or getattr(tokenizer, "chat_template", None) or None
    before, after = llm_prompt_ids(tokenizer, instruction, system_prompt, template)
    return {
        "instruction": instruction,
        "system_prompt": system_prompt,
        "llm_chat_template": template,
        "instruction_ids": before,
        "decoder_prompt_ids": after,
    }


def set_instruction(model, tokenizer, instruction: str | None = None, system_prompt: str | None = None) -> None:
    """Set an LLM-decoder model's prompt: `instruction` (default: the model's own, else the one for its modality)
    and `system_prompt` (default: the model's own; None: no system turn), rendered with `tokenizer`'s chat
    template, which the config keeps (`llm_prompt_settings`)."""
    config = model.config
    settings = llm_prompt_settings(
        tokenizer, config.modality, instruction or config.instruction, system_prompt or config.system_prompt
    )
    for name, value in settings.items():
        setattr(config, name, value)
    model.generation_config.decoder_start_token_id = config.decoder_prompt_ids[0]


def pretrained_decoder_settings(
    decoder_type: str,
    decoder_model_name: str,
    modality: str,
    instruction: str | None = None,
    system_prompt: str | None = None,
    llm_chat_template: str | None = None,
) -> dict:
    """`MMAVSRConfig` fields of a pretrained decoder: `text_config`, `decoder_prompt_ids` (and the LLM's prompt,
    `llm_prompt_settings`); read from the checkpoint and its tokenizer, no weights loaded."""
    text_config = AutoConfig.from_pretrained(**_location(decoder_model_name))
    tokenizer = load_decoder_tokenizer(decoder_type, decoder_model_name)
    if decoder_type == "whisper-decoder":
        prompt = (
            ("instruction", instruction),
            ("system_prompt", system_prompt),
            ("llm_chat_template", llm_chat_template),
        )
        for name, value in prompt:
            if value is not None:
                raise ValueError(f"`{name}` is the LLM decoder's prompt; decoder_type='whisper-decoder' has none.")
        prompt = tokenizer.convert_tokens_to_ids(list(WHISPER_TRANSCRIBE_PROMPT))
        return {"text_config": text_config, "decoder_prompt_ids": prompt}
    if decoder_type != "llm":
        raise ValueError(
            f"decoder_type={decoder_type!r} has no pretrained weights to load; use 'llm' or 'whisper-decoder'."
        )
    prompt = llm_prompt_settings(tokenizer, modality, instruction, system_prompt, llm_chat_template)
    return {"text_config": text_config, **prompt}


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
    "llm_prompt_settings",
    "render_llm_prompt",
    "set_instruction",
    "pretrained_decoder_settings",
    "load_pretrained_llm",
    "load_pretrained_decoder",
]
