"""LoRA and QLoRA for the LLM decoder: adapters through peft, 4-bit NF4 base weights through bitsandbytes.

Only the LLM is adapted. Its base weights (and `lm_head`) are frozen; every other part (encoders, fusion, Conformer,
projector, CTC head) keeps its full precision and the trainability it had before the adapters were added.
`save_pretrained` writes the adapter (`adapter_config.json`, `adapter_model.safetensors`) beside the base weights
(`model.safetensors`, without LoRA tensors), so `from_pretrained` on that folder gives the same model back.
"""

import importlib.util
import re
import warnings

import torch
from torch import nn
from transformers import BitsAndBytesConfig


LLM_PREFIX = "model.decoder.language_model"
# Llama-style attention and MLP projections
DEFAULT_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# `llm_int8_skip_modules` replaces transformers' default skip list: every part outside the LLM stays unquantized
QLORA_SKIP_MODULES = ["lm_head", "ctc_head", "model.encoder", "model.decoder.projector"]


def can_quantize_4bit() -> bool:
    """4-bit NF4 needs a CUDA device and bitsandbytes."""
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def qlora_quantization_config() -> BitsAndBytesConfig:
    """NF4 with double quantization and bf16 compute for the LLM; everything else left in full precision."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=list(QLORA_SKIP_MODULES),
    )


def import_optional(name: str):
    """peft and bitsandbytes, imported only where LoRA / 4-bit is used (through importlib, so that a model exported
    with `trust_remote_code` does not make them requirements of every user); a clear message when missing."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        raise ImportError(
            f"LoRA / QLoRA needs `{package}`: pip install 'mmavsr[llm]' (or pip install {package})."
        ) from error


def lora_config_for(config):
    """peft `LoraConfig` from the model config's `qlora_r`, `qlora_alpha`, `lora_dropout`, `lora_target_modules`,
    restricted to the LLM's modules (a full-match regex over module names)."""
    LoraConfig = import_optional("peft").LoraConfig

    targets = config.lora_target_modules or DEFAULT_LORA_TARGET_MODULES
    pattern = rf"{re.escape(LLM_PREFIX)}\..*\.({'|'.join(re.escape(t) for t in targets)})"
    return LoraConfig(
        r=config.qlora_r,
        lora_alpha=config.qlora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=pattern,
        bias="none",
    )


def quantize_llm_4bit(model: nn.Module, device: str | torch.device = "cuda") -> None:
    """Replace every `nn.Linear` of the model's LLM by a bitsandbytes NF4 `Linear4bit` on `device` (bf16 compute);
    the LLM's other weights (embeddings, norms) go to `device` in bf16. Needs CUDA and bitsandbytes."""
    bnb = import_optional("bitsandbytes")

    language_model = model.get_submodule(LLM_PREFIX)
    for name, module in list(language_model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        quantized = bnb.nn.Linear4bit(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight = module.weight.data
        if weight.is_meta:  # a model built on the meta device: random weights, made on `device` (benchmarks)
            weight = torch.empty(weight.shape, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02)
        quantized.weight = bnb.nn.Params4bit(
            weight.to(torch.bfloat16), requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if module.bias is not None:
            bias = torch.zeros(module.bias.shape, device=device) if module.bias.is_meta else module.bias.data
            quantized.bias = nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(language_model.get_submodule(parent) if parent else language_model, child, quantized.to(device))
    for param in language_model.parameters():
        if not isinstance(param, bnb.nn.Params4bit) and not param.is_meta:
            param.data = param.data.to(device=device, dtype=torch.bfloat16)
    for buffer_name, buffer in list(language_model.named_buffers()):
        if not buffer.is_meta and buffer.device != torch.device(device):
            owner, _, leaf = buffer_name.rpartition(".")
            target = language_model.get_submodule(owner) if owner else language_model
            target._buffers[leaf] = buffer.to(device)


def _is_llm_base(name: str) -> bool:
    return (name.startswith(f"{LLM_PREFIX}.") or name.startswith("lm_head.")) and "lora_" not in name


def _without_lora(state_dict: dict) -> dict:
    """Base weights under their original names: LoRA tensors dropped, peft's `base_layer.` level removed."""
    return {k.replace(".base_layer.", "."): v for k, v in state_dict.items() if "lora_" not in k}


class MMAVSRLoraMixin:
    """`add_lora()`, `merge_lora()` and adapter-aware `save_pretrained` / `from_pretrained` for the LLM decoder."""

    def add_lora(self) -> None:
        """Add fresh LoRA adapters (the config's `qlora_*` settings) to the LLM and freeze its base weights.

        The base is expected in 4-bit already where CUDA exists (`from_pretrained_components(use_qlora=True)`,
        `quantize_llm_4bit`); without CUDA the adapters train over full-precision weights, with a warning.
        """
        if self.config.decoder_type != "llm":
            raise ValueError(f"LoRA adapts an LLM decoder; this model has decoder_type={self.config.decoder_type!r}.")
        if getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError("This model already has LoRA adapters.")
        if not self.is_llm_quantized:
            warnings.warn(
                "use_qlora: the LLM is not quantized (no CUDA device or no bitsandbytes, or it was built in full "
                "precision): LoRA adapters are trained over its full-precision weights.",
                UserWarning,
                stacklevel=2,
            )
        trainable = {name: p.requires_grad for name, p in self.named_parameters()}
        self.add_adapter(lora_config_for(self.config))
        self._set_lora_trainability(trainable)
        self.config.use_qlora = True

    @property
    def is_llm_quantized(self) -> bool:
        """True when the LLM's linear layers hold 4-bit weights."""
        language_model = self.get_submodule(LLM_PREFIX)
        return any(type(m).__name__ == "Linear4bit" for m in language_model.modules())

    def _set_lora_trainability(self, trainable: dict[str, bool]) -> None:
        """LoRA weights train, the LLM base and lm_head do not, the rest keeps its previous `requires_grad`."""
        for name, param in self.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
            elif _is_llm_base(name):
                param.requires_grad_(False)
            else:
                param.requires_grad_(trainable.get(name, True))

    def merge_lora(self) -> None:
        """Fold the adapters into the LLM's weights and remove them (for export); the config no longer uses LoRA.
        A 4-bit base is dequantized, merged and quantized again: merge in full precision for an exact export."""
        BaseTunerLayer = import_optional("peft.tuners.tuners_utils").BaseTunerLayer

        if not getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError("This model has no LoRA adapters to merge.")
        for name, module in list(self.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent), child, module.get_base_layer())
        self._hf_peft_config_loaded = False
        self.peft_config = {}
        self._weight_conversions = None  # load_adapter's key renaming (`base_model.model.` prefix) is moot now
        self.config.use_qlora = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With adapters: the adapter files, then the base model without LoRA tensors, in the same folder."""
        if not getattr(self, "_hf_peft_config_loaded", False):
            return super().save_pretrained(save_directory, *args, **kwargs)
        kwargs.pop("state_dict", None)
        adapter_name = self.active_adapters()[0]
        self.peft_config[adapter_name].base_model_name_or_path = str(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)
        self._hf_peft_config_loaded = False
        try:
            # our own key names, without the adapter loader's renaming
            kwargs["save_original_format"] = False
            super().save_pretrained(save_directory, *args, state_dict=_without_lora(self.state_dict()), **kwargs)
        finally:
            self._hf_peft_config_loaded = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads the base model and, when the folder holds one, its LoRA adapter (transformers' peft integration);
        a `use_qlora` config without saved adapters gets fresh ones."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.use_qlora:
            if getattr(model, "_hf_peft_config_loaded", False):
                model._set_lora_trainability({})
            else:
                model.add_lora()
        return loaded


__all__ = [
    "MMAVSRLoraMixin",
    "can_quantize_4bit",
    "lora_config_for",
    "qlora_quantization_config",
    "quantize_llm_4bit",
    "QLORA_SKIP_MODULES",
]
