"""LoRA and QLoRA for the LLM decoder: adapters through peft, 4-bit NF4 base weights through bitsandbytes.

Two explicit options of `MMAVSRConfig`, for `decoder_type="llm"` only and never both:

- `use_qlora`: the LLM's linear layers hold NF4 4-bit weights (double quantization; compute in bf16 on a CUDA device
  with bf16, float16 on other CUDA devices, float32 on the CPU), frozen, with LoRA adapters on top. bitsandbytes runs
  this on the CPU as on CUDA; without bitsandbytes it stops with an ImportError naming `pip install "mmavsr[llm]"`.
- `use_lora`: the same adapters over the LLM's full-precision weights.

Every way of making a model honours them: the constructor (a randomly initialised LLM is quantized as it is: QLoRA
always means 4-bit), `from_pretrained_components` (the pretrained LLM loaded in 4-bit, then the adapters) and
`from_pretrained` (the saved adapters over the same 4-bit base). The LLM's base weights and `lm_head` are frozen;
every other part (encoders, fusion, Conformer, projector, CTC head) keeps its full precision and the trainability it
had before the adapters were added.

`save_pretrained` writes the adapter (`adapter_config.json`, `adapter_model.safetensors`) and the weights outside the
LLM (`model.safetensors`). The LLM's frozen base weights are left out when `decoder_model_name` names where they come
from: `from_pretrained` loads them from there again (for QLoRA the same NF4 weights: quantization is deterministic).
A LoRA model with a randomly initialised LLM saves its full-precision base; a QLoRA one has no source to reload its
base from and refuses to save. `merge_lora()` folds the adapters into a full-precision copy of the LLM's weights (a
4-bit base is dequantized first, so the merged model computes what the adapters computed).
"""

import contextlib
import contextvars
import copy
import importlib
import importlib.util
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME

from .modeling_mmavsr_quantization import LLM_PREFIX, import_optional, quantize_llm_4bit, require_bitsandbytes


# Llama-style attention and MLP projections
DEFAULT_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# set while `from_pretrained` / `from_pretrained_components` build a model: the adapters come after the weights
_ADAPTERS_DEFERRED = contextvars.ContextVar("mmavsr_adapters_deferred", default=None)


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


def _is_llm_base(name: str) -> bool:
    return (name.startswith(f"{LLM_PREFIX}.") or name.startswith("lm_head.")) and "lora_" not in name


def _without_lora(state_dict: dict) -> dict:
    """Base weights under their original names: LoRA tensors dropped, peft's `base_layer.` level removed."""
    return {k.replace(".base_layer.", "."): v for k, v in state_dict.items() if "lora_" not in k}


def _saved_weights(folder: Path) -> dict:
    """The tensors of a `save_pretrained` folder's model.safetensors (or of its shards)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {name: tensor for shard in shards for name, tensor in load_file(str(folder / shard)).items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors (nor its shard index) to load the weights from.")
    return load_file(str(single))


def _dequantized_linear(layer: nn.Module) -> nn.Linear:
    """A full-precision `nn.Linear` holding a bitsandbytes `Linear4bit`'s dequantized weight (and its bias)."""
    bnb = require_bitsandbytes()
    data, state = layer.weight.data, layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # repacked for AVX512-BF16 CPU inference: back to NF4
        data, state = importlib.import_module("bitsandbytes.nn.modules")._convert_weight_packed_for_cpu_inverse(
            data, state
        )
    weight = bnb.functional.dequantize_4bit(data, state)
    dense = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    dense.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        dense.bias = nn.Parameter(layer.bias.data.to(weight.dtype), requires_grad=False)
    return dense


def _is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")


def llm_base_is_saved(pretrained_model_name_or_path, **download_kwargs) -> bool:
    """Whether a `save_pretrained` folder holds its LLM's base weights (False: the adapters only, the base loads from
    `decoder_model_name`); True when its weight names cannot be read (e.g. `pytorch_model.bin`)."""
    saved = _checkpoint_keys(pretrained_model_name_or_path, **download_kwargs)
    return saved is None or any(key.startswith(f"{LLM_PREFIX}.") for key in saved)


def _checkpoint_keys(pretrained_model_name_or_path, **download_kwargs) -> set[str] | None:
    """The weight names of a `save_pretrained` folder (model.safetensors or its shard index), or None when it has
    neither (e.g. `pytorch_model.bin`) or its header cannot be read."""
    from safetensors import SafetensorError, safe_open
    from transformers.utils import cached_file

    options = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    for key in ("cache_dir", "revision", "token", "local_files_only", "subfolder"):
        if download_kwargs.get(key) is not None:
            options[key] = download_kwargs[key]
    index = cached_file(pretrained_model_name_or_path, "model.safetensors.index.json", **options)
    if index is not None:
        with open(index, encoding="utf-8") as file:
            return set(json.load(file)["weight_map"])
    single = cached_file(pretrained_model_name_or_path, "model.safetensors", **options)
    if single is None:
        return None
    try:
        with safe_open(single, framework="pt") as file:
            return set(file.keys())
    except (SafetensorError, OSError, ValueError):
        return None  # unreadable: loading the weights names the file and the problem (`loading_checks_mmavsr`)


class _DeferredAdapterInfo:
    """What a deferred `load_adapter` gives `from_pretrained(..., output_loading_info=True)`: nothing missing yet."""

    def to_dict(self) -> dict:
        return {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


@contextlib.contextmanager
def adapters_deferred():
    """Within it, building an MMAVSR model adds no adapters (and quantizes nothing): a loading path adds them after
    putting the weights in (`apply_adapter_config`). Yields a dict where a deferred `load_adapter` call is kept."""
    pending = {}
    token = _ADAPTERS_DEFERRED.set(pending)
    try:
        yield pending
    finally:
        _ADAPTERS_DEFERRED.reset(token)


class MMAVSRLoraMixin:
    """`use_qlora` / `use_lora` on every path; `add_lora()`, `merge_lora()` and adapter-aware `save_pretrained` /
    `from_pretrained` for the LLM decoder."""

    @property
    def uses_adapters(self) -> bool:
        return bool(self.config.use_qlora or self.config.use_lora)

    def post_init(self):
        super().post_init()
        pending = _ADAPTERS_DEFERRED.get()
        if pending is not None:
            if self.uses_adapters and self.config.decoder_model_name:
                # a saved adapter model may leave out the LLM's base weights: they are loaded from decoder_model_name
                self._keys_to_ignore_on_load_missing |= {rf"^{re.escape(LLM_PREFIX)}\.", r"^lm_head\."}
                if pending.get("llm_base_left_out"):
                    # nor are the LLM's tied weights (lm_head and its token embeddings) in the folder: transformers
                    # would tie two absent tensors and call the folder corrupted; they are tied once the base is
                    # loaded (`load_pretrained_decoder`), and the mapping is restored then
                    llm_tied = {
                        target: source
                        for target, source in self.all_tied_weights_keys.items()
                        if _is_llm_base(target) or _is_llm_base(source)
                    }
                    for target in llm_tied:
                        del self.all_tied_weights_keys[target]
                    pending["llm_tied_weights"] = llm_tied
            return
        self.apply_adapter_config()

    def apply_adapter_config(self) -> None:
        """What `use_qlora` / `use_lora` ask for, on the LLM this model holds: for QLoRA the LLM quantized to 4-bit
        NF4 (unless it is already), then fresh LoRA adapters; nothing without either option."""
        if not self.uses_adapters or getattr(self, "_hf_peft_config_loaded", False):
            return
        if self.config.use_qlora and not self.is_llm_quantized:
            require_bitsandbytes()
            quantize_llm_4bit(self)
        self.add_lora()

    def add_lora(self) -> None:
        """Add fresh LoRA adapters (the config's `qlora_*` settings) to the LLM and freeze its base weights. Over a
        4-bit LLM this is QLoRA (`config.use_qlora`), over a full-precision one plain LoRA (`config.use_lora`)."""
        if self.config.decoder_type != "llm":
            raise ValueError(f"LoRA adapts an LLM decoder; this model has decoder_type={self.config.decoder_type!r}.")
        if getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError("This model already has LoRA adapters.")
        if self.config.use_qlora and not self.is_llm_quantized:
            raise ValueError(
                "use_qlora=True, but the LLM is in full precision: quantize it first (`quantize_llm_4bit(model)`), "
                "or set use_lora=True for LoRA over full-precision weights."
            )
        trainable = {name: p.requires_grad for name, p in self.named_parameters()}
        self.add_adapter(lora_config_for(self.config))
        self._set_lora_trainability(trainable)
        self._keep_4bit_layout_trainable()
        quantized = self.is_llm_quantized
        self.config.use_qlora, self.config.use_lora = quantized, not quantized

    @property
    def is_llm_quantized(self) -> bool:
        """True when the LLM's linear layers hold bitsandbytes 4-bit weights (False for the other decoders)."""
        if self.config.decoder_type != "llm":
            return False
        return any(_is_4bit(m) for m in self.get_submodule(LLM_PREFIX).modules())

    @property
    def is_loaded_in_4bit(self) -> bool:
        # peft wraps 4-bit layers in its own 4-bit LoRA layers only when the model says so
        return self.is_llm_quantized

    def _keep_4bit_layout_trainable(self) -> None:
        """bitsandbytes repacks a 4-bit weight for AVX512-BF16 CPUs at its first inference call, and the repacked
        weight passes no gradient to its input: a model with adapters trains its encoder through the LLM after an
        evaluation too, so its 4-bit layers keep the NF4 layout."""
        for module in self.get_submodule(LLM_PREFIX).modules():
            if _is_4bit(module):
                module.support_avx512bf16_for_cpu = False

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
        """Fold the adapters into the LLM's weights and remove them (for inference or export). A 4-bit base is
        dequantized first and the merged weights stay in full precision (the compute dtype), so the merged model
        computes what the adapters computed; the config then asks for neither LoRA nor QLoRA."""
        BaseTunerLayer = import_optional("peft.tuners.tuners_utils").BaseTunerLayer

        if not getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError("This model has no LoRA adapters to merge.")
        for name, module in list(self.named_modules()):
            if not isinstance(module, BaseTunerLayer):
                continue
            base = module.get_base_layer()
            if _is_4bit(base):
                merged = _dequantized_linear(base)
                with torch.no_grad():
                    for adapter in module.active_adapters:
                        merged.weight += module.get_delta_weight(adapter).to(merged.weight.dtype)
            else:
                module.merge()
                merged = base
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, merged)
        self._hf_peft_config_loaded = False
        self.peft_config = {}
        self._weight_conversions = None  # load_adapter's key renaming (`base_model.model.` prefix) is moot now
        self.config.use_qlora = self.config.use_lora = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With adapters: the adapter files, then the weights without LoRA tensors in the same folder; the LLM's base
        weights only when `decoder_model_name` cannot give them back."""
        if not getattr(self, "_hf_peft_config_loaded", False):
            return super().save_pretrained(save_directory, *args, **kwargs)
        reloadable = self.config.decoder_model_name is not None
        if self.config.use_qlora and not reloadable:
            raise ValueError(
                "This QLoRA model's 4-bit LLM was randomly initialised (config.decoder_model_name is None), so "
                "from_pretrained would have nothing to load its base weights from. Build it with "
                "from_pretrained_components(decoder_type='llm', decoder_model_name=...), or call merge_lora() first to "
                "save a full-precision model."
            )
        kwargs.pop("state_dict", None)
        adapter_name = self.active_adapters()[0]
        self.peft_config[adapter_name].base_model_name_or_path = str(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)
        state_dict = _without_lora(self.state_dict())
        if reloadable:
            state_dict = {k: v for k, v in state_dict.items() if not _is_llm_base(k)}
        self._hf_peft_config_loaded = False
        try:
            # our own key names, without the adapter loader's renaming
            kwargs["save_original_format"] = False
            super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self._hf_peft_config_loaded = True

    def load_saved_weights(self, weights: dict, adapter_weights: dict, source: str) -> None:
        """Put what `save_pretrained` wrote into this model with adapters, in place: `weights` (model.safetensors's
        tensors under their saved names) and `adapter_weights` (adapter_model.safetensors's) from `source` (named in
        errors). The LLM base weights a folder leaves out stay as they are (frozen, from `decoder_model_name`);
        anything else missing, or a tensor this model has no place for, is an error."""
        if not getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError(f"{source}: holds LoRA adapters, but this model has none (use_lora / use_qlora unset).")
        own = self.state_dict()
        renamed = {}
        for name, tensor in weights.items():
            head, _, leaf = name.rpartition(".")
            wrapped = f"{head}.base_layer.{leaf}"  # save_pretrained drops peft's `base_layer.` level
            renamed[wrapped if name not in own and wrapped in own else name] = tensor
        result = self.load_state_dict(renamed, strict=False)
        base_left_out = self.config.decoder_model_name is not None
        missing = [k for k in result.missing_keys if "lora_" not in k and not (base_left_out and _is_llm_base(k))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{source}: its weights do not fit this model (missing: {missing[:5]}, unexpected: "
                f"{result.unexpected_keys[:5]})."
            )
        adapter_name = self.active_adapters()[0]
        trainable = {name: p.requires_grad for name, p in self.named_parameters()}
        training = self.training
        info = self.load_adapter(  # in place over the adapters this model has (transformers' adapter key renaming)
            adapter_name=adapter_name,
            peft_config=copy.deepcopy(self.peft_config[adapter_name]),
            adapter_state_dict=adapter_weights,
            hotswap=True,
            is_trainable=True,
        )
        for name, param in self.named_parameters():
            param.requires_grad_(trainable.get(name, param.requires_grad))
        self.train(training)
        if info.missing_keys or info.unexpected_keys or info.mismatched_keys:
            raise ValueError(
                f"{source}: its adapters do not fit this model's (missing: {sorted(info.missing_keys)[:5]}, "
                f"unexpected: {sorted(info.unexpected_keys)[:5]}, other shape: {sorted(info.mismatched_keys)[:5]})."
            )

    def load_checkpoint_folder(self, folder) -> None:
        """A `save_pretrained` folder's weights and adapters into this model with adapters, in place (a Trainer
        resuming from a checkpoint or loading its best one): `load_saved_weights` of its model.safetensors and
        adapter_model.safetensors."""
        folder = Path(folder)
        adapter_file = folder / ADAPTER_SAFE_WEIGHTS_NAME
        if not adapter_file.is_file():
            raise FileNotFoundError(
                f"{adapter_file}: missing; this model has LoRA adapters, and a checkpoint without them would "
                "silently start them afresh."
            )
        self.load_saved_weights(_saved_weights(folder), load_file(str(adapter_file)), str(folder))

    def load_adapter(self, *args, **kwargs):
        pending = _ADAPTERS_DEFERRED.get()
        if pending is not None and "adapter" not in pending:
            # transformers' from_pretrained loads a folder's adapter right after the weights; the base LLM may still
            # have to be loaded or quantized first (`from_pretrained` below replays this call)
            pending["adapter"] = (args, kwargs)
            return _DeferredAdapterInfo()
        return super().load_adapter(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The saved model; with `use_qlora` / `use_lora`, its LLM base (from the folder, or from
        `decoder_model_name` where the folder leaves it out; in 4-bit for QLoRA) and then its saved adapter, or fresh
        adapters when the folder has none."""
        with adapters_deferred() as pending:
            pending["llm_base_left_out"] = not llm_base_is_saved(pretrained_model_name_or_path, **kwargs)
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        config = model.config
        if model.uses_adapters:
            if not llm_base_is_saved(pretrained_model_name_or_path, **kwargs):
                if config.decoder_model_name is None:
                    raise ValueError(
                        f"{pretrained_model_name_or_path}: the folder holds no LLM weights and its config names no "
                        "`decoder_model_name` to load them from."
                    )
                from .modeling_mmavsr_decoder_loading import is_missing_local_path, load_pretrained_decoder

                if is_missing_local_path(config.decoder_model_name):
                    raise FileNotFoundError(
                        f"{pretrained_model_name_or_path}: the folder holds the LLM's adapters, not its base weights, "
                        f"which come from decoder_model_name={config.decoder_model_name!r}: not found (from "
                        f"{os.getcwd()}). Pass `decoder_model_name=` (that LLM's GGUF file, folder or Hub id) to "
                        "from_pretrained (the training script: --decoder-model-name)."
                    )
                load_pretrained_decoder(model, config.decoder_model_name)  # ties lm_head to the loaded embeddings
                model.all_tied_weights_keys.update(pending.get("llm_tied_weights", {}))
            if config.use_qlora and not model.is_llm_quantized:
                require_bitsandbytes()
                quantize_llm_4bit(model)
        if "adapter" in pending:
            trainable = {name: p.requires_grad for name, p in model.named_parameters()}
            adapter_args, adapter_kwargs = pending["adapter"]
            model.load_adapter(*adapter_args, **adapter_kwargs)
            model._set_lora_trainability(trainable)
            model._keep_4bit_layout_trainable()
        else:
            model.apply_adapter_config()
        return loaded


__all__ = ["MMAVSRLoraMixin", "adapters_deferred", "llm_base_is_saved", "lora_config_for"]
