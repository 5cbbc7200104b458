"""Configuration of MMAVSR models: which encoders, which fusion, which decoder, and every size."""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


VISION_ENCODERS = ("resnet", "vit", "vivit", "clip-vit", "timm")
AUDIO_ENCODERS = ("resnet1d", "whisper", "wavlm")
DECODERS = ("transformer", "llm", "whisper-decoder")
FUSION_TYPES = ("concat", "add", "gated")
# the transformers model type each pretrained encoder choice is built from (`vision_config` / `audio_config`)
PRETRAINED_ENCODER_MODEL_TYPES = {
    "vit": "vit",
    "vivit": "vivit",
    "clip-vit": "clip_vision_model",
    "timm": "timm_wrapper",
    "whisper": "whisper",
    "wavlm": "wavlm",
}
VISION_POOLINGS = ("cls", "mean")
# audio encoders with 50 Hz output: `audio_frame_rate` 25 (pairs averaged, the default) or 50 (their own rate)
NATIVE_50HZ_AUDIO_ENCODERS = ("whisper", "wavlm")
AUDIO_FRAME_RATES = (25, 50)
# vocabulary of auto_avsr's unigram units (blank 0 ... sos/eos 5048): the CTC head's when the decoder has its own
AUTO_AVSR_VOCAB_SIZE = 5049
CTC_VOCABULARIES = ("decoder", "separate")
# the instruction that opens the LLM decoder's prompt, per modality (`instruction=None`)
DEFAULT_INSTRUCTIONS = {
    "video": "Transcribe what the speaker says, reading the lip movements in the video.",
    "audio": "Transcribe the speech in the audio.",
    "audiovisual": "Transcribe what the speaker says, using the audio and the lip movements in the video.",
}
# the decoder configuration a `decoder_type` choice gets when `text_config` leaves out `model_type`
DEFAULT_TEXT_MODEL_TYPES = {"transformer": "mmavsr_text", "whisper-decoder": "whisper", "llm": None}
# auto_avsr's `--modality` flag, as (vision_encoder, audio_encoder)
LEGACY_MODALITIES = {
    "video": ("resnet", None),
    "audio": (None, "resnet1d"),
    "audiovisual": ("resnet", "resnet1d"),
}
# the input streams of each modality, as the model's inputs name them
MODALITY_STREAMS = {"video": ("video",), "audio": ("audio",), "audiovisual": ("video", "audio")}
# how the LLM decoder's projector shortens the encoder frames (`llm_compression`)
LLM_COMPRESSIONS = ("stack", "pool", "query")
# the query compressor's window and queries when `llm_compression="query"` leaves them unset: 4 frames, 1 query
DEFAULT_LLM_QUERY_WINDOW, DEFAULT_LLM_NUM_QUERIES = 4, 1
# `ctc_weight` of every config saved before its default depended on the CTC vocabulary (it was 0.1 for all)
LEGACY_CTC_WEIGHT = 0.1


def modality_of(vision_encoder: str | None, audio_encoder: str | None) -> str:
    """auto_avsr's name for the input of a model with these encoders: `video`, `audio` or `audiovisual`. The one
    place the modality is derived (`MMAVSRConfig.modality`, and before a config exists)."""
    if vision_encoder and audio_encoder:
        return "audiovisual"
    return "video" if vision_encoder else "audio"


def take_legacy_decoder(values: dict) -> str | None:
    """Pops `decoder`, the legacy name of `decoder_type` (configs and presets saved before the rename hold it), from
    `values` (keyword arguments or a preset's fields) and returns it, or None when absent. Transformers reserves
    `config.decoder` for a decoder sub-config: anything but a decoder's name is refused."""
    decoder = values.pop("decoder", None)
    if decoder is not None and not isinstance(decoder, str):
        raise ValueError(
            f"`decoder` is the legacy name of `decoder_type` (one of {', '.join(map(repr, DECODERS))}); got "
            f"{type(decoder).__name__}: give the decoder's configuration as `text_config`."
        )
    return decoder


def _check_choice(name: str, value, choices: tuple, allow_none: bool = False):
    if value is None and allow_none:
        return
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices) + (" or None" if allow_none else "")
        raise ValueError(f"Unknown {name} {value!r}; valid choices are {valid}.")


def _build_encoder_config(kind: str, choice: str | None, value) -> PreTrainedConfig | None:
    """The sub-config of a pretrained `vision`/`audio` encoder choice (None for the ResNet frontends and no encoder)."""
    expected = PRETRAINED_ENCODER_MODEL_TYPES.get(choice)
    if expected is None:
        if value is not None:
            raise ValueError(
                f"`{kind}_config` configures a pretrained {kind} encoder, but {kind}_encoder={choice!r} has none; "
                f"choose one of {', '.join(repr(c) for c in PRETRAINED_ENCODER_MODEL_TYPES)} or drop `{kind}_config`."
            )
        return None
    if not isinstance(value, PreTrainedConfig):
        value = dict(value or {})
        model_type = value.pop("model_type", expected)
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"Unknown model_type {model_type!r} in `{kind}_config`.")
        value = CONFIG_MAPPING[model_type](**value)
    if value.model_type == "clip" and expected == "clip_vision_model":
        value = value.vision_config
    if value.model_type != expected:
        raise ValueError(
            f"{kind}_encoder={choice!r} takes a {expected!r} configuration as `{kind}_config`, got {value.model_type!r}."
        )
    return value


@strict
class MMAVSRTextConfig(PreTrainedConfig):
    r"""
    Configuration of the attention decoder of auto_avsr (a Transformer decoder with cross-attention to the encoder).
    The defaults are those of the released LRS3 models: 6 layers of width 768, 12 heads, a 5049-unit vocabulary
    (blank 0, `<unk>` 1, `<sos/eos>` 5048).
    """

    model_type = "mmavsr_text"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "decoder_attention_heads"}

    vocab_size: int = 5049
    d_model: int = 768
    num_hidden_layers: int = 6
    decoder_attention_heads: int = 12
    decoder_ffn_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    positional_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    max_target_positions: int = 5000
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 5048
    eos_token_id: int | None = 5048
    decoder_start_token_id: int | None = 5048
    tie_word_embeddings: bool = False
    is_decoder: bool = True


@strict
class MMAVSRConfig(PreTrainedConfig):
    r"""
    Configuration of [`MMAVSRForConditionalGeneration`].

    The modality follows from the encoders that are set: `vision_encoder` only is lip reading (VSR), `audio_encoder`
    only is speech recognition (ASR), both is audio-visual (AVSR). The defaults rebuild auto_avsr's released LRS3
    lip-reading model (3D-conv + ResNet18 frontend, 12-layer Conformer of width 768, 6-layer Transformer decoder).
    auto_avsr's `modality="video" | "audio" | "audiovisual"` is accepted and mapped onto the encoders.

    Args:
        vision_encoder (`str` or `None`): one of `resnet`, `vit`, `vivit`, `clip-vit`, `timm` (any timm image
            backbone, run on each frame), or `None` (no video).
        audio_encoder (`str` or `None`): one of `resnet1d`, `whisper`, `wavlm`, or `None` (no audio).
        decoder_type (`str`): one of `transformer`, `llm`, `whisper-decoder`. (`decoder=` is accepted as its legacy
            name, in the constructor and in a saved `config.json`.)
        fusion_type (`str`): how the two streams are combined: `concat` (auto_avsr's MLP with BatchNorm), `add`,
            `gated`.
        vision_model_name / audio_model_name / decoder_model_name (`str`, optional): Hub id or local folder of a
            pretrained component (used by the pretrained encoders and decoders).
        ctc_weight (`float`, optional): weight of the CTC loss; the attention loss gets `1 - ctc_weight`. Default:
            0.1 (auto_avsr's) when the CTC head trains on the `labels` (`ctc_vocabulary="decoder"`: the Transformer
            decoder's default), 0 with `ctc_vocabulary="separate"` (the LLM and Whisper decoders' default), whose
            targets are `ctc_labels` that a batch of `labels` alone does not carry; set it to train that head. A
            `config.json` saved without the field (before this default) loads with 0.1, its value then.
        frontend_channels (`int`): channels of the first ResNet stage (the output is `8 *` that).
        frontend_layers (`list[int]`): BasicBlocks per ResNet stage.
        frontend_activation (`str`): `swish`, `relu` or `prelu`.
        audio_samples_per_frame (`int`): raw samples per 25 fps output frame of the ResNet1D frontend (16 kHz / 25).
        fusion_hidden_size (`int`): hidden width of the `concat` fusion MLP.
        vision_config / audio_config (`dict` or `PreTrainedConfig`, optional): configuration of a pretrained encoder
            (`ViTConfig` for `vit`, `VivitConfig` for `vivit`, `CLIPVisionConfig` for `clip-vit`, `TimmWrapperConfig`
            for `timm` (e.g. `{"architecture": "resnet18"}`; its `model_args` go to `timm.create_model`, its
            `pretrained_cfg` holds the input size, mean and std), `WhisperConfig` for `whisper`, `WavLMConfig` for
            `wavlm`; a dict may leave out `model_type`). Saved inside `config.json`, so
            `from_pretrained` rebuilds the encoder without the network. Default: that class's defaults. Must be
            unset for the ResNet frontends.
        freeze_vision_encoder / freeze_audio_encoder (`bool`, optional): keep the `vit` / `vivit` / `clip-vit` /
            `timm` / `whisper` / `wavlm` encoder's weights fixed: they get `requires_grad=False` (so the optimizer
            leaves them out), run under `torch.no_grad()` and in eval mode (no dropout, no SpecAugment). `None` (the
            default) is decided where the model is built: an encoder loaded from a checkpoint
            (`from_pretrained_components` with `*_model_name`) is frozen, one initialised at random trains; the model
            writes the choice into its config, so a saved model keeps it. The training script's `--unfreeze-vision` /
            `--unfreeze-audio` set them to False. The ResNet frontends always train (True is refused for them).
        vision_pooling (`str`): one feature per frame from `vit` / `clip-vit`: `cls` (the CLS token; CLIP's pooled,
            post-layer-norm CLS) or `mean` (mean of the patch tokens). `vivit` always averages each time step's patches.
        max_stream_length_difference (`int`): audio and video of one sample may differ by this many 25 fps frames;
            both are cut to the shorter. A larger difference raises a ValueError.
        audio_frame_rate (`int`): frames per second of the audio encoder's output. 25 (default): every encoder is
            brought to the video rate (`whisper` and `wavlm` average their 50 Hz frames in pairs). 50: `whisper` and
            `wavlm` keep their own 50 Hz frames, untouched; audio-only models only (fusion aligns streams at 25 fps).
        hidden_size (`int`): width of the Conformer (and of what the decoder attends to).
        encoder_layers, encoder_attention_heads, encoder_ffn_dim (`int`): Conformer sizes. `encoder_layers=0` means
            no Conformer: the encoder's features reach the decoder and the CTC head as they are (no input scaling, no
            final LayerNorm), and a single encoder whose output width equals `hidden_size` is not projected either.
            With `audio_encoder="whisper"`, `audio_frame_rate=50`, `hidden_size=d_model` and
            `decoder_type="whisper-decoder"` (both from one Whisper checkpoint), the model is that Whisper: on Whisper's
            own input (log-mels padded to the 30 s window, no `attention_mask` or an all-ones one) its decoder
            attends to exactly the states of Whisper's encoder. With a mask that cuts a clip to its length, the
            encoder runs on the real frames only, which Whisper's decoder never saw in training: Whisper-base then
            repeats the sentence until `max_length` instead of ending it.
        conv_kernel_size (`int`): depthwise convolution kernel of the Conformer convolution module.
        macaron_style (`bool`): two half-step feed-forward modules per Conformer block.
        encoder_dropout, encoder_attention_dropout, positional_dropout (`float`): Conformer dropouts.
        ctc_dropout (`float`): dropout before the CTC projection.
        label_smoothing (`float`): label smoothing of the attention loss.
        text_config (`dict` or `PreTrainedConfig`): the decoder's configuration: `MMAVSRTextConfig` for the
            Transformer decoder, `WhisperConfig` for `whisper-decoder`, the LLM's own config (e.g. `LlamaConfig`, or
            a dict with its `model_type`) for `llm`.
        ctc_vocabulary (`str`, optional): what the CTC head's outputs are. `decoder`: the decoder's tokens (the
            Transformer decoder's vocabulary holds blank at 0; the LLM and Whisper decoders get one more output, the
            blank, after their vocabulary): its targets are the `labels`, and joint CTC/attention decoding works with
            every decoder. `separate` (LLM and Whisper decoders): units of its own, by default auto_avsr's 5049
            (blank 0, eos last), as an auto_avsr checkpoint's head; its targets are passed as `ctc_labels` (e.g. the
            text tokenized by `MMAVSRTokenizer.from_auto_avsr()`, which the training script's collator does) and
            `generate()` cannot use it. Default: `decoder` for the Transformer decoder, `separate` for the others (a
            5049-wide head instead of one as wide as an LLM's vocabulary).
        ctc_vocab_size (`int`, optional): size of the CTC head's output: the Transformer decoder's vocabulary, the
            LLM's or Whisper's + 1 with `ctc_vocabulary="decoder"` (another value raises), 5049 by default for
            `separate`.
        instruction (`str`, optional): the LLM decoder's instruction, the user turn's text before the encoder
            features; default per modality (`DEFAULT_INSTRUCTIONS`).
        system_prompt (`str`, optional): a system turn before the user turn. None (default): the prompt has no
            system turn at all (a chat template's default system prompt, e.g. SmolLM2's, is left out).
        llm_chat_template (`str`, optional): the Jinja chat template the prompt was rendered with (the LLM
            tokenizer's `chat_template`, saved with the model so that the prompt can be rebuilt); None: no template,
            the prompt is `instruction\n<features>\n`.
        instruction_ids (`list[int]`, optional): the LLM's prompt tokens before the encoder features (the
            rendered prompt up to the features); written by `set_instruction(model, tokenizer)` and
            `from_pretrained_components`.
        decoder_prompt_ids (`list[int]`, optional): tokens that start every decoder sequence: `forward` puts them
            before the labels, `generate` starts from them. Default: `[decoder_start_token_id]`; Whisper's
            `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`; for the LLM the prompt's tail after the
            features (e.g. the chat template's assistant header), `[bos_token_id]` without a tokenizer.
        llm_compression (`str`): how the LLM decoder's projector shortens the encoder frames (25 per second):
            `stack` (default; k consecutive frames concatenated into one embedding, the projector `k` times as
            wide), `pool` (the average of the real frames of each group of k) or `query` (`llm_num_queries` learned
            queries per window of `llm_query_window` frames, cross-attending to that window's real frames). Only
            for `decoder_type='llm'`.
        llm_compression_rates (`dict[str, int]`, optional): encoder frames per LLM embedding (k) for `stack` and
            `pool`, keyed by modality (`audio`, `video`, `audiovisual`); the model uses the rate of its own
            `modality` (the encoder fuses the streams before the decoder), which the dict must hold; the other
            modalities' rates may stay in it (one dict for a family of models, e.g. `{"audio": 4, "video": 2}`).
            Default: 1 (no compression) for the model's modality. The LLM reads ceil(T / k) embeddings for T frames.
            Not with `query`, whose rate is `llm_query_window / llm_num_queries`. (`llm_stack_factor=k`, its legacy
            form in configs saved before it, is read as `llm_compression="stack"` with rate k.)
        llm_query_window, llm_num_queries (`int`, optional): the query compressor's window (encoder frames) and
            learned queries per window: ceil(T / window) * queries embeddings for T frames. Only with
            `llm_compression="query"`, where they default to 4 and 1.
        use_qlora (`bool`): QLoRA: the LLM decoder's linear layers in 4-bit NF4 (bitsandbytes, on the CPU as on
            CUDA; `pip install "mmavsr[llm]"`), frozen, with LoRA adapters that train. Without bitsandbytes, building
            the model raises an ImportError. A randomly initialised LLM is quantized too; a pretrained one is loaded
            in 4-bit by `from_pretrained_components` and `from_pretrained` (see docs/qlora.md).
        use_lora (`bool`): LoRA adapters over the LLM's full-precision, frozen weights (not with `use_qlora`).
        qlora_r, qlora_alpha (`int`), lora_dropout (`float`): LoRA rank, scaling numerator and dropout.
        lora_target_modules (`list[str]`, optional): names of the LLM's linear layers that get adapters (default:
            the attention and MLP projections of Llama-style models).
    """

    model_type = "mmavsr"
    # the decoder's, the pretrained vision encoder's and the pretrained audio encoder's configurations, of any model
    # type (built in `__post_init__` from the encoder and decoder choices, which set the default type and check it);
    # declared so that Transformers finds them (`get_text_config`, dtype and attention implementation of sub-models)
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="mmavsr_text"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", optional=True),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
    }

    vision_encoder: str | None = "resnet"
    audio_encoder: str | None = None
    decoder_type: str = "transformer"
    fusion_type: str = "concat"
    vision_model_name: str | None = None
    audio_model_name: str | None = None
    decoder_model_name: str | None = None
    ctc_weight: float | None = None

    # ResNet frontends (auto_avsr's Conv3dResNet / Conv1dResNet)
    frontend_channels: int = 64
    frontend_layers: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    frontend_activation: str = "swish"
    audio_samples_per_frame: int = 640
    fusion_hidden_size: int = 8192

    # pretrained encoders and temporal alignment
    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    freeze_vision_encoder: bool | None = None
    freeze_audio_encoder: bool | None = None
    vision_pooling: str = "cls"
    max_stream_length_difference: int = 3
    audio_frame_rate: int = 25

    # Conformer
    hidden_size: int = 768
    encoder_layers: int = 12
    encoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    conv_kernel_size: int = 31
    macaron_style: bool = True
    encoder_dropout: float = 0.1
    encoder_attention_dropout: float = 0.0
    positional_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    ctc_dropout: float = 0.1

    # losses and decoder
    label_smoothing: float = 0.1
    text_config: dict | PreTrainedConfig | None = None
    ctc_vocabulary: str | None = None
    ctc_vocab_size: int | None = None
    instruction: str | None = None
    system_prompt: str | None = None
    llm_chat_template: str | None = None
    instruction_ids: list[int] | None = None
    decoder_prompt_ids: list[int] | None = None
    llm_compression: str = "stack"
    llm_compression_rates: dict | None = None
    llm_query_window: int | None = None
    llm_num_queries: int | None = None

    # LoRA / QLoRA on the LLM decoder
    use_qlora: bool = False
    use_lora: bool = False
    qlora_r: int = 16
    qlora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None

    initializer_range: float = 0.02
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        decoder = take_legacy_decoder(kwargs)
        if decoder is not None:
            self.decoder_type = decoder
        modality = kwargs.pop("modality", None)
        if modality is not None:
            _check_choice("modality", modality, tuple(LEGACY_MODALITIES))
            self.vision_encoder, self.audio_encoder = LEGACY_MODALITIES[modality]
        stack_factor = kwargs.pop("llm_stack_factor", None)
        self.text_config = self._build_text_config(self.text_config)
        self.vision_config = _build_encoder_config("vision", self.vision_encoder, self.vision_config)
        self.audio_config = _build_encoder_config("audio", self.audio_encoder, self.audio_config)
        super().__post_init__(**kwargs)
        self.frontend_layers = list(self.frontend_layers)
        _check_choice("vision_encoder", self.vision_encoder, VISION_ENCODERS, allow_none=True)
        _check_choice("audio_encoder", self.audio_encoder, AUDIO_ENCODERS, allow_none=True)
        _check_choice("decoder_type", self.decoder_type, DECODERS)
        _check_choice("fusion_type", self.fusion_type, FUSION_TYPES)
        _check_choice("vision_pooling", self.vision_pooling, VISION_POOLINGS)
        self._check_audio_frame_rate()
        self._check_freezing(legacy=decoder is not None)
        if self.max_stream_length_difference < 0:
            raise ValueError(f"`max_stream_length_difference` must be >= 0, got {self.max_stream_length_difference}.")
        _check_choice("frontend_activation", self.frontend_activation, ("swish", "relu", "prelu"))
        if self.vision_encoder is None and self.audio_encoder is None:
            raise ValueError(
                "An MMAVSR model needs at least one encoder: set `vision_encoder` (one of "
                f"{', '.join(VISION_ENCODERS)}) and/or `audio_encoder` (one of {', '.join(AUDIO_ENCODERS)})."
            )
        if self.encoder_layers < 0:
            raise ValueError(f"`encoder_layers` must be >= 0 (0: no Conformer), got {self.encoder_layers}.")
        if self.encoder_layers and self.hidden_size % self.encoder_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `encoder_attention_heads` "
                f"({self.encoder_attention_heads})."
            )
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f"`conv_kernel_size` must be odd, got {self.conv_kernel_size}.")
        self._resolve_decoder_defaults()
        self._resolve_llm_compression(stack_factor)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # a config.json saved before `ctc_weight` had a per-vocabulary default left it out when it was 0.1
        if "ctc_weight" not in config_dict and "ctc_weight" not in kwargs:
            config_dict = {**config_dict, "ctc_weight": LEGACY_CTC_WEIGHT}
        return super().from_dict(config_dict, **kwargs)

    def _resolve_llm_compression(self, stack_factor):
        """Check the LLM projector's compression options, map the legacy `llm_stack_factor` onto them, and fill
        the defaults (rate 1 for `stack` and `pool`, window 4 with 1 query for `query`)."""
        _check_choice("llm_compression", self.llm_compression, LLM_COMPRESSIONS)
        modality = self.modality
        if stack_factor is not None:
            if isinstance(stack_factor, bool) or not isinstance(stack_factor, int) or stack_factor < 1:
                raise ValueError(f"`llm_stack_factor` must be >= 1, got {stack_factor!r}.")
            if self.decoder_type != "llm" and stack_factor != 1:
                raise ValueError(
                    f"`llm_stack_factor` ({stack_factor}) groups encoder frames for an LLM decoder; this config has "
                    f"decoder_type={self.decoder_type!r}."
                )
            if self.decoder_type == "llm":
                if self.llm_compression != "stack":
                    raise ValueError(
                        f"`llm_stack_factor` ({stack_factor}) is the rate of llm_compression='stack' (its legacy "
                        f"name); this config has llm_compression={self.llm_compression!r}: set "
                        "`llm_compression_rates` instead."
                    )
                rates = self.llm_compression_rates
                if rates is not None and rates.get(modality) != stack_factor:
                    raise ValueError(
                        f"`llm_stack_factor` ({stack_factor}, the legacy name of the {modality!r} rate) disagrees "
                        f"with llm_compression_rates={rates}: give one of them."
                    )
                self.llm_compression_rates = {**(rates or {}), modality: stack_factor}
        if self.decoder_type != "llm":
            given = [
                f"{name}={getattr(self, name)!r}"
                for name in ("llm_compression_rates", "llm_query_window", "llm_num_queries")
                if getattr(self, name) is not None
            ]
            if self.llm_compression != "stack":
                given.insert(0, f"llm_compression={self.llm_compression!r}")
            if given:
                raise ValueError(
                    f"{', '.join(given)}: the LLM decoder's compression of the encoder frames; this config has "
                    f"decoder_type={self.decoder_type!r}."
                )
            return
        if self.llm_compression == "query":
            if self.llm_compression_rates is not None:
                raise ValueError(
                    f"llm_compression='query' takes its rate from `llm_query_window` / `llm_num_queries`; "
                    f"llm_compression_rates={self.llm_compression_rates} would not apply: leave it unset."
                )
            if self.llm_query_window is None:
                self.llm_query_window = DEFAULT_LLM_QUERY_WINDOW
            if self.llm_num_queries is None:
                self.llm_num_queries = DEFAULT_LLM_NUM_QUERIES
            for name in ("llm_query_window", "llm_num_queries"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
            if self.hidden_size % self.encoder_attention_heads:
                raise ValueError(
                    f"llm_compression='query' attends with `encoder_attention_heads` ({self.encoder_attention_heads}) "
                    f"heads, which must divide `hidden_size` ({self.hidden_size})."
                )
            return
        for name in ("llm_query_window", "llm_num_queries"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"`{name}` ({getattr(self, name)}) sets the query compressor; this config has "
                    f"llm_compression={self.llm_compression!r}: use llm_compression='query' or drop it."
                )
        rates = self.llm_compression_rates
        if rates is None:
            rates = {modality: 1}
        if not isinstance(rates, dict):
            raise ValueError(
                f"`llm_compression_rates` is a dict of encoder frames per LLM embedding keyed by modality (e.g. "
                f"{{{modality!r}: 4}}), got {rates!r}."
            )
        unknown = sorted(set(rates) - set(MODALITY_STREAMS))
        if unknown:
            raise ValueError(
                f"`llm_compression_rates` is keyed by modality ({', '.join(map(repr, MODALITY_STREAMS))}); "
                f"got {', '.join(map(repr, unknown))}."
            )
        if modality not in rates:
            raise ValueError(
                f"`llm_compression_rates` ({rates}) holds no rate for this model's modality {modality!r} (the "
                "encoder fuses its streams before the decoder: one rate, of its own modality, applies)."
            )
        for key, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`llm_compression_rates[{key!r}]` must be an integer >= 1 (encoder frames per LLM embedding), "
                    f"got {value!r}."
                )
        self.llm_compression_rates = dict(rates)

    @property
    def llm_compression_rate(self) -> float:
        """Encoder frames per LLM embedding of this model: its modality's rate (`stack`, `pool`), or
        `llm_query_window / llm_num_queries` (`query`). 1 for the other decoders."""
        if self.decoder_type != "llm":
            return 1
        if self.llm_compression == "query":
            return self.llm_query_window / self.llm_num_queries
        return self.llm_compression_rates[self.modality]

    def llm_num_embeddings(self, num_frames: int) -> int:
        """How many embeddings the LLM reads for `num_frames` encoder frames (the prompt's tokens aside)."""
        if self.llm_compression == "query":
            return math.ceil(num_frames / self.llm_query_window) * self.llm_num_queries
        return math.ceil(num_frames / self.llm_compression_rate)

    def _check_freezing(self, legacy: bool):
        for kind, choice in (("vision", self.vision_encoder), ("audio", self.audio_encoder)):
            name = f"freeze_{kind}_encoder"
            if getattr(self, name) and choice not in PRETRAINED_ENCODER_MODEL_TYPES:
                if legacy:
                    # saved before `decoder_type`, when True was every config's default (it froze pretrained
                    # encoders only): the ResNet frontends trained, as they do now
                    setattr(self, name, None)
                    continue
                kinds = ", ".join(repr(c) for c in PRETRAINED_ENCODER_MODEL_TYPES)
                raise ValueError(
                    f"{name}=True freezes a pretrained {kind} encoder ({kinds}); {kind}_encoder={choice!r} "
                    + ("is none of them: its frontend always trains." if choice else "means no such encoder.")
                )

    def resolve_encoder_freezing(self, loaded_kinds: tuple[str, ...] = ()) -> None:
        """Decide `freeze_vision_encoder` / `freeze_audio_encoder` where they are None, for the model being built:
        frozen for the kinds in `loaded_kinds` (their weights come from a checkpoint), trains otherwise."""
        for kind, choice in (("vision", self.vision_encoder), ("audio", self.audio_encoder)):
            name = f"freeze_{kind}_encoder"
            if choice is not None and getattr(self, name) is None:
                setattr(self, name, kind in loaded_kinds and choice in PRETRAINED_ENCODER_MODEL_TYPES)

    def _check_audio_frame_rate(self):
        _check_choice("audio_frame_rate", self.audio_frame_rate, AUDIO_FRAME_RATES)
        if self.audio_frame_rate == 25:
            return
        if self.audio_encoder not in NATIVE_50HZ_AUDIO_ENCODERS:
            raise ValueError(
                f"audio_frame_rate=50 keeps the 50 Hz frames of {' or '.join(NATIVE_50HZ_AUDIO_ENCODERS)}; "
                f"audio_encoder={self.audio_encoder!r} delivers 25 fps: use audio_frame_rate=25."
            )
        if self.vision_encoder is not None:
            raise ValueError(
                f"audio_frame_rate=50 is for audio-only models: fusion with vision_encoder={self.vision_encoder!r} "
                "aligns both streams at 25 fps (use audio_frame_rate=25)."
            )

    def _build_text_config(self, text_config):
        if isinstance(text_config, PreTrainedConfig):
            return text_config
        text_config = dict(text_config or {})
        model_type = text_config.pop(
            "model_type", DEFAULT_TEXT_MODEL_TYPES.get(self.decoder_type, MMAVSRTextConfig.model_type)
        )
        if model_type is None:
            raise ValueError(
                "decoder_type='llm' needs the LLM's configuration as `text_config` (e.g. a `LlamaConfig`, or a dict with "
                "its `model_type`), or `decoder_model_name` through `from_pretrained_components`."
            )
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"Unknown decoder config model_type {model_type!r} in `text_config`.")
        return CONFIG_MAPPING[model_type](**text_config)

    def _resolve_decoder_defaults(self):
        """Fill the decoder-dependent defaults: CTC vocabulary, instruction, decoder prompt."""
        text_config = self.text_config
        if self.decoder_type == "transformer" and text_config.model_type != MMAVSRTextConfig.model_type:
            raise ValueError(
                f"decoder_type='transformer' takes an MMAVSRTextConfig as `text_config`, got {text_config.model_type!r}; "
                "use decoder_type='llm' or 'whisper-decoder' for other decoders."
            )
        if self.decoder_type == "whisper-decoder" and text_config.model_type != "whisper":
            raise ValueError(f"decoder_type='whisper-decoder' takes a WhisperConfig, got {text_config.model_type!r}.")
        self._resolve_ctc_vocabulary()
        if self.ctc_weight is None:
            # a head over its own units trains on `ctc_labels`: without them a default model could not train
            self.ctc_weight = 0.1 if self.ctc_vocabulary == "decoder" else 0.0
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"`ctc_weight` must lie in [0, 1], got {self.ctc_weight}.")
        if self.decoder_type == "llm" and self.instruction is None:
            self.instruction = DEFAULT_INSTRUCTIONS[self.modality]
        for name in ("system_prompt", "llm_chat_template"):
            if getattr(self, name) is None:
                continue
            if self.decoder_type != "llm":
                raise ValueError(
                    f"`{name}` belongs to the LLM decoder's prompt; this config has decoder_type={self.decoder_type!r}."
                )
            if self.instruction_ids is None:
                # only a tokenizer renders it: without the ids it would be saved and never read
                raise ValueError(
                    f"`{name}` is rendered into the prompt ids by the LLM's tokenizer: build the model with "
                    "`from_pretrained_components(decoder_model_name=...)`, or call `set_instruction(model, tokenizer, "
                    "system_prompt=...)` on it."
                )
        if self.decoder_prompt_ids is None:
            start = getattr(text_config, "decoder_start_token_id", None)
            if self.decoder_type == "llm" or start is None:
                start = text_config.bos_token_id if text_config.bos_token_id is not None else text_config.eos_token_id
            if start is None:
                raise ValueError("The decoder config has no decoder_start/bos/eos token id: set `decoder_prompt_ids`.")
            self.decoder_prompt_ids = [int(start)]
        self.decoder_prompt_ids = [int(i) for i in self.decoder_prompt_ids]
        if self.lora_target_modules is not None:
            self.lora_target_modules = list(self.lora_target_modules)
        if self.use_qlora and self.use_lora:
            raise ValueError(
                "`use_qlora` (LoRA over a 4-bit LLM) and `use_lora` (LoRA over a full-precision LLM) exclude each "
                "other: set one."
            )
        for option in ("use_qlora", "use_lora"):
            if getattr(self, option) and self.decoder_type != "llm":
                raise ValueError(
                    f"`{option}` adapts an LLM decoder; this config has decoder_type={self.decoder_type!r}."
                )

    def _resolve_ctc_vocabulary(self):
        if self.ctc_vocabulary is None:
            # a config saved before `ctc_vocabulary` existed holds only the head's size
            shared = self.decoder_type == "transformer" or self.ctc_vocab_size == self.text_config.vocab_size + 1
            self.ctc_vocabulary = "decoder" if shared else "separate"
        _check_choice("ctc_vocabulary", self.ctc_vocabulary, CTC_VOCABULARIES)
        if self.decoder_type == "transformer":
            if self.ctc_vocabulary != "decoder":
                raise ValueError(
                    "decoder_type='transformer' trains its CTC head on its own vocabulary (blank 0): ctc_vocabulary must "
                    f"be 'decoder', got {self.ctc_vocabulary!r}."
                )
            if self.ctc_vocab_size is None:
                self.ctc_vocab_size = self.text_config.vocab_size
            return
        if self.ctc_vocabulary == "separate":
            if self.ctc_vocab_size is None:
                self.ctc_vocab_size = AUTO_AVSR_VOCAB_SIZE
            return
        size = self.text_config.vocab_size + 1
        if self.ctc_vocab_size is None:
            self.ctc_vocab_size = size
        elif self.ctc_vocab_size != size:
            raise ValueError(
                f"ctc_vocabulary={self.ctc_vocabulary!r} with decoder_type={self.decoder_type!r} means a CTC head of {size} "
                f"outputs, got ctc_vocab_size={self.ctc_vocab_size}."
            )

    @property
    def ctc_blank_id(self) -> int:
        """The CTC head's blank: 0, or for the LLM and Whisper decoders sharing their vocabulary the extra last id."""
        shared_pretrained = self.decoder_type != "transformer" and self.ctc_vocabulary == "decoder"
        return self.text_config.vocab_size if shared_pretrained else 0

    @property
    def ctc_shares_decoder_vocabulary(self) -> bool:
        """Whether CTC scores the decoder's tokens (joint CTC/attention decoding needs it)."""
        return self.ctc_vocabulary == "decoder"

    @property
    def modality(self) -> str:
        """auto_avsr's name for the input: `video`, `audio` or `audiovisual`."""
        return modality_of(self.vision_encoder, self.audio_encoder)

    @property
    def input_streams(self) -> tuple[str, ...]:
        """The streams the model reads: `("video",)`, `("audio",)` or `("video", "audio")`."""
        return MODALITY_STREAMS[self.modality]

    @property
    def frontend_output_size(self) -> int:
        return self.frontend_channels * 8

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size


# `text_config` defaults to this type (`sub_configs_defaults`), which Transformers resolves through `AutoConfig`; the
# package registers it too, but this module alone (a `trust_remote_code` export) must save and load as well
AutoConfig.register(MMAVSRTextConfig.model_type, MMAVSRTextConfig, exist_ok=True)


__all__ = ["MMAVSRConfig", "MMAVSRTextConfig", "modality_of", "take_legacy_decoder"]
