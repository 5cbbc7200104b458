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
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None]
    table = torch.zeros(len(positions), dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class MMAVSRFeedForward(nn.Module):
    """Position-wise Linear -> ReLU -> dropout -> Linear (ReLU, as in auto_avsr). `linear` is the layers' class:
    decoders, which run it at every generation step, pass `MMAVSRLinear` (`cpu_decoding_mmavsr`)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float, linear: type[nn.Linear] = nn.Linear):
        super().__init__()
        self.w_1 = linear(hidden_size, intermediate_size)
        self.w_2 = linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states):
        return self.w_2(self.dropout(torch.relu(self.w_1(hidden_states))))
