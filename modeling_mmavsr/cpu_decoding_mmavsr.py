"""CPU decoding speed-ups: faster ways to compute exactly what the model computes, for beam search on a CPU.

- `MMAVSRLinear`: the decoder's per-step linear layers multiply by a copy of their weight that oneDNN has packed once
  (private `torch.ops.mkldnn` kernels), instead of MKL's GEMM on the plain weight.
- `MMAVSRAppendingCacheLayer`: the Transformer decoder's self-attention cache appends each step in place and reorders
  beams into a second buffer, instead of `DynamicLayer`'s concatenation and `index_select` into new tensors.
- `MMAVSRCPUDecodingMixin._get_top_k_continuations`: the beam step's top-k in two exact stages (`top_k_over_beams`),
  overriding `GenerationMixin`'s private method.

Opt-in and not exact: `model.quantize_int8()` (`quantize_linear_int8`) replaces every linear layer by PyTorch's
dynamically quantized int8 one (weights int8 per tensor, activations quantized on the fly; fbgemm kernels, AVX2 and
up): faster and smaller on a CPU, with hypotheses that can differ from fp32 (`benchmarks/bench_auto_avsr_speed.py
--int8` and `benchmarks/bench_long_form.py` measure speed, `benchmarks/long_form_wer.py --int8` the WER).

Each of the exact speed-ups gives the same hypotheses as the plain path (`benchmarks/bench_auto_avsr_speed.py`
measures what they gain).
All are on by default; `model.set_cpu_decoding_speedups(False)` turns them off (the plain `nn.Linear` product,
`DynamicLayer`, Transformers' own beam step), e.g. to rule them out when something looks wrong. The switch is a
property of the loaded model, not of its configuration: it is not saved.
"""

import warnings

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed-weight linear kernels (x86 builds do)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


ONEDNN_LINEAR = onednn_linear_available()


class MMAVSRLinear(nn.Linear):
    """`nn.Linear` for the layers a decoder runs at every generation step. In inference on CPU it multiplies by a
    copy of its weight that oneDNN has packed once into its blocked layout, instead of running MKL's GEMM on the plain
    weight: the same numbers up to float rounding, and faster for the few rows of a decoding step (a beam search of 5
    on the released decoder: 17% less time end to end; see `benchmarks/README.md`), at the cost of a second copy of
    the weight while the model decodes. The copy is made at the first such call and again whenever the weight has
    changed (an optimizer step, `load_state_dict`, `.to()`). Training, autograd, other devices and dtypes, weights
    created under `torch.inference_mode` (which keep no version counter), torch builds without oneDNN and
    `packing_enabled=False` (`set_cpu_decoding_speedups(False)`) take `nn.Linear`'s own path."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packing_enabled = True
        self._packed_weight: tuple | None = None  # (the weight, its data_ptr, version and shape, the packed copy)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed_weight"] = None  # oneDNN's opaque tensors cannot be copied or pickled; it is rebuilt on use
        return state

    def _apply(self, fn, recurse=True):
        self._packed_weight = None  # `.to()`, `.cuda()`, `.half()`: the copy would only hold memory
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        if mode:
            self._packed_weight = None  # training takes nn.Linear's path and changes the weight
        return super().train(mode)

    def set_packing(self, enabled: bool) -> None:
        """Use (True) or never use (False) the packed copy; turning it off frees the copy."""
        self.packing_enabled = enabled
        if not enabled:
            self._packed_weight = None

    def uses_packed_weight(self, input: torch.Tensor) -> bool:
        if not self.packing_enabled or input.dim() == 0 or input.shape[-1] != self.in_features:
            return False  # off, or nn.Linear's own error
        tensors = (input, self.weight) if self.bias is None else (input, self.weight, self.bias)
        return (
            ONEDNN_LINEAR
            and all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in tensors)
            and not (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors))
            and not self.weight.is_inference()
            and not torch.compiler.is_compiling()
        )

    def packed_weight(self) -> torch.Tensor:
        """oneDNN's packed copy of the weight, packed again if the weight has been replaced or modified in place."""
        weight = self.weight
        state = (weight.data_ptr(), weight._version, weight.shape)
        if self._packed_weight is None or self._packed_weight[0] is not weight or self._packed_weight[1] != state:
            self._packed_weight = None  # free the stale copy before packing the new one
            self._packed_weight = (weight, state, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        return self._packed_weight[2]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.uses_packed_weight(input):
            return super().forward(input)
        return torch.ops.mkldnn._linear_pointwise(input, self.packed_weight(), self.bias, "none", [], "")


DEFAULT_CACHE_CAPACITY = 32  # positions of a self-attention cache's first buffers when no length limit is known
MAX_PREALLOCATED_POSITIONS = 256  # a search that stops early never writes (so never pays for) most of this room


class MMAVSRAppendingCacheLayer(DynamicLayer):
    """A self-attention cache layer for beam search that appends in place.

    Keys and values live in buffers with room to grow (doubled when full); `keys` and `values` are views of their first
    `length` positions. A step writes its new position into the buffers, and beam reordering gathers the rows into a
    second pair of buffers, which then take over: no step copies the whole cache twice, as `DynamicLayer`
    (concatenation, then `index_select` into new tensors) does. Anything that replaces `keys`/`values` by other
    tensors (cropping, batch selection) is honoured: the buffers are rebuilt from them at the next update.

    `initial_capacity`: positions the first buffers hold; a search that knows its length limit passes it, so that the
    cache never grows (growing copies the cache into new memory, which a 2 s utterance's beam search of 40 pays
    about 3% of its time for).
    """

    def __init__(self, initial_capacity: int = DEFAULT_CACHE_CAPACITY):
        super().__init__()
        self.initial_capacity = initial_capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers = self._spare = None

    def _holds_views(self) -> bool:
        """Whether `keys` is still the view of the buffers that `update` handed out (not a tensor set by other code)."""
        if self._buffers is None:
            return False
        buffer = self._buffers[0]
        return self.keys.data_ptr() == buffer.data_ptr() and self.keys.shape[0] == buffer.shape[0]

    def _grow(self, past: int, length: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """New buffers with room for twice `length` positions (`initial_capacity` at least), holding the `past` ones
        cached so far."""
        capacity = max(2 * length, self.initial_capacity)
        self._buffers = tuple(
            states.new_empty(states.shape[:2] + (capacity, states.shape[-1])) for states in (key_states, value_states)
        )
        self._spare = None
        if past:
            self._buffers[0][:, :, :past] = self.keys
            self._buffers[1][:, :, :past] = self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past = self.get_seq_length()
        length = past + key_states.shape[-2]
        if not self._holds_views() or length > self._buffers[0].shape[-2]:
            self._grow(past, length, key_states, value_states)
        key_buffer, value_buffer = self._buffers
        key_buffer[:, :, past:length] = key_states
        value_buffer[:, :, past:length] = value_states
        self.keys, self.values = key_buffer[:, :, :length], value_buffer[:, :, :length]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        length = self.get_seq_length()
        if length == 0 or not self._holds_views():
            return super().reorder_cache(beam_idx)
        if self._spare is None:
            self._spare = tuple(torch.empty_like(buffer) for buffer in self._buffers)
        beam_idx = beam_idx.to(self.keys.device)
        for cached, spare in zip((self.keys, self.values), self._spare):
            torch.index_select(cached, 0, beam_idx, out=spare[:, :, :length])
        self._buffers, self._spare = self._spare, self._buffers
        self.keys, self.values = self._buffers[0][:, :, :length], self._buffers[1][:, :, :length]


def self_attention_cache_layers(num_layers: int, max_length: int | None, appending: bool) -> list[DynamicLayer]:
    """The layers of a decoder's self-attention cache for a search of at most `max_length` positions: appending in
    place (sized by `max_length`, up to `MAX_PREALLOCATED_POSITIONS`), or Transformers' own `DynamicLayer`."""
    if not appending:
        return [DynamicLayer() for _ in range(num_layers)]
    capacity = min(max_length or DEFAULT_CACHE_CAPACITY, MAX_PREALLOCATED_POSITIONS)
    return [MMAVSRAppendingCacheLayer(capacity) for _ in range(num_layers)]


def top_k_over_beams(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best of each utterance's `num_beams x vocab` scores, (B, num_beams, V) -> values and flat indices
    (B, k), as `scores.flatten(1).topk(k)` gives them, in two stages: each beam's `k` best, then the `k` best of those.
    The result is the same (the best `k` overall are among each beam's best `k`; only the order of tied scores may
    differ), but one `topk` over 40 x 5049 scores took 2-5 ms a step on 2 CPU threads, the two stages under 1 ms."""
    batch, beams, vocab = scores.shape
    per_beam, ids = scores.topk(min(k, vocab), dim=-1)  # (B, beams, k)
    ids = ids + torch.arange(beams, device=ids.device)[:, None] * vocab  # flat indices into beams x vocab
    values, positions = per_beam.view(batch, -1).topk(k, dim=-1)
    return values, ids.view(batch, -1).gather(1, positions)


def quantize_linear_int8(model: nn.Module) -> int:
    """Replace every `nn.Linear` of `model` (subclasses such as `MMAVSRLinear` included) by a dynamically quantized
    int8 linear layer (`torch.ao.nn.quantized.dynamic.Linear`), in place, for inference on a CPU. Returns how many
    layers were replaced. The model cannot be trained or saved afterwards: quantize a loaded copy."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import default_dynamic_qconfig

    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU; the model is on another device.")
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        raise RuntimeError(f"this torch build has no x86 int8 kernels (its quantized engines: {engines}).")
    replaced = 0
    with warnings.catch_warnings():
        # torch 2.14 marks its quantized tensors as deprecated; the dynamic int8 linear layer still runs on them
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*deprecated", UserWarning)
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight, plain.bias = child.weight, child.bias
                plain.qconfig = default_dynamic_qconfig
                setattr(module, name, DynamicInt8Linear.from_float(plain))
                replaced += 1
    return replaced


class MMAVSRCPUDecodingMixin:
    """The switch of the speed-ups (`set_cpu_decoding_speedups`) and the beam step's two-stage top-k; a model class
    lists it before its `GenerationMixin`."""

    cpu_decoding_speedups: bool = True
    is_int8_quantized: bool = False  # set by `quantize_int8`

    def set_cpu_decoding_speedups(self, enabled: bool = True) -> None:
        """Turn the CPU decoding speed-ups on (the default) or off: `MMAVSRLinear`'s packed weights, the appending
        self-attention cache and the two-stage beam top-k. Off, the model decodes with PyTorch's and Transformers'
        plain paths; the hypotheses are the same either way."""
        self.cpu_decoding_speedups = bool(enabled)
        for module in self.modules():
            if isinstance(module, MMAVSRLinear):
                module.set_packing(self.cpu_decoding_speedups)

    def quantize_int8(self) -> int:
        """int8 dynamic quantization of every linear layer, in place, for faster decoding on a CPU (opt-in, not
        exact; see `quantize_linear_int8`). Returns how many layers were replaced."""
        replaced = quantize_linear_int8(self)
        self.is_int8_quantized = True
        return replaced

    def _get_top_k_continuations(
        self,
        accumulated_log_probs: torch.Tensor,
        running_sequences: torch.Tensor,
        running_beam_indices: torch.Tensor,
        cur_len: int,
        decoder_prompt_len: int,
        do_sample: bool,
        beams_to_keep: int,
        num_beams: int,
        batch_size: int,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`GenerationMixin`'s beam-search step selection with the top-k taken by `top_k_over_beams`: the same
        continuations, the same bookkeeping (the `beams_to_keep` best of all beams, their sequences extended by their
        token, their beam indices recorded)."""
        if do_sample or not self.cpu_decoding_speedups:
            return super()._get_top_k_continuations(
                accumulated_log_probs,
                running_sequences,
                running_beam_indices,
                cur_len,
                decoder_prompt_len,
                do_sample,
                beams_to_keep,
                num_beams,
                batch_size,
                **kwargs,
            )
        vocab_size = accumulated_log_probs.shape[-1] // num_beams
        scores = accumulated_log_probs.reshape(batch_size, num_beams, vocab_size)
        topk_log_probs, topk_indices = top_k_over_beams(scores, beams_to_keep)
        parent_beams = topk_indices // vocab_size
        topk_running_sequences = self._gather_beams(running_sequences, parent_beams)
        topk_running_sequences[:, :, cur_len] = topk_indices % vocab_size
        topk_running_beam_indices = self._gather_beams(running_beam_indices, parent_beams)
        # beam indices are recorded with the utterance's offset among the flattened batch x beams rows
        batch_offset = torch.arange(batch_size, device=topk_indices.device).view(-1, 1) * num_beams
        topk_running_beam_indices[:, :, cur_len - decoder_prompt_len] = parent_beams + batch_offset
        return topk_log_probs, topk_running_sequences, topk_running_beam_indices


__all__ = [
    "ONEDNN_LINEAR",
    "MMAVSRLinear",
    "MMAVSRAppendingCacheLayer",
    "MMAVSRCPUDecodingMixin",
    "self_attention_cache_layers",
    "top_k_over_beams",
    "quantize_linear_int8",
]
