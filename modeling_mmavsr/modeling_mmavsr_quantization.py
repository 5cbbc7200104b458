"""4-bit NF4 quantization of the LLM decoder through bitsandbytes (QLoRA's base weights), and the optional imports of
the LLM extra (peft, bitsandbytes) with a message naming what to install.

bitsandbytes runs NF4 on the CPU as on CUDA. The model's LoRA / QLoRA logic (`modeling_mmavsr_lora.py`) and the
pretrained decoder loading (`modeling_mmavsr_decoder_loading.py`) both use these helpers; they import nothing of
either.
"""

import importlib
import importlib.util

import torch
from torch import nn
from transformers import BitsAndBytesConfig


# where the LLM sits in `MMAVSRForConditionalGeneration`
LLM_PREFIX = "model.decoder.language_model"
LLM_EXTRA = 'pip install "mmavsr[llm]"'


def import_optional(name: str, purpose: str = "LoRA / QLoRA"):
    """peft and bitsandbytes, imported only where LoRA / 4-bit is used (through importlib, so that a model exported
    with `trust_remote_code` does not make them requirements of every user); a clear message when missing."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        raise ImportError(
            f"{purpose} needs `{package}`, which is not installed: {LLM_EXTRA} (or pip install {package})."
        ) from error


def require_bitsandbytes():
    """bitsandbytes, or an ImportError naming the extra to install and the full-precision alternative."""
    return import_optional(
        "bitsandbytes",
        "use_qlora=True (the LLM in 4-bit NF4; for LoRA over full-precision weights set use_lora=True instead)",
    )


def can_quantize_4bit() -> bool:
    """bitsandbytes is installed (it runs NF4 on the CPU and on CUDA)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def qlora_device() -> torch.device:
    """Where a 4-bit LLM is quantized and kept: the current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def qlora_compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a CUDA device with bf16, float16 on older CUDA devices, float32 on the CPU (bitsandbytes' CPU kernels
    dequantize to the compute dtype; float32 keeps the rest of a CPU model in one dtype)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def qlora_quantization_config(compute_dtype: torch.dtype | None = None) -> BitsAndBytesConfig:
    """NF4 with double quantization for a causal LM loaded alone (`lm_head` stays in full precision)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or qlora_compute_dtype(qlora_device()),
        llm_int8_skip_modules=["lm_head"],
    )


def quantize_linear_layers_4bit(
    module: nn.Module, device: str | torch.device | None = None, compute_dtype: torch.dtype | None = None
) -> None:
    """Replace every `nn.Linear` of `module` by a bitsandbytes NF4 `Linear4bit` (double quantization) on `device`
    (default `qlora_device()`), in place; the other parameters and buffers go to `device`, floating parameters in the
    compute dtype. Weights are cast to the compute dtype and quantized exactly as `from_pretrained` with
    `qlora_quantization_config()` does, so both give the same 4-bit weights. Weights on the meta device (a model
    built without memory, benchmarks) become random normal(0, 0.02) weights on `device` first."""
    bnb = require_bitsandbytes()
    device = torch.device(device) if device is not None else qlora_device()
    compute_dtype = compute_dtype or qlora_compute_dtype(device)
    for name, linear in list(module.named_modules()):
        if not isinstance(linear, nn.Linear):
            continue
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight = linear.weight.data
        if weight.is_meta:
            weight = torch.empty(weight.shape, dtype=compute_dtype, device=device).normal_(0.0, 0.02)
        quantized.weight = bnb.nn.Params4bit(
            weight.to(compute_dtype), requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if linear.bias is not None:
            bias = torch.zeros(linear.bias.shape) if linear.bias.is_meta else linear.bias.data
            quantized.bias = nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, quantized.to(device))  # quantizes
    for param in module.parameters():
        if not isinstance(param, bnb.nn.Params4bit) and not param.is_meta:
            dtype = compute_dtype if param.is_floating_point() else param.dtype
            param.data = param.data.to(device=device, dtype=dtype)
    for buffer_name, buffer in list(module.named_buffers()):
        if buffer is not None and not buffer.is_meta and buffer.device != device:
            owner, _, leaf = buffer_name.rpartition(".")
            (module.get_submodule(owner) if owner else module)._buffers[leaf] = buffer.to(device)


def quantize_llm_4bit(model: nn.Module, device: str | torch.device | None = None) -> None:
    """The model's LLM in 4-bit NF4 (`quantize_linear_layers_4bit` on `model.decoder.language_model`); an untied
    `lm_head` moves to the same device and stays in full precision."""
    quantize_linear_layers_4bit(model.get_submodule(LLM_PREFIX), device)
    language_model = model.get_submodule(LLM_PREFIX)
    target = next(p.device for p in language_model.parameters())
    if not model.lm_head.weight.is_meta:
        model.lm_head.to(target)


def llm_weight_footprint(model: nn.Module) -> tuple[int, int]:
    """(bytes the LLM's base weights take as stored, 4-bit quantization statistics included; bytes they take in
    float32). LoRA adapters are not counted; a tied `lm_head` shares the token embeddings and adds nothing."""
    stored = fp32 = 0
    for name, param in model.get_submodule(LLM_PREFIX).named_parameters():
        if "lora_" in name:
            continue
        state = getattr(param, "quant_state", None)
        if state is None:
            stored += param.nbytes
            fp32 += 4 * param.numel()
            continue
        stored += param.nbytes + state.absmax.nbytes + state.code.nbytes
        if state.nested:
            stored += state.state2.absmax.nbytes + state.state2.code.nbytes
        fp32 += 4 * state.shape.numel()
    return stored, fp32


__all__ = [
    "LLM_PREFIX",
    "can_quantize_4bit",
    "import_optional",
    "llm_weight_footprint",
    "qlora_compute_dtype",
    "qlora_device",
    "qlora_quantization_config",
    "quantize_linear_layers_4bit",
    "quantize_llm_4bit",
    "require_bitsandbytes",
]
