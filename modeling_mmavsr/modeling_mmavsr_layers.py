"""Layers shared by the Conformer and the Transformer decoder: attention kernels, feed-forward, sinusoids."""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + position_bias) v, with `attention_mask` boolean (True = attend) or additive."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, Tq, Tk)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Tq, H, D)
    return output, weights


def attention_function(implementation: str | None) -> Callable:
    """The kernel for `config._attn_implementation` (`eager`, `sdpa`, ...)."""
    if implementation in (None, "eager"):
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)


def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings (len(positions), dim): sin on even channels, cos on odd ones."""
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None]
    table = torch.zeros(len(positions), dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


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
    created under `torch.inference_mode` (which keep no version counter) and torch builds without oneDNN take
    `nn.Linear`'s own path."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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

    def uses_packed_weight(self, input: torch.Tensor) -> bool:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            return False  # nn.Linear's own error
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


class MMAVSRFeedForward(nn.Module):
    """Position-wise Linear -> ReLU -> dropout -> Linear (ReLU, as in auto_avsr). `linear` is the layers' class:
    decoders, which run it at every generation step, pass `MMAVSRLinear`."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float, linear: type[nn.Linear] = nn.Linear):
        super().__init__()
        self.w_1 = linear(hidden_size, intermediate_size)
        self.w_2 = linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states):
        return self.w_2(self.dropout(torch.relu(self.w_1(hidden_states))))
