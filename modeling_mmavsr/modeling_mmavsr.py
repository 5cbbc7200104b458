"""MMAVSR: modular audio-visual speech recognition (video, audio or both) with hybrid CTC/attention training."""

import inspect
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_mmavsr import MMAVSRConfig, modality_of, take_legacy_decoder
from .cpu_decoding_mmavsr import MMAVSRCPUDecodingMixin, MMAVSRLinear
from .generation_mmavsr import MMAVSRGenerationMixin, as_token_list
from .loading_checks_mmavsr import name_unusable_weights
from .modeling_mmavsr_audio import AUDIO_ENCODER_CLASSES, AUDIO_INPUTS
from .modeling_mmavsr_conformer import MMAVSRConformerEncoder, MMAVSRRelPositionAttention
from .modeling_mmavsr_decoder_loading import load_pretrained_decoder, pretrained_decoder_settings
from .modeling_mmavsr_decoders import DECODER_CLASSES, MMAVSRCTCHead, MMAVSRLLMQueryCompressor
from .modeling_mmavsr_features import MMAVSREncoderFeaturesMixin
from .modeling_mmavsr_fusion import FUSION_CLASSES, MMAVSRProjector, align_streams, lengths_to_mask
from .modeling_mmavsr_lora import MMAVSRLoraMixin, adapters_deferred
from .modeling_mmavsr_vision import VISION_ENCODER_CLASSES


@dataclass
class MMAVSREncoderOutput(BaseModelOutput):
    """
    attention_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`):
        True on the encoder frames that hold real input (a frame-level mask, not the sample-level audio mask).
    """

    attention_mask: torch.BoolTensor | None = None


@dataclass
class MMAVSRSeq2SeqModelOutput(Seq2SeqModelOutput):
    """
    encoder_attention_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`):
        True on the encoder frames that hold real input.
    """

    encoder_attention_mask: torch.BoolTensor | None = None


@dataclass
class MMAVSRSeq2SeqLMOutput(Seq2SeqLMOutput):
    """
    ctc_logits (`torch.FloatTensor` of shape `(batch_size, num_frames, vocab_size)`):
        Frame-level CTC logits of the encoder (blank = 0).
    ctc_loss, att_loss (`torch.FloatTensor`):
        The two parts of `loss = ctc_weight * ctc_loss + (1 - ctc_weight) * att_loss`, each summed over the batch's
        tokens and divided by the batch size (auto_avsr's normalisation).
    encoder_attention_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`):
        True on the encoder frames that hold real input.
    """

    ctc_logits: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    att_loss: torch.FloatTensor | None = None
    encoder_attention_mask: torch.BoolTensor | None = None


class MMAVSRPreTrainedModel(PreTrainedModel):
    config: MMAVSRConfig
    base_model_prefix = "model"
    main_input_name = "input_features"
    input_modalities = ("video", "audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MMAVSRConformerLayer", "MMAVSRDecoderLayer"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a truncated or corrupt weight file, or a pickle that needs code, raises
        an error naming the file and what is wrong (see `loading_checks_mmavsr`)."""
        with name_unusable_weights(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            # He initialisation, as for torchvision's ResNets, keeps the frontends' activations of order one
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, MMAVSRRelPositionAttention):
            init.xavier_uniform_(module.pos_bias_u)
            init.xavier_uniform_(module.pos_bias_v)
        elif isinstance(module, nn.PReLU):
            init.constant_(module.weight, 0.25)
        elif isinstance(module, MMAVSRLLMQueryCompressor):
            # distinct queries (equal ones would get equal gradients and stay equal), positions within the window
            init.normal_(module.queries, std=self.config.initializer_range)
            init.normal_(module.window_positions, std=self.config.initializer_range)


class MMAVSREncoder(MMAVSRPreTrainedModel):
    """Encoders -> projection or fusion -> Conformer: video (B, T, C, H, W) and/or audio -> (B, T, hidden_size).

    The encoders are the ResNet frontends or pretrained transformers models (`VISION_ENCODER_CLASSES`,
    `AUDIO_ENCODER_CLASSES`); all deliver 25 fps features (Whisper and WavLM 50 Hz with `audio_frame_rate=50`), whose
    width sets the projector's or fusion's input size. Without Conformer layers (`encoder_layers=0`), a single
    encoder whose width is `hidden_size` is not projected: its features are the encoder's output as they are.
    """

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config)
        # an undecided `freeze_*_encoder` means random weights here (`from_pretrained_components` decides it for the
        # encoders it loads): the encoder trains
        config.resolve_encoder_freezing()
        vision_encoder, audio_encoder = config.vision_encoder, config.audio_encoder
        self.vision_frontend = VISION_ENCODER_CLASSES[vision_encoder](config) if vision_encoder else None
        self.audio_frontend = AUDIO_ENCODER_CLASSES[audio_encoder](config) if audio_encoder else None
        if self.vision_frontend is not None and self.audio_frontend is not None:
            video_size, audio_size = self.vision_frontend.output_size, self.audio_frontend.output_size
            self.fusion = FUSION_CLASSES[config.fusion_type](video_size, audio_size, config)
        else:
            frontend = self.vision_frontend if self.vision_frontend is not None else self.audio_frontend
            if config.encoder_layers == 0 and frontend.output_size == config.hidden_size:
                self.projector = nn.Identity()
            else:
                self.projector = MMAVSRProjector(frontend.output_size, config)
        self.conformer = MMAVSRConformerEncoder(config)
        self.post_init()

    def _check_inputs(self, input_features, attention_mask, pixel_values_videos, video_attention_mask):
        """Every input the model has an encoder for is given, and no other: an input a single-modality model cannot
        read is refused, never ignored."""
        unused = []
        if self.vision_frontend is None:
            unused += [
                name
                for name, value in (
                    ("pixel_values_videos", pixel_values_videos),
                    ("video_attention_mask", video_attention_mask),
                )
                if value is not None
            ]
        if self.audio_frontend is None:
            unused += [
                name
                for name, value in (("input_features", input_features), ("attention_mask", attention_mask))
                if value is not None
            ]
        if unused:
            missing = "video" if self.vision_frontend is None else "audio"
            raise ValueError(
                f"This {self.config.modality} model has no {missing} encoder, so it cannot read "
                f"{' and '.join(f'`{name}`' for name in unused)}; pass only its "
                f"{' and '.join(self.config.input_streams)} inputs (`attention_mask` is the mask of the audio "
                "`input_features`; a video's frame mask is `video_attention_mask`)."
            )
        missing = []
        if self.vision_frontend is not None and pixel_values_videos is None:
            missing.append("`pixel_values_videos` (video)")
        if self.audio_frontend is not None and input_features is None:
            missing.append("`input_features` (audio)")
        if missing:
            raise ValueError(
                f"This {self.config.modality} model needs {' and '.join(missing)}; got "
                f"input_features={'set' if input_features is not None else None}, "
                f"pixel_values_videos={'set' if pixel_values_videos is not None else None}."
            )

    def video_features(self, pixel_values_videos, video_attention_mask=None):
        """(features (B, T, D_video), frame mask (B, T) or None) of the vision frontend."""
        if pixel_values_videos is None:
            raise ValueError("The video features need `pixel_values_videos` (batch, frames, channels, height, width).")
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                f"`pixel_values_videos` must be (batch, frames, channels, height, width), got shape "
                f"{tuple(pixel_values_videos.shape)}."
            )
        features = self.vision_frontend(pixel_values_videos, video_attention_mask)
        return features, None if video_attention_mask is None else video_attention_mask.bool()

    def audio_features(self, input_features, attention_mask=None):
        """(features (B, T, D_audio), frame mask (B, T) or None) of the audio frontend."""
        ndim, description = AUDIO_INPUTS[self.config.audio_encoder]
        if input_features is None or input_features.ndim != ndim:
            shape = None if input_features is None else tuple(input_features.shape)
            raise ValueError(
                f"audio_encoder={self.config.audio_encoder!r} takes {description} as `input_features`, got {shape}."
            )
        features = self.audio_frontend(input_features, attention_mask)
        if attention_mask is None:
            return features, None
        frames = self.audio_frontend.output_lengths(attention_mask.sum(-1))
        return features, lengths_to_mask(frames, features.shape[1])

    def fused_features(self, input_features, attention_mask, pixel_values_videos, video_attention_mask):
        """The Conformer's input (B, T, hidden_size): both streams aligned and fused, or the one stream projected;
        and its frame mask (B, T), all True without input masks."""
        self._check_inputs(input_features, attention_mask, pixel_values_videos, video_attention_mask)
        video = audio = video_mask = audio_mask = None
        if self.vision_frontend is not None:
            video, video_mask = self.video_features(pixel_values_videos, video_attention_mask)
        if self.audio_frontend is not None:
            audio, audio_mask = self.audio_features(input_features, attention_mask)

        if video is not None and audio is not None:
            video, audio, frame_mask = align_streams(
                video, video_mask, audio, audio_mask, self.config.max_stream_length_difference
            )
            hidden_states = self.fusion(video, audio)
        else:
            features, frame_mask = (video, video_mask) if video is not None else (audio, audio_mask)
            hidden_states = self.projector(features)
        if frame_mask is None:
            frame_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        return hidden_states, frame_mask

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MMAVSREncoderOutput:
        r"""
        output_hidden_states (`bool`, *optional*): also return `hidden_states`, the Conformer's input and each of its
            layers' outputs (the last after the final LayerNorm, equal to `last_hidden_state`), as Whisper's encoder.
        output_attentions (`bool`, *optional*): also return `attentions`, each Conformer layer's self-attention
            weights (batch, heads, frames, frames). Both default to the config's values; `return_dict=False` gives a
            tuple.
        """
        output_attentions, output_hidden_states = _output_flags(self.config, output_attentions, output_hidden_states)
        hidden_states, frame_mask = self.fused_features(
            input_features, attention_mask, pixel_values_videos, video_attention_mask
        )
        outputs = self.conformer(hidden_states, frame_mask, output_attentions, output_hidden_states)
        return MMAVSREncoderOutput(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=frame_mask,
        )


def _output_flags(config: MMAVSRConfig, output_attentions: bool | None, output_hidden_states: bool | None) -> tuple:
    """`output_attentions` and `output_hidden_states` of a call, the config's where the call leaves them None."""
    if output_attentions is None:
        output_attentions = config.output_attentions
    if output_hidden_states is None:
        output_hidden_states = config.output_hidden_states
    return bool(output_attentions), bool(output_hidden_states)


def _as_encoder_output(encoder_outputs) -> "MMAVSREncoderOutput":
    if isinstance(encoder_outputs, ModelOutput) and getattr(encoder_outputs, "attention_mask", None) is not None:
        return encoder_outputs
    raise ValueError(
        "`encoder_outputs` must be what `model.get_encoder()(...)` returns as a dict (`return_dict=True`): the "
        f"decoder needs its frame mask `attention_mask`, got {type(encoder_outputs).__name__}."
    )


class MMAVSRModel(MMAVSREncoderFeaturesMixin, MMAVSRPreTrainedModel):
    """The encoder and the attention decoder, returning decoder states (no output heads)."""

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config)
        self.encoder = MMAVSREncoder(config)
        self.decoder = DECODER_CLASSES[config.decoder_type](config)
        self.post_init()

    def get_encoder(self):
        return self.encoder

    def get_input_embeddings(self):
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.decoder.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MMAVSREncoderOutput | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MMAVSRSeq2SeqModelOutput:
        r"""
        output_hidden_states (`bool`, *optional*): also return `encoder_hidden_states` (the Conformer's, see
            `MMAVSREncoder`) and `decoder_hidden_states` (the decoder's input embeddings and each layer's output, the
            last after the final norm, for every decoder position: the prompt's too).
        output_attentions (`bool`, *optional*): also return `encoder_attentions`, `decoder_attentions` (self) and
            `cross_attentions`; the LLM decoder refuses it (one self-attention over prompt, features and tokens).
            Both default to the config's values; `return_dict=False` gives a tuple, as in Whisper.
        """
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)  # the name generate() passes from transformers 5.24 on
        output_attentions, output_hidden_states = _output_flags(self.config, output_attentions, output_hidden_states)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_features,
                attention_mask,
                pixel_values_videos,
                video_attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        decoder_outputs = self._run_decoder(
            decoder_input_ids,
            encoder_outputs,
            decoder_attention_mask,
            past_key_values if use_cache is not False else None,
            output_attentions,
            output_hidden_states,
        )
        return MMAVSRSeq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            encoder_attention_mask=encoder_outputs.attention_mask,
        )

    def _run_decoder(
        self, input_ids, encoder_outputs, attention_mask, past_key_values, output_attentions, output_hidden_states
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The decoder's output. A decoder of one's own may return its states alone (a tensor); it then takes no
        output flags, and asking it for hidden states or attentions is refused."""
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        wanted = {name: True for name, value in flags.items() if value}
        unsupported = [name for name in wanted if name not in inspect.signature(self.decoder.forward).parameters]
        if unsupported:
            raise ValueError(
                f"{' and '.join(unsupported)}: the decoder of decoder_type={self.config.decoder_type!r} "
                f"({type(self.decoder).__name__}) does not provide them."
            )
        outputs = self.decoder(
            input_ids,
            encoder_outputs.last_hidden_state,
            encoder_outputs.attention_mask,
            attention_mask,
            past_key_values,
            **wanted,
        )
        if isinstance(outputs, torch.Tensor):
            outputs = BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=outputs)
        return outputs


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last position, replace -100 by padding."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def prepend_decoder_prompt(labels: torch.Tensor, prompt_ids: list[int], pad_token_id: int) -> tuple:
    """Decoder inputs for labels that follow a decoder prompt (e.g. Whisper's forced tokens, or just sos).

    Labels that already open with the prompt, or with the prompt without its first token (Whisper's fine-tuning
    recipe drops `<|startoftranscript|>`), lose that part: the model supplies it. Returns `(decoder_input_ids,
    labels)` with `decoder_input_ids = prompt + labels[:-1]` minus the last prompt token's overlap (B, K - 1 + L).
    """
    prompt = torch.tensor(prompt_ids, dtype=labels.dtype, device=labels.device)
    for part in (prompt, prompt[1:]):
        if 0 < len(part) < labels.shape[1] and (labels[:, : len(part)] == part).all():
            labels = labels[:, len(part) :]
            break
    decoder_input_ids = shift_tokens_right(labels, pad_token_id, prompt_ids[-1])
    head = prompt[:-1][None].expand(labels.shape[0], -1)
    return torch.cat([head, decoder_input_ids], dim=1), labels


def label_smoothing_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """KL divergence to the smoothed one-hot targets, summed over real tokens (labels != -100), over batch size."""
    vocab_size = logits.shape[-1]
    log_probs = torch.log_softmax(logits.float(), dim=-1).flatten(0, 1)
    targets = labels.flatten()
    keep = targets != -100
    log_probs, targets = log_probs[keep], targets[keep]
    off_value = smoothing / (vocab_size - 1)
    true_dist = torch.full_like(log_probs, off_value)
    true_dist.scatter_(1, targets[:, None], 1.0 - smoothing)
    kl = true_dist * (torch.log(true_dist.clamp_min(1e-30)) - log_probs)
    return kl.sum() / labels.shape[0]


def ctc_loss(
    ctc_logits: torch.Tensor, frame_lengths: torch.Tensor, labels: torch.Tensor, drop_ids: set[int], blank_id: int = 0
) -> torch.Tensor:
    """CTC loss over the labels without -100 padding and the `drop_ids` (eos, ...), summed and divided by the batch
    size."""
    log_probs = torch.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    keep = (labels != -100) & ~torch.isin(labels, torch.tensor(sorted(drop_ids), device=labels.device))
    targets = labels[keep]
    target_lengths = keep.sum(-1)
    loss = nn.functional.ctc_loss(
        log_probs, targets, frame_lengths, target_lengths, blank=blank_id, reduction="sum", zero_infinity=True
    )
    return loss / labels.shape[0]


class MMAVSRForConditionalGeneration(
    MMAVSREncoderFeaturesMixin, MMAVSRLoraMixin, MMAVSRCPUDecodingMixin, MMAVSRGenerationMixin, MMAVSRPreTrainedModel
):
    """MMAVSR with the decoder's output layer and a CTC head; trained with ctc_weight * CTC + (1 - ctc_weight) * CE."""

    # the loss is summed over the batch and divided by its size (auto_avsr's normalisation), never by the Trainer's
    # `num_items_in_batch`; otherwise Trainer would pass it, skip the division by the gradient-accumulation steps and
    # multiply the loss by the number of processes (DDP gradients twice those of one process with the same batch)
    accepts_loss_kwargs = False

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config)
        self.model = MMAVSRModel(config)
        # the Transformer decoder's output layer has a bias; Whisper's and the LLMs' have none
        has_bias = config.decoder_type == "transformer"
        self.lm_head = MMAVSRLinear(config.text_config.hidden_size, config.vocab_size, bias=has_bias)
        self.ctc_head = MMAVSRCTCHead(config)
        if config.audio_encoder is None:
            self.main_input_name = "pixel_values_videos"
        if config.decoder_type != "transformer" and config.text_config.tie_word_embeddings:
            # the LLM or Whisper config decides whether lm_head shares the token embeddings (the top config cannot)
            embeddings = self.model.decoder.get_input_embeddings()
            name = next(n for n, m in self.named_modules() if m is embeddings)
            self._tied_weights_keys = {"lm_head.weight": f"{name}.weight"}
        self.post_init()
        # auto_avsr's decoding: joint CTC/attention with weight 0.1 (generate() also ranks beams by raw score)
        self.generation_config.ctc_weight = 0.1
        if config.decoder_type != "transformer":
            self._set_decoder_generation_defaults()
        # a generation config marked as derived from the model config is rebuilt from it on loading, which would drop
        # `ctc_weight` (and any setting saved in generation_config.json)
        self.generation_config._from_model_config = False

    def _set_decoder_generation_defaults(self):
        """Start tokens, eos and padding of the Whisper and LLM decoders; no joint CTC decoding by default (a
        pretrained decoder decodes as it was trained; with `ctc_vocabulary='decoder'` a call may ask for it)."""
        text_config = self.config.text_config
        eos = text_config.eos_token_id
        self.generation_config.ctc_weight = 0.0
        self.generation_config.decoder_start_token_id = self.config.decoder_prompt_ids[0]
        self.generation_config.eos_token_id = eos
        pad = text_config.pad_token_id
        self.generation_config.pad_token_id = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # the top config's tie_word_embeddings is False: the decoder's own config decided in __init__
        return super().get_expanded_tied_weights_keys(all_submodels=all_submodels) | dict(self._tied_weights_keys or {})

    @classmethod
    def from_pretrained_components(
        cls,
        vision_encoder: str | None = None,
        vision_model_name: str | None = None,
        audio_encoder: str | None = None,
        audio_model_name: str | None = None,
        decoder_type: str = "transformer",
        decoder_model_name: str | None = None,
        fusion_type: str = "concat",
        **kwargs,
    ) -> "MMAVSRForConditionalGeneration":
        r"""
        Build a model from pretrained parts (like `SpeechEncoderDecoderModel.from_encoder_decoder_pretrained`): each
        `*_model_name` (Hub id or local folder) is loaded, its configuration becomes the sub-config of the MMAVSR
        config (`vision_config`, `audio_config`, ...), and its weights are copied in. Parts without a name start from
        random weights (the ResNet frontends, the Conformer, the fusion and the heads always do). `save_pretrained`
        then writes one folder (sub-configs inside `config.json`) that `from_pretrained` rebuilds without the network.

        A loaded encoder is frozen unless `freeze_vision_encoder` / `freeze_audio_encoder` is False; one without a name
        trains unless it is True.

        kwargs: further `MMAVSRConfig` fields (sizes, `freeze_vision_encoder`, ...), and `component_kwargs` (`dict`):
            keyword arguments of each part's `from_pretrained`, keyed `vision`, `audio`, `decoder`. `decoder=` is
            accepted as the legacy name of `decoder_type`.
        """
        component_kwargs = kwargs.pop("component_kwargs", None) or {}
        decoder_type = take_legacy_decoder(kwargs) or decoder_type
        # the config records a local part by its absolute path: a saved model that leaves the LLM's weights out
        # (adapters only) reloads them from `decoder_model_name`, from whatever working directory
        vision_model_name, audio_model_name, decoder_model_name = (
            os.path.abspath(name) if name is not None and os.path.exists(name) else name
            for name in (vision_model_name, audio_model_name, decoder_model_name)
        )
        # step 1: the pretrained encoders
        encoders = {}
        for kind, choice, name in (
            ("vision", vision_encoder, vision_model_name),
            ("audio", audio_encoder, audio_model_name),
        ):
            if name is None:
                continue
            classes = VISION_ENCODER_CLASSES if kind == "vision" else AUDIO_ENCODER_CLASSES
            if choice not in classes or not hasattr(classes[choice], "load_pretrained"):
                raise ValueError(
                    f"{kind}_model_name={name!r} needs a pretrained {kind}_encoder, got {kind}_encoder={choice!r}."
                )
            encoders[kind] = classes[choice].load_pretrained(name, **component_kwargs.get(kind, {}))
            kwargs[f"{kind}_config"] = encoders[kind].config
        # step 2: the pretrained decoder's configuration and prompts, read from its checkpoint and tokenizer
        if decoder_model_name is not None:
            modality = modality_of(vision_encoder, audio_encoder)
            prompt = {name: kwargs.pop(name, None) for name in ("instruction", "system_prompt", "llm_chat_template")}
            settings = pretrained_decoder_settings(decoder_type, decoder_model_name, modality, **prompt)
            for name, value in settings.items():
                # a saved model's config (prompt ids, template) used as a preset: it must be what the decoder gives
                given = kwargs.get(name)
                if name != "text_config" and given is not None and given != value:
                    raise ValueError(
                        f"`{name}`={given!r} disagrees with what {decoder_model_name!r} and its tokenizer give for this "
                        f"prompt ({value!r}); leave it out: it is derived from the decoder."
                    )
            kwargs.update(settings)

        config = MMAVSRConfig(
            vision_encoder=vision_encoder,
            vision_model_name=vision_model_name,
            audio_encoder=audio_encoder,
            audio_model_name=audio_model_name,
            decoder_type=decoder_type,
            decoder_model_name=decoder_model_name,
            fusion_type=fusion_type,
            **kwargs,
        )
        config.resolve_encoder_freezing(loaded_kinds=tuple(encoders))  # loaded encoders are frozen unless told not
        with adapters_deferred():  # `use_qlora` / `use_lora` apply to the pretrained LLM, once it is loaded
            model = cls(config)
        # step 3: the pretrained weights into the composed model
        frontends = {"vision": model.model.encoder.vision_frontend, "audio": model.model.encoder.audio_frontend}
        for kind, pretrained in encoders.items():
            frontends[kind].encoder.load_state_dict(pretrained.state_dict())
        if decoder_model_name is not None:
            load_pretrained_decoder(model, decoder_model_name, **component_kwargs.get("decoder", {}))
        model.apply_adapter_config()
        return model

    def get_encoder(self):
        return self.model.get_encoder()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MMAVSREncoderOutput | None = None,
        past_key_values: Cache | None = None,
        labels: torch.LongTensor | None = None,
        ctc_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MMAVSRSeq2SeqLMOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, num_samples)`):
            Raw 16 kHz waves (ResNet1D audio encoder), zero-padded; `attention_mask` marks the real samples.
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, num_frames, channels, height, width)`):
            25 fps mouth-ROI videos, zero-padded; `video_attention_mask` (batch_size, num_frames) marks real frames.
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`):
            Target token ids ending with eos, padded with -100, in the decoder's vocabulary. Decoder inputs are the
            decoder prompt (`config.decoder_prompt_ids`, e.g. sos) followed by the labels shifted right; the
            attention loss covers the label tokens only, and `logits` are aligned with `labels`.
        ctc_labels (`torch.LongTensor` of shape `(batch_size, ctc_length)`):
            CTC targets in the CTC head's vocabulary (auto_avsr's units, e.g. `MMAVSRTokenizer.from_auto_avsr()`),
            padded with -100, for the LLM and Whisper decoders; the Transformer decoder's CTC targets are `labels`.
        output_hidden_states / output_attentions (`bool`, *optional*): the encoder's and the decoder's hidden states
            and attentions, as [`MMAVSRModel`] returns them; `return_dict=False` gives a tuple.
        """
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)  # the name generate() passes from transformers 5.24 on
        config = self.config
        text_config = config.text_config
        prompt_length = len(config.decoder_prompt_ids)
        if labels is not None and decoder_input_ids is None:
            pad = text_config.pad_token_id if text_config.pad_token_id is not None else config.decoder_prompt_ids[-1]
            decoder_input_ids, labels = prepend_decoder_prompt(labels, config.decoder_prompt_ids, pad)
        outputs = self.model(
            input_features=input_features,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            video_attention_mask=video_attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and hidden_states.shape[1] == labels.shape[1] + prompt_length - 1:
            hidden_states = hidden_states[:, prompt_length - 1 :]  # the prompt's own predictions carry no loss
        logits = self.lm_head(hidden_states)

        loss = ctc_logits = ctc = att = None
        if labels is not None or past_key_values is None or past_key_values.get_seq_length() == 0:
            ctc_logits = self.ctc_head(outputs.encoder_last_hidden_state)
        if labels is not None:
            labels = labels.to(logits.device)
            frame_lengths = outputs.encoder_attention_mask.sum(-1)
            att = label_smoothing_loss(logits, labels, config.label_smoothing)
            loss = att
            if config.ctc_weight > 0:
                ctc = self._ctc_loss(ctc_logits, frame_lengths, labels, ctc_labels)
                loss = config.ctc_weight * ctc + (1.0 - config.ctc_weight) * att

        return MMAVSRSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            ctc_logits=ctc_logits,
            ctc_loss=ctc,
            att_loss=att,
            encoder_attention_mask=outputs.encoder_attention_mask,
        )

    def _ctc_loss(self, ctc_logits, frame_lengths, labels, ctc_labels) -> torch.Tensor:
        """CTC on `labels` when the CTC head scores the decoder's tokens (without eos and the other special ids a
        label sequence may hold), else on `ctc_labels` in the head's own units (without their eos, the last id, as in
        auto_avsr's vocabulary)."""
        config = self.config
        if config.ctc_shares_decoder_vocabulary:
            return ctc_loss(ctc_logits, frame_lengths, labels, self._label_special_ids(), config.ctc_blank_id)
        if ctc_labels is None:
            raise ValueError(
                f"decoder_type={config.decoder_type!r} trains its CTC head (ctc_weight={config.ctc_weight}) on a "
                f"{config.ctc_vocab_size}-unit vocabulary of its own: pass `ctc_labels` (e.g. the text tokenized by "
                "`MMAVSRTokenizer.from_auto_avsr()`, padded with -100), set `ctc_weight=0`, or use "
                "`ctc_vocabulary='decoder'`."
            )
        return ctc_loss(ctc_logits, frame_lengths, ctc_labels.to(ctc_logits.device), {config.ctc_vocab_size - 1})

    def _label_special_ids(self) -> set[int]:
        """Decoder ids that are no speech: eos, and for the LLM and Whisper decoders bos and padding too."""
        text_config = self.config.text_config
        if self.config.decoder_type == "transformer":
            return {text_config.eos_token_id}
        ids = set()
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if getattr(text_config, name, None) is not None:
                ids.update(as_token_list(getattr(text_config, name)))
        return ids


__all__ = [
    "MMAVSRPreTrainedModel",
    "MMAVSREncoder",
    "MMAVSRModel",
    "MMAVSRForConditionalGeneration",
    "MMAVSREncoderOutput",
    "MMAVSRSeq2SeqModelOutput",
    "MMAVSRSeq2SeqLMOutput",
]
