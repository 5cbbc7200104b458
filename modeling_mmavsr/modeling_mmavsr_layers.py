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


def as_columns(hidden_states: torch.Tensor) -> torch.Tensor:
    """(..., features) -> (features, rows), a transposed view: the layout `MMAVSRLinear.transposed_product` takes."""
    return hidden_states.reshape(-1, hidden_states.shape[-1]).t()


class MMAVSRLinear(nn.Linear):
    """`nn.Linear` that, in inference on CPU for a few rows (a beam-search step, a short utterance), computes the
    product as W x^T instead of x W^T: the same numbers (up to float rounding), in the GEMM orientation that BLAS runs
    faster for skinny inputs (beam 40 on the released decoder: 15-45% less time per layer on 2 CPU threads, see
    `benchmarks/README.md`). Training and autograd take `nn.Linear`'s own path."""

    max_transposed_rows = 256  # measured faster or equal from 2 to 400 rows; kept to the range decoding uses

    def uses_transposed_product(self, input: torch.Tensor) -> bool:
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            return False  # nn.Linear's own error
        rows = input.numel() // self.in_features
        return (
            input.device.type == "cpu"
            and 1 < rows <= self.max_transposed_rows
            and not (torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad))
        )

    def transposed_product(self, columns: torch.Tensor) -> torch.Tensor:
        """(in_features, rows) -> (out_features, rows): the layer applied to each column."""
        return self.weight @ columns if self.bias is None else torch.addmm(self.bias[:, None], self.weight, columns)

    def rows_from_columns(self, columns: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
        """(in_features, rows) -> contiguous (*leading_shape, out_features): the layer applied to each column, its
        result transposed back to rows, the bias added in the same pass as the transposition (a broadcast bias
        copied into the product first, then a transposed copy, cost 6-17% more at 40 rows)."""
        product = (self.weight @ columns).t()
        rows = torch.empty(product.shape, dtype=product.dtype, device=product.device)
        if self.bias is None:
            rows.copy_(product)
        else:
            torch.add(product, self.bias, out=rows)
        return rows.view(*leading_shape, self.out_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.uses_transposed_product(input):
            return super().forward(input)
        return self.rows_from_columns(as_columns(input), input.shape[:-1])


class MMAVSRFeedForward(nn.Module):
    """Position-wise Linear -> ReLU -> dropout -> Linear (ReLU, as in auto_avsr)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.w_1 = MMAVSRLinear(hidden_size, intermediate_size)
        self.w_2 = MMAVSRLinear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states):
        dropout_active = self.dropout.training and self.dropout.p > 0
        if not dropout_active and self.w_1.uses_transposed_product(hidden_states):
            # in inference the activations stay transposed between the two layers: one transposed copy, not two
            inner = self.w_1.transposed_product(as_columns(hidden_states)).relu_()
            return self.w_2.rows_from_columns(inner, hidden_states.shape[:-1])
        return self.w_2(self.dropout(torch.relu(self.w_1(hidden_states))))
