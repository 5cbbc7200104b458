"""Decoders: auto_avsr's Transformer decoder (cross-attention to the encoder, KV cache), Whisper's decoder, a causal
LLM as a prefix decoder, and the CTC head."""

import contextlib
import math

import torch
from torch import nn
from transformers import AutoModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.whisper.modeling_whisper import WhisperDecoder

from .configuration_mmavsr import MMAVSRConfig
from .cpu_decoding_mmavsr import MMAVSRLinear, self_attention_cache_layers
from .modeling_mmavsr_layers import MMAVSRFeedForward, attention_function, sinusoidal_table


class MMAVSRDecoderAttention(nn.Module):
    """Multi-head attention over the decoder's own past (self) or over the encoder states (cross)."""

    def __init__(self, config: MMAVSRConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        text_config = config.text_config
        self.config = config
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.is_causal = False  # masks are always explicit
        self.num_heads = text_config.decoder_attention_heads
        self.head_dim = text_config.d_model // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = text_config.attention_dropout
        size = text_config.d_model
        # the cross-attention's keys and values are projected once per utterance, not at every step
        key_value_linear = nn.Linear if is_cross_attention else MMAVSRLinear
        self.q_proj = MMAVSRLinear(size, size)
        self.k_proj = key_value_linear(size, size)
        self.v_proj = key_value_linear(size, size)
        self.out_proj = MMAVSRLinear(size, size)

    def _project(self, states: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        batch, length, _ = states.shape
        return linear(states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        past_key_values=None,
        output_attentions=False,
    ):
        """(output (B, L, D), attention weights (B, H, L, keys) when `output_attentions`, else None)"""
        batch, length, _ = hidden_states.shape
        query = self._project(hidden_states, self.q_proj)
        cache = past_key_values
        if isinstance(past_key_values, EncoderDecoderCache):
            cache = (
                past_key_values.cross_attention_cache
                if self.is_cross_attention
                else past_key_values.self_attention_cache
            )

        if self.is_cross_attention and cache is not None and past_key_values.is_updated.get(self.layer_idx):
            # the encoder's keys and values are computed once, at the first step
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            source = encoder_hidden_states if self.is_cross_attention else hidden_states
            key, value = self._project(source, self.k_proj), self._project(source, self.v_proj)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
                if self.is_cross_attention:
                    past_key_values.is_updated[self.layer_idx] = True

        # the weights exist in the eager kernel only: asked for, this call runs it
        attention = attention_function("eager" if output_attentions else self.config._attn_implementation)
        group = batch // key.shape[0]
        if group > 1:
            # the beams of an utterance attend to its one copy of the encoder's keys and values (prefilled per
            # utterance): their queries become one longer query sequence, rows (B * group) -> (B, group * L)
            query = query.unflatten(0, (-1, group)).transpose(1, 2).flatten(2, 3)  # (B, H, group * L, D)
            attention_mask = None if attention_mask is None else attention_mask[::group]
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        if not output_attentions:
            weights = None
        elif group > 1:  # (B, H, group * L, T) -> (B * group, H, L, T), each beam's own rows
            weights = weights.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        return self.out_proj(output.reshape(batch, length, -1)), weights


class DecoderOutputRecorder:
    """What `output_hidden_states` / `output_attentions` ask of a decoder, gathered layer by layer as Whisper's decoder
    gives them: `hidden_states`, each layer's input and then the final states (after the last norm), `num_layers + 1`
    tensors (B, L, D); `attentions` and `cross_attentions`, each layer's self- and cross-attention weights."""

    def __init__(self, output_attentions: bool, output_hidden_states: bool):
        self.hidden_states = [] if output_hidden_states else None
        self.attentions = [] if output_attentions else None
        self.cross_attentions = [] if output_attentions else None

    def add_layer_input(self, hidden_states: torch.Tensor) -> None:
        if self.hidden_states is not None:
            self.hidden_states.append(hidden_states)

    def add_attentions(self, self_weights: torch.Tensor | None, cross_weights: torch.Tensor | None) -> None:
        if self.attentions is not None:
            self.attentions.append(self_weights)
            self.cross_attentions.append(cross_weights)

    def output(self, last_hidden_state: torch.Tensor, past_key_values=None):
        """The decoder's output: `last_hidden_state` (the final states, also the last of `hidden_states`) and what was
        asked for."""
        self.add_layer_input(last_hidden_state)
        as_tuple = lambda values: None if values is None else tuple(values)  # noqa: E731
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=last_hidden_state,
            past_key_values=past_key_values,
            hidden_states=as_tuple(self.hidden_states),
            attentions=as_tuple(self.attentions),
            cross_attentions=as_tuple(self.cross_attentions),
        )


class MMAVSRDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(self, config: MMAVSRConfig, layer_idx: int):
        super().__init__()
        text_config = config.text_config
        size, eps = text_config.d_model, text_config.layer_norm_eps
        self.self_attn = MMAVSRDecoderAttention(config, layer_idx, is_cross_attention=False)
        self.src_attn = MMAVSRDecoderAttention(config, layer_idx, is_cross_attention=True)
        self.feed_forward = MMAVSRFeedForward(
            size, text_config.decoder_ffn_dim, text_config.dropout, linear=MMAVSRLinear
        )
        self.norm1 = nn.LayerNorm(size, eps=eps)
        self.norm2 = nn.LayerNorm(size, eps=eps)
        self.norm3 = nn.LayerNorm(size, eps=eps)
        self.dropout = nn.Dropout(text_config.dropout)

    def forward(
        self,
        hidden_states,
        self_attention_mask,
        encoder_hidden_states,
        encoder_attention_mask,
        past_key_values=None,
        output_attentions=False,
    ):
        """(the layer's output, its self-attention weights, its cross-attention weights); weights None unless
        `output_attentions`"""
        x = hidden_states
        attended, self_weights = self.self_attn(
            self.norm1(x), None, self_attention_mask, past_key_values, output_attentions
        )
        x = x + self.dropout(attended)
        attended, cross_weights = self.src_attn(
            self.norm2(x), encoder_hidden_states, encoder_attention_mask, past_key_values, output_attentions
        )
        x = x + self.dropout(attended)
        return x + self.dropout(self.feed_forward(self.norm3(x))), self_weights, cross_weights


class MMAVSRTransformerDecoder(nn.Module):
    """Token ids (B, L) attending to encoder states (B, T, D) -> decoder states (B, L, D)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        text_config = config.text_config
        self.d_model = text_config.d_model
        self.embed_scale = math.sqrt(text_config.d_model)
        self.embed_tokens = nn.Embedding(text_config.vocab_size, text_config.d_model)
        self.dropout = nn.Dropout(text_config.positional_dropout)
        self.layers = nn.ModuleList([MMAVSRDecoderLayer(config, i) for i in range(text_config.num_hidden_layers)])
        self.after_norm = nn.LayerNorm(text_config.d_model, eps=text_config.layer_norm_eps)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def prefill_cross_attention(
        self, encoder_hidden_states: torch.Tensor, max_length: int | None = None, appending_cache: bool = True
    ) -> EncoderDecoderCache:
        """A generation cache holding each layer's cross-attention keys and values, projected and stored once per
        utterance (B, H, T, D): its `num_beams` rows (utterance-major, as generate() expands them) attend to that one
        copy, instead of B * num_beams copies projected, stored and read at every step. The self-attention cache
        appends in place (`MMAVSRAppendingCacheLayer`, sized by `max_length`, the search's length limit), or, with
        `appending_cache=False` (the CPU decoding speed-ups off), is Transformers' `DynamicLayer`."""
        self_attention = Cache(layers=self_attention_cache_layers(len(self.layers), max_length, appending_cache))
        cache = EncoderDecoderCache(self_attention, DynamicCache())
        for layer in self.layers:
            attention = layer.src_attn
            key = attention._project(encoder_hidden_states, attention.k_proj)
            value = attention._project(encoder_hidden_states, attention.v_proj)
            cache.cross_attention_cache.update(key, value, attention.layer_idx)
            cache.is_updated[attention.layer_idx] = True
        return cache

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_frame_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = input_ids.shape[1]
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        hidden_states = self.embed_tokens(input_ids) * self.embed_scale
        hidden_states = self.dropout(hidden_states + sinusoidal_table(positions, self.d_model).to(hidden_states.dtype))

        self_attention_mask = causal_mask(positions, past_length + length, attention_mask)
        encoder_attention_mask = None if encoder_frame_mask is None else encoder_frame_mask[:, None, None, :]
        recorded = DecoderOutputRecorder(output_attentions, output_hidden_states)
        for layer in self.layers:
            recorded.add_layer_input(hidden_states)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                self_attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                past_key_values,
                output_attentions,
            )
            recorded.add_attentions(self_weights, cross_weights)
        return recorded.output(self.after_norm(hidden_states), past_key_values)


def causal_mask(
    query_positions: torch.Tensor, key_length: int, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Boolean (B|1, 1, Lq, Lk) mask, True where query i may attend key j (j <= i and j not padding)."""
    if attention_mask is None and len(query_positions) == 1:
        return None  # one new token attends its whole past
    keys = torch.arange(key_length, device=query_positions.device)
    mask = (keys[None, :] <= query_positions[:, None])[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -key_length:].bool()
    return mask


def padding_bias(frame_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) frame mask, True on real frames -> additive (B, 1, 1, T) bias: 0 on real frames, the dtype's min on padding."""
    bias = torch.zeros(frame_mask.shape, dtype=dtype, device=frame_mask.device)
    return bias.masked_fill(~frame_mask.bool(), torch.finfo(dtype).min)[:, None, None, :]


class MMAVSRWhisperDecoder(nn.Module):
    """Whisper's decoder cross-attending to the encoder states (projected to its width when they differ), with the
    encoder's padding masked (Whisper itself always attends all 1500 frames of its 30 s window)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        text_config = config.text_config
        same_width = config.hidden_size == text_config.d_model
        self.projector = nn.Identity() if same_width else nn.Linear(config.hidden_size, text_config.d_model)
        self.whisper = WhisperDecoder(text_config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.whisper.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.whisper.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_frame_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        whisper = self.whisper
        encoder_hidden_states = self.projector(encoder_hidden_states)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        batch, length = input_ids.shape
        position_ids = torch.arange(past_length, past_length + length, device=input_ids.device)[None].expand(batch, -1)
        inputs_embeds = whisper.embed_tokens(input_ids)
        hidden_states = inputs_embeds + whisper.embed_positions(input_ids, position_ids=position_ids)
        hidden_states = nn.functional.dropout(hidden_states, p=whisper.dropout, training=self.training)

        self_attention_mask = create_causal_mask(
            config=whisper.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        cross_attention_mask = None
        if encoder_frame_mask is not None and not encoder_frame_mask.all():
            cross_attention_mask = padding_bias(encoder_frame_mask, hidden_states.dtype)
        recorded = DecoderOutputRecorder(output_attentions, output_hidden_states)
        for layer in whisper.layers:
            recorded.add_layer_input(hidden_states)
            with self._attention_weights(layer, output_attentions) as weights:
                hidden_states = layer(
                    hidden_states,
                    self_attention_mask,
                    encoder_hidden_states,
                    encoder_attention_mask=cross_attention_mask,
                    past_key_values=past_key_values,
                    use_cache=past_key_values is not None,
                )
            recorded.add_attentions(weights.get("self_attn"), weights.get("encoder_attn"))
        return recorded.output(whisper.layer_norm(hidden_states), past_key_values)

    @contextlib.contextmanager
    def _attention_weights(self, layer: nn.Module, output_attentions: bool):
        """The weights a Whisper decoder layer's two attentions return (and the layer drops), keyed `self_attn` /
        `encoder_attn`, gathered while the layer runs; nothing unless `output_attentions`."""
        weights = {}
        if not output_attentions:
            yield weights
            return
        implementation = self.whisper.config._attn_implementation
        if implementation not in (None, "eager"):
            raise ValueError(
                f"output_attentions: decoder_type='whisper-decoder' runs Whisper's {implementation!r} attention, which "
                "returns no weights; load or build the model with attn_implementation='eager'."
            )
        record = lambda name: lambda module, args, output: weights.__setitem__(name, output[1])  # noqa: E731
        hooks = [getattr(layer, name).register_forward_hook(record(name)) for name in ("self_attn", "encoder_attn")]
        try:
            yield weights
        finally:
            for hook in hooks:
                hook.remove()


class MMAVSRLLMProjector(nn.Module):
    """Two-layer MLP from the encoder's width to the LLM's embedding width: (B, T, D) -> (B, T, D_llm)."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_size, out_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_size, out_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(hidden_states)))


def frame_windows(states: torch.Tensor, frame_mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) frames and their (B, T) bool mask -> (B, N, window, D) windows of consecutive frames, N =
    ceil(T / window), and their (B, N, window) mask. Padded frames, and the frames that fill a clip's last window,
    are zeros and masked: a window holds the same real frames whatever the batch."""
    states = states * frame_mask[..., None].to(states.dtype)
    extra = -states.shape[1] % window
    states = nn.functional.pad(states, (0, 0, 0, extra))
    frame_mask = torch.cat([frame_mask.bool(), frame_mask.new_zeros(frame_mask.shape[0], extra, dtype=torch.bool)], 1)
    batch, length, width = states.shape
    return states.reshape(batch, length // window, window, width), frame_mask.reshape(batch, length // window, window)


class MMAVSRLLMQueryCompressor(nn.Module):
    """`llm_num_queries` learned queries per window of `llm_query_window` encoder frames, cross-attending to that
    window's real frames only (the padded ones are masked out of the keys): (B, T, D) -> (B, N * Q, D), N =
    ceil(T / window). One attention layer with a residual feed-forward block, in the encoder's width; the window's
    frames carry a learned position within the window."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        width = config.hidden_size
        self.window, self.num_queries = config.llm_query_window, config.llm_num_queries
        self.num_heads = config.encoder_attention_heads
        self.queries = nn.Parameter(torch.zeros(self.num_queries, width))
        self.window_positions = nn.Parameter(torch.zeros(self.window, width))
        self.frame_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.out_proj = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        rows, length, width = states.shape
        return states.view(rows, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        windows, window_mask = frame_windows(hidden_states, frame_mask, self.window)  # (B, N, W, D), (B, N, W)
        batch, num_windows, window, width = windows.shape
        # a window without a real frame (batch padding) attends to its first (zero) frame: its tokens are masked
        # out of the LLM's attention, and no row of the softmax is empty (no NaN)
        window_mask = window_mask.clone()
        window_mask[..., 0] |= ~window_mask.any(-1)
        frames = self.frame_norm(windows + self.window_positions).reshape(batch * num_windows, window, width)
        queries = self.queries[None].expand(batch * num_windows, -1, -1)
        attended = nn.functional.scaled_dot_product_attention(
            self._heads(self.q_proj(queries)),
            self._heads(self.k_proj(frames)),
            self._heads(self.v_proj(frames)),
            attn_mask=window_mask.reshape(batch * num_windows, 1, 1, window),
        )
        states = queries + self.out_proj(attended.transpose(1, 2).reshape(batch * num_windows, -1, width))
        states = states + self.ffn(self.ffn_norm(states))
        return states.reshape(batch, num_windows * self.num_queries, width)


class MMAVSRLLMDecoder(nn.Module):
    """A causal LM (any `AutoModel` decoder, Llama first) reading one sequence of embeddings:

        [prompt before the features; compressed, projected encoder frames; decoder tokens (prompt tail + text)]

    The encoder frames reach the LLM compressed (`config.llm_compression`, at the rate of the model's modality,
    `config.llm_compression_rates`): `stack`, k consecutive frames concatenated into one embedding (a clip's last
    group filled with zeros); `pool`, the average of the real frames of each group of k; `query`,
    `llm_num_queries` learned queries per window of `llm_query_window` frames (`MMAVSRLLMQueryCompressor`). A
    group or window is real when its first frame is. No layer is added inside the LLM. Padded encoder frames and
    groups are masked out and use no position, so each utterance of a padded batch sees exactly what it would alone.
    Returns the states of the decoder tokens only (B, L, D_llm).
    With a cache, the first call fills it with the whole prefix; later calls feed only the new tokens.
    """

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        self.config = config
        compression = config.llm_compression
        self.compressor = MMAVSRLLMQueryCompressor(config) if compression == "query" else None
        stacked = config.llm_compression_rate if compression == "stack" else 1
        self.projector = MMAVSRLLMProjector(config.hidden_size * stacked, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.language_model.set_input_embeddings(value)

    def _instruction_embeddings(self, batch: int, device: torch.device) -> torch.Tensor:
        ids = torch.tensor(self.config.instruction_ids or [], dtype=torch.long, device=device)
        return self.get_input_embeddings()(ids)[None].expand(batch, -1, -1)  # (B, P, D_llm)

    def feature_mask(self, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) mask of the encoder frames -> (B, N) mask of the LLM embeddings they become: a group (a window) is
        real when its first frame is; the `llm_num_queries` embeddings of a window share its entry."""
        config = self.config
        if config.llm_compression == "query":
            return encoder_frame_mask[:, :: config.llm_query_window].repeat_interleave(config.llm_num_queries, dim=1)
        return encoder_frame_mask[:, :: config.llm_compression_rate]

    def compress(self, encoder_hidden_states: torch.Tensor, encoder_frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames and their (B, T) bool mask -> (B, N, D_in) inputs of the projector (`feature_mask`)."""
        config = self.config
        if config.llm_compression == "query":
            return self.compressor(encoder_hidden_states, encoder_frame_mask)
        rate = config.llm_compression_rate
        if rate == 1:
            return encoder_hidden_states
        groups, group_mask = frame_windows(encoder_hidden_states, encoder_frame_mask, rate)  # (B, N, k, D)
        if config.llm_compression == "stack":
            return groups.flatten(2)
        # pool: the average of the group's real frames (a padded group, all zeros, stays zero)
        counts = group_mask.sum(-1, keepdim=True).clamp(min=1).to(groups.dtype)
        return groups.sum(2) / counts

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        encoder_frame_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if output_attentions:
            raise ValueError(
                "output_attentions: decoder_type='llm' has no cross-attention to report: the LLM attends to one "
                "sequence [instruction; encoder features; tokens] with its own self-attention (use "
                "output_hidden_states, or the language model's own outputs)."
            )
        cache = past_key_values
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.self_attention_cache  # generate() builds an encoder-decoder cache: the LLM needs one part
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = input_ids.shape
        device = input_ids.device
        prompt_length = len(self.config.instruction_ids or [])
        if encoder_frame_mask is None:
            encoder_frame_mask = torch.ones(batch, encoder_hidden_states.shape[1], dtype=torch.bool, device=device)
        encoder_frame_mask = encoder_frame_mask.bool()
        frame_mask = self.feature_mask(encoder_frame_mask)  # one entry per LLM embedding
        num_frames = frame_mask.shape[1]

        token_embeds = self.get_input_embeddings()(input_ids)
        if past_length == 0:
            compressed = self.compress(encoder_hidden_states, encoder_frame_mask)
            features = self.projector(compressed).to(token_embeds.dtype)
            inputs_embeds = torch.cat([self._instruction_embeddings(batch, device), features, token_embeds], dim=1)
        else:
            inputs_embeds = token_embeds
        num_tokens = past_length + length - (prompt_length + num_frames if past_length else 0)  # decoder tokens
        if attention_mask is None:
            attention_mask = torch.ones(batch, num_tokens, dtype=torch.long, device=device)
        full_mask = torch.cat(
            [
                torch.ones(batch, prompt_length, dtype=torch.long, device=device),
                frame_mask.long(),
                attention_mask[:, -num_tokens:].long(),
            ],
            dim=1,
        )  # (B, past + new)
        # padding takes no position: RoPE sees each utterance as if it were alone
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            output_hidden_states=output_hidden_states,
        )
        # the states of the decoder tokens only, as the other decoders return them
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(states[:, -length:] for states in outputs.hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=outputs.last_hidden_state[:, -length:],
            past_key_values=past_key_values,
            hidden_states=hidden_states,
        )


class MMAVSRCTCHead(nn.Module):
    """Dropout and a linear map from encoder states to CTC logits over the CTC vocabulary (blank = 0)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.ctc_dropout)
        self.ctc_lo = nn.Linear(config.hidden_size, config.ctc_vocab_size)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.ctc_lo(self.dropout(encoder_hidden_states))


DECODER_CLASSES = {
    "transformer": MMAVSRTransformerDecoder,
    "whisper-decoder": MMAVSRWhisperDecoder,
    "llm": MMAVSRLLMDecoder,
}
