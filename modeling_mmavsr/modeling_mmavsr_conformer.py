"""Conformer encoder as in auto_avsr: relative-position self-attention, macaron feed-forward, convolution module."""

import math

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_layers import MMAVSRFeedForward, attention_function, sinusoidal_table


class MMAVSRRelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(d) and returns the relative position table for offsets T-1 ... -(T-1)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.scale = math.sqrt(config.hidden_size)
        self.dropout = nn.Dropout(config.positional_dropout)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = hidden_states.shape[1]
        offsets = torch.arange(length - 1, -length, -1, device=hidden_states.device)
        position_embeddings = sinusoidal_table(offsets, self.hidden_size).to(hidden_states.dtype)[None]
        return self.dropout(hidden_states * self.scale), self.dropout(position_embeddings)  # (1, 2T-1, D)


def relative_to_absolute(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) scores over offsets T-1 ... -(T-1) -> (B, H, T, T) scores of query i against key j."""
    batch, heads, length, _ = scores.shape
    # prepend a zero column, fold, and drop the first row: row i ends up shifted left by T-1-i
    padded = nn.functional.pad(scores, (1, 0)).view(batch, heads, 2 * length, length)
    return padded[:, :, 1:].reshape(batch, heads, length, 2 * length - 1)[..., :length]


class MMAVSRRelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (learned biases u and v per head)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.encoder_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.encoder_attention_dropout
        self.is_causal = False
        size = config.hidden_size
        self.q_proj = nn.Linear(size, size)
        self.k_proj = nn.Linear(size, size)
        self.v_proj = nn.Linear(size, size)
        self.out_proj = nn.Linear(size, size)
        self.pos_proj = nn.Linear(size, size, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))

    def forward(self, hidden_states, position_embeddings, attention_mask=None, output_attentions=False):
        """(output (B, T, D), attention weights (B, H, T, T) when `output_attentions`, else None)"""
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)  # (B, H, T, D)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        positions = self.pos_proj(position_embeddings).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)

        query_u = (query + self.pos_bias_u).transpose(1, 2)  # content term
        query_v = (query + self.pos_bias_v).transpose(1, 2)  # position term
        position_scores = relative_to_absolute(torch.matmul(query_v, positions.transpose(2, 3)))

        # the weights exist in the eager kernel only: asked for, this call runs it
        attention = attention_function("eager" if output_attentions else self.config._attn_implementation)
        output, weights = attention(
            self,
            query_u,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            position_bias=position_scores * self.scaling,
        )
        return self.out_proj(output.reshape(batch, length, -1)), weights if output_attentions else None


class MMAVSRConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv + BatchNorm + swish, pointwise conv; padded steps are zeroed first."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        size = config.hidden_size
        kernel = config.conv_kernel_size
        self.pointwise_conv1 = nn.Conv1d(size, 2 * size, 1)
        self.depthwise_conv = nn.Conv1d(size, size, kernel, padding=(kernel - 1) // 2, groups=size)
        self.norm = nn.BatchNorm1d(size)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(size, size, 1)

    def forward(self, hidden_states, mask=None):
        x = nn.functional.glu(self.pointwise_conv1(hidden_states.transpose(1, 2)), dim=1)  # (B, D, T)
        if mask is not None:
            x = x * mask[:, None].to(x.dtype)
        x = self.activation(self.norm(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).transpose(1, 2)


class MMAVSRConformerLayer(GradientCheckpointingLayer):
    """Macaron FFN (x0.5), self-attention, convolution, FFN (x0.5), final LayerNorm; all pre-norm residuals."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        size, eps = config.hidden_size, config.layer_norm_eps
        self.macaron_style = config.macaron_style
        self.ff_scale = 0.5 if config.macaron_style else 1.0
        if config.macaron_style:
            self.norm_ff_macaron = nn.LayerNorm(size, eps=eps)
            self.feed_forward_macaron = MMAVSRFeedForward(size, config.encoder_ffn_dim, config.encoder_dropout)
        self.norm_mha = nn.LayerNorm(size, eps=eps)
        self.self_attn = MMAVSRRelPositionAttention(config)
        self.norm_conv = nn.LayerNorm(size, eps=eps)
        self.conv_module = MMAVSRConvolutionModule(config)
        self.norm_ff = nn.LayerNorm(size, eps=eps)
        self.feed_forward = MMAVSRFeedForward(size, config.encoder_ffn_dim, config.encoder_dropout)
        self.norm_final = nn.LayerNorm(size, eps=eps)
        self.dropout = nn.Dropout(config.encoder_dropout)

    def forward(
        self, hidden_states, position_embeddings, attention_mask=None, frame_mask=None, output_attentions=False
    ):
        """(the layer's output, its self-attention weights or None)"""
        x = hidden_states
        if self.macaron_style:
            x = x + self.ff_scale * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        attended, weights = self.self_attn(self.norm_mha(x), position_embeddings, attention_mask, output_attentions)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.conv_module(self.norm_conv(x), frame_mask))
        x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x), weights


class MMAVSRConformerEncoder(nn.Module):
    """(B, T, D) features and a (B, T) frame mask -> (B, T, D) encoder states.

    With `encoder_layers=0` there is no Conformer: the features pass through unchanged (no input scaling, no final
    LayerNorm, no parameters), e.g. to give a pretrained decoder exactly the features of its own pretrained encoder.
    """

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        self.layers = nn.ModuleList([MMAVSRConformerLayer(config) for _ in range(config.encoder_layers)])
        self.embed = self.after_norm = None
        if self.layers:
            self.embed = MMAVSRRelPositionalEncoding(config)
            self.after_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """`last_hidden_state` (B, T, D); as Whisper's encoder gives them, `hidden_states`: the first layer's input
        (the scaled features) and each layer's output, the last one after the final LayerNorm (`encoder_layers + 1`
        tensors; without a Conformer, the features alone), and `attentions`: each layer's weights (B, H, T, T)."""
        all_hidden_states = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        if self.layers:
            hidden_states, position_embeddings = self.embed(hidden_states)
            attention_mask = None if frame_mask is None else frame_mask[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, weights = layer(
                hidden_states, position_embeddings, attention_mask, frame_mask, output_attentions
            )
            if output_attentions:
                all_attentions.append(weights)
        if self.layers:
            hidden_states = self.after_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=None if all_hidden_states is None else tuple(all_hidden_states),
            attentions=None if all_attentions is None else tuple(all_attentions),
        )
