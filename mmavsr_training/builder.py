"""Building an MMAVSR model and its processor: from config fields (a preset's, `presets.py`), from the training script's
model choices (its `ModelArguments`, as a mapping of field name to value), from a saved model or an auto_avsr
checkpoint, or from the weights of several saved models (`init_from_models`).

Every choice is honoured or refused with a message naming its flag: a saved model (`--pretrained-model-path`) keeps its
architecture, so a choice that disagrees with it is refused before anything is loaded (`checkpoint_overrides`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from tokenizers import normalizers
from transformers import AutoTokenizer, WhisperConfig

from mmavsr_processing import MMAVSRFeatureExtractor, MMAVSRProcessor, MMAVSRTokenizer, MMAVSRVideoProcessor
from modeling_mmavsr.configuration_mmavsr import AUTO_AVSR_VOCAB_SIZE, LEGACY_MODALITIES, MMAVSRConfig
from modeling_mmavsr.loading_checks_mmavsr import UnsafeCheckpointError
from modeling_mmavsr.modeling_mmavsr import MMAVSRForConditionalGeneration
from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer
from modeling_mmavsr.modeling_mmavsr_lora import llm_base_is_saved

from .convert_auto_avsr_checkpoint import convert_auto_avsr_state_dict, load_auto_avsr_checkpoint


logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """Command-line choices that cannot all be honoured (flags that contradict each other or a saved model): the
    training script's command line reports it as a usage error, one line and exit status 2, as argparse does."""


# weights sized by the vocabulary: taken by `init_from_models` only from a model with the same tokenizer
VOCABULARY_WEIGHTS = ("model.decoder.embed_tokens.", "lm_head.", "ctc_head.")
# model choices naming a part of the architecture: a saved model must agree with each one given
ARCHITECTURE_CHOICES = (
    "modality",
    "vision_encoder",
    "audio_encoder",
    "decoder",
    "fusion_type",
    "vision_model_name",
    "audio_model_name",
    "decoder_model_name",
)
# the config field of a choice whose name differs
CONFIG_FIELDS = {"decoder": "decoder_type"}
ADAPTER_CHOICES = ("use_qlora", "use_lora")
NEW_MODEL_ADVICE = "drop the flag, or start a new model from its weights with --init_from_models or --transfer-frontend"


def flag(choice: str) -> str:
    """The command-line flag of a model choice (`vision_encoder` -> `--vision-encoder`)."""
    return "--" + choice.replace("_", "-")


def modalities_of(config: MMAVSRConfig) -> tuple[str, ...]:
    """The inputs a model reads: `("video",)`, `("audio",)` or `("video", "audio")` (the config derives them)."""
    return config.input_streams


def _adapter_overrides(choices: Mapping) -> dict:
    """--use-qlora / --use-lora with their rank and alpha as config fields."""
    overrides = {}
    for field in ADAPTER_CHOICES:
        if not choices.get(field):
            continue
        if not hasattr(MMAVSRConfig, field):
            raise NotImplementedError(f"{flag(field)}: this version of MMAVSRConfig has no `{field}` field.")
        overrides[field] = True
    if overrides:  # the rank and alpha of the adapters (the config's defaults unless chosen)
        overrides.update({name: choices[name] for name in ("qlora_r", "qlora_alpha") if choices.get(name) is not None})
    return overrides


def config_overrides(choices: Mapping, base: Mapping | None = None) -> dict:
    """The config fields that model `choices` set over `base` (a preset's fields): `modality` decides which encoders
    exist, `vision_encoder` / `audio_encoder` their type; `decoder` sets `decoder_type`; `unfreeze_*` train a
    pretrained encoder; `use_qlora` / `use_lora` add adapters with `qlora_r` / `qlora_alpha`."""
    base = base or {}
    overrides = {}
    vision, audio = base.get("vision_encoder"), base.get("audio_encoder")
    modality = choices.get("modality")
    if modality is not None:
        wanted_vision, wanted_audio = LEGACY_MODALITIES[modality]
        vision = (vision or wanted_vision) if wanted_vision else None
        audio = (audio or wanted_audio) if wanted_audio else None
        for field, allowed in (("vision_encoder", wanted_vision), ("audio_encoder", wanted_audio)):
            if choices.get(field) is not None and allowed is None:
                raise UsageError(f"--modality {modality} has no use for {flag(field)} {choices[field]}.")
    vision = choices.get("vision_encoder") or vision
    audio = choices.get("audio_encoder") or audio
    if modality is not None or choices.get("vision_encoder") or choices.get("audio_encoder"):
        overrides.update(vision_encoder=vision, audio_encoder=audio)
    if choices.get("decoder") is not None:  # the --decoder flag sets the config's `decoder_type`
        overrides["decoder_type"] = choices["decoder"]
    for field in ("fusion_type", "vision_model_name", "audio_model_name", "decoder_model_name", "ctc_weight"):
        if choices.get(field) is not None:
            overrides[field] = choices[field]
    # pretrained encoders are frozen unless --unfreeze-*
    if choices.get("unfreeze_vision"):
        overrides["freeze_vision_encoder"] = False
    if choices.get("unfreeze_audio"):
        overrides["freeze_audio_encoder"] = False
    overrides.update(_adapter_overrides(choices))
    return overrides


def checkpoint_overrides(config: MMAVSRConfig, choices: Mapping, path: str) -> dict:
    """The config fields that model `choices` may change on the saved model at `path` (of config `config`): the CTC
    weight, unfreezing its encoders, and where the base weights of an LLM decoder saved without them (adapters only)
    now are (`decoder_model_name`, the same LLM moved: `check_same_decoder` refuses another). A choice of
    architecture (modality, encoders, decoder, fusion, pretrained parts, adapters) or of a new model (preset, new
    vocabulary) that disagrees with the saved one is refused, naming the flag and the checkpoint's value."""
    if choices.get("config_name"):
        raise UsageError(
            f"--config_name {choices['config_name']} builds a new model, --pretrained-model-path {path} loads a saved "
            "one: give one of them (to start a new model from saved weights: --init_from_models or "
            "--transfer-frontend/--transfer-encoder)."
        )
    if choices.get("train_vocabulary_size"):
        raise UsageError(
            f"--train_vocabulary_size trains a new vocabulary, but the model at {path} decodes into its own: drop the "
            "flag, or start a new model from its weights with --init_from_models."
        )
    honoured = ["ctc_weight", "unfreeze_vision", "unfreeze_audio"]
    for field in ARCHITECTURE_CHOICES:
        wanted = choices.get(field)
        saved = config.modality if field == "modality" else getattr(config, CONFIG_FIELDS.get(field, field))
        if wanted is None or wanted == saved:
            continue
        if field == "decoder_model_name" and config.decoder_type == "llm" and not llm_base_is_saved(path):
            honoured.append(field)  # the folder keeps the adapters only: the flag says where the base LLM is
            continue
        if field == "fusion_type" and config.modality != "audiovisual":
            saved = f"{config.modality}-only: no fusion"
        raise UsageError(
            f"{flag(field)} {wanted} disagrees with the checkpoint at {path} ({saved}); {NEW_MODEL_ADVICE}."
        )
    adapters = _adapter_overrides(choices)
    for field in ADAPTER_CHOICES:
        if field not in adapters:
            continue
        saved = {name: getattr(config, name, None) for name in (field, "qlora_r", "qlora_alpha")}
        wanted = {name: adapters.get(name, getattr(MMAVSRConfig, name)) for name in saved}
        if saved != wanted:
            shown = ", ".join(f"{name}={value}" for name, value in saved.items())
            asked = ", ".join(f"{name}={value}" for name, value in wanted.items())
            raise UsageError(
                f"{flag(field)} (with {asked}) disagrees with the checkpoint at {path} ({shown}); {NEW_MODEL_ADVICE}."
            )
    return config_overrides({name: choices.get(name) for name in honoured})


def load_pretrained(path: str, choices: Mapping | None = None) -> MMAVSRForConditionalGeneration:
    """A save_pretrained folder, or an auto_avsr .pth checkpoint converted on the fly; `choices` (model choices, see
    `checkpoint_overrides`) are checked against its config first. Weights are read from safetensors or with
    `torch.load(weights_only=True)`: a pickle that needs more than tensors is refused."""
    choices = choices or {}
    source = Path(path)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"--pretrained-model-path {path}: folder has no config.json (not a saved model).")
        overrides = checkpoint_overrides(MMAVSRConfig.from_pretrained(source), choices, path)
        try:
            return MMAVSRForConditionalGeneration.from_pretrained(source, **overrides)
        except UnsafeCheckpointError as error:  # from_pretrained names the file and what it needs
            raise UnsafeCheckpointError(f"--pretrained-model-path {path}: {error}") from None
    if source.is_file() and source.suffix in (".pth", ".pt", ".ckpt"):
        config, state_dict = convert_auto_avsr_state_dict(load_auto_avsr_checkpoint(source))
        for name, value in checkpoint_overrides(config, choices, path).items():
            setattr(config, name, value)
        model = MMAVSRForConditionalGeneration(config)
        model.load_state_dict(state_dict, strict=True)
        return model
    raise FileNotFoundError(f"--pretrained-model-path {path}: no such model folder or .pth file.")


def model_from_values(values: Mapping, pretrained: bool = True) -> MMAVSRForConditionalGeneration:
    """A new model of config fields `values`: the parts named by `*_model_name` are loaded through
    `from_pretrained_components` when `pretrained`, else everything starts from random weights."""
    named = any(values.get(f"{part}_model_name") for part in ("vision", "audio", "decoder"))
    if pretrained and named:
        return MMAVSRForConditionalGeneration.from_pretrained_components(**values)
    return MMAVSRForConditionalGeneration(MMAVSRConfig(**values))


def check_model_choices(choices: Mapping) -> None:
    """Refuse the combinations of model choices that cannot all be honoured, before anything is loaded; a saved
    model's config is checked against the choices too (`checkpoint_overrides`)."""
    path = choices.get("model_name_or_path")
    if choices.get("transfer_frontend") and choices.get("transfer_encoder"):
        raise UsageError(
            "--transfer-frontend copies the frontends, --transfer-encoder the whole encoder (frontends included): "
            "give one of them."
        )
    for field in ("qlora_r", "qlora_alpha"):
        if choices.get(field) is not None and not any(choices.get(name) for name in ADAPTER_CHOICES):
            raise UsageError(
                f"{flag(field)} {choices[field]} sets the LoRA adapters of --use-qlora or --use-lora: give one."
            )
    transfer = choices.get("transfer_frontend") or choices.get("transfer_encoder")
    if choices.get("init_from_models") and (path or transfer):
        raise UsageError(
            "--init_from_models starts a new model from saved ones; --pretrained-model-path (and "
            "--transfer-frontend/--transfer-encoder) load one: use one or the other."
        )
    if transfer and not path:
        raise UsageError("--transfer-frontend/--transfer-encoder need --pretrained-model-path.")
    if path and not transfer and Path(path, "config.json").is_file():
        checkpoint_overrides(MMAVSRConfig.from_pretrained(path), choices, path)


def build_model(
    choices: Mapping, base: Mapping | None = None, tokenizer: MMAVSRTokenizer | None = None
) -> MMAVSRForConditionalGeneration:
    """The model of the training script's model `choices` (`ModelArguments` fields): a saved model
    (`model_name_or_path`), or a new one from `base` (a preset's config fields) and the choices, its frontends or
    encoder copied from a saved model with `transfer_frontend` / `transfer_encoder`. A new `tokenizer` sets the
    Transformer decoder's vocabulary size and special ids."""
    check_model_choices(choices)
    path = choices.get("model_name_or_path")
    transfer = choices.get("transfer_frontend") or choices.get("transfer_encoder")
    if path and not transfer:
        return load_pretrained(path, choices)
    base = dict(base or {})
    overrides = config_overrides(choices, base)
    if not base and "vision_encoder" not in overrides:
        raise ValueError(
            "Which model? Give --pretrained-model-path, --config_name (a preset in hub_configs/), --modality, or "
            "--vision-encoder/--audio-encoder."
        )
    values = {**base, **overrides}
    if tokenizer is not None and values.get("decoder_type", "transformer") != "transformer":
        raise ValueError(
            f"--train_vocabulary_size trains a vocabulary for the Transformer decoder; --decoder "
            f"{values['decoder_type']} writes with its own tokenizer (--decoder-model-name or --tokenizer_name)."
        )
    if tokenizer is not None:
        special = tokenizer.eos_token_id
        values["text_config"] = {
            **values.get("text_config", {}),
            "vocab_size": tokenizer.vocab_size,
            "pad_token_id": 0,
            "bos_token_id": special,
            "eos_token_id": special,
            "decoder_start_token_id": special,
        }
    model = model_from_values(values)
    if transfer:
        transfer_weights(model, path, encoder=bool(choices.get("transfer_encoder")))
    return model


def transfer_weights(model: MMAVSRForConditionalGeneration, path: str, encoder: bool = False) -> None:
    """auto_avsr's --transfer-frontend / --transfer-encoder: copy the frontends (or the whole encoder) of the saved
    model at `path` into `model`."""
    source = load_pretrained(path)
    prefixes = ("model.encoder.",) if encoder else ("model.encoder.vision_frontend.", "model.encoder.audio_frontend.")
    state = {k: v for k, v in source.state_dict().items() if k.startswith(prefixes)}
    missing = [k for k in state if k not in model.state_dict()]
    if not state or missing:
        raise ValueError(
            f"--pretrained-model-path {path}: cannot transfer {prefixes} "
            f"({'nothing found' if not state else f'{len(missing)} keys absent from this model'})."
        )
    model.load_state_dict(state, strict=False)
    logger.info(f"Loaded {len(state)} tensors ({', '.join(prefixes)}) from {path}.")


def _same_vocabulary(path: str, processor: MMAVSRProcessor) -> bool:
    folder = Path(path)
    if not (folder.is_dir() and (folder / "processor_config.json").is_file()):
        return False
    return MMAVSRProcessor.from_pretrained(folder).tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def init_from_models(model: MMAVSRForConditionalGeneration, processor: MMAVSRProcessor, paths: list[str]) -> None:
    """--init_from_models: fill `model`'s weights from saved models, the first holding a tensor of the same name and
    shape giving it; token embeddings and output layers only from a model whose tokenizer has `processor`'s
    vocabulary. Logs which weights came from where and which start new."""
    # parameters and buffers only: a 4-bit LLM's state_dict also holds bitsandbytes quant-state entries, and its
    # packed 4-bit weights (frozen, from decoder_model_name) cannot take another model's tensors
    own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    target = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name in own and getattr(own[name], "quant_state", None) is None
    }
    taken: dict[str, str] = {}
    loaded: dict = {}
    for path in paths:
        source_model = load_pretrained(path)
        same_vocabulary = _same_vocabulary(path, processor)
        for name, tensor in source_model.state_dict().items():
            if name in taken or name not in target or target[name].shape != tensor.shape:
                continue
            if name.startswith(VOCABULARY_WEIGHTS) and not same_vocabulary:
                continue
            loaded[name] = tensor
            taken[name] = path
        if not same_vocabulary:
            logger.warning(
                f"--init_from_models {path}: another vocabulary; its embeddings and output layers are not used."
            )
    if not taken:
        raise ValueError(f"--init_from_models {' '.join(paths)}: no weight of this model has a match there.")
    result = model.load_state_dict(loaded, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"--init_from_models: these weights were not loaded: {', '.join(result.unexpected_keys)}")
    for path in paths:
        parts = sorted({".".join(n.split(".")[:3]) for n, p in taken.items() if p == path})
        logger.info(f"--init_from_models: from {path}: {', '.join(parts) or 'nothing'}")
    new = sorted({".".join(n.split(".")[:3]) for n in target if n not in taken})
    logger.info(f"--init_from_models: new: {', '.join(new) or 'nothing'}")


def _whisper_mel_bins(audio_config) -> int:
    if audio_config is None:
        return WhisperConfig().num_mel_bins
    if isinstance(audio_config, Mapping):
        return audio_config.get("num_mel_bins", WhisperConfig().num_mel_bins)
    return audio_config.num_mel_bins


def processor_from_settings(values: MMAVSRConfig | Mapping, settings: Mapping | None, tokenizer) -> MMAVSRProcessor:
    """The processor of a model of config `values` (an `MMAVSRConfig` or its fields): the video processor and feature
    extractor from `settings` (a preset's `processor` key: `video_processor` / `feature_extractor` keyword
    arguments) over the encoders' needs (a Whisper encoder reads log-mels of its own number of bins; a timm backbone
    takes size, crop, mean and std from its timm data config), and `tokenizer` with the `tokenizer` settings
    (`apply_tokenizer_settings`)."""
    settings = settings or {}
    tokenizer = apply_tokenizer_settings(tokenizer, settings.get("tokenizer", {}))
    is_config = isinstance(values, MMAVSRConfig)
    get = (lambda name: getattr(values, name, None)) if is_config else values.get
    video_settings = dict(settings.get("video_processor", {}))
    audio_kwargs = dict(settings.get("feature_extractor", {}))
    if get("audio_encoder") == "whisper":
        audio_kwargs.setdefault("feature_type", "log-mel")
        audio_kwargs.setdefault("num_mel_bins", _whisper_mel_bins(get("audio_config")))
    if get("vision_encoder") == "timm":
        config = values if is_config else MMAVSRConfig(**values)
        video_processor = MMAVSRVideoProcessor.from_timm(config, **video_settings)
    else:
        video_settings.setdefault("vision_encoder", get("vision_encoder") or "resnet")
        video_processor = MMAVSRVideoProcessor(**video_settings)
    return MMAVSRProcessor(
        feature_extractor=MMAVSRFeatureExtractor(**audio_kwargs), video_processor=video_processor, tokenizer=tokenizer
    )


def apply_tokenizer_settings(tokenizer, settings: Mapping):
    """A preset's `tokenizer` settings. `lowercase: true` lower-cases every transcript before it is tokenized, for
    the labels as for any text given later (a `Lowercase` normalizer in the tokenizer's `tokenizers` backend, saved
    in its tokenizer.json): an LLM knows lower-case words better than auto_avsr's upper-case transcripts, and spells
    them in fewer tokens. The model then writes lower-case text, and WER compares it with the lower-cased labels.
    Only for a decoder's own (`tokenizers`) tokenizer: auto_avsr's units are upper case."""
    unknown = sorted(set(settings) - {"lowercase"})
    if unknown:
        raise ValueError(f"unknown tokenizer settings {unknown}; the one setting is 'lowercase' (true or false).")
    if not settings.get("lowercase", False):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or isinstance(tokenizer, MMAVSRTokenizer):
        raise ValueError(
            f"tokenizer setting lowercase: {type(tokenizer).__name__} cannot lower-case its text (auto_avsr's "
            "units are upper case); it is for an LLM or Whisper decoder's own tokenizer (--decoder-model-name)."
        )
    if backend.normalizer is None:
        backend.normalizer = normalizers.Lowercase()
    elif not isinstance(backend.normalizer, normalizers.Lowercase):
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), backend.normalizer])
    return tokenizer


def default_tokenizer(config: MMAVSRConfig, tokenizer_name: str | None = None):
    """`tokenizer_name`; else the pretrained LLM's or Whisper's own tokenizer (`decoder_model_name`), set up to write
    the labels those decoders train on; else auto_avsr's unigram5000."""
    if tokenizer_name:
        if config.decoder_type == "transformer":
            return MMAVSRTokenizer.from_pretrained(tokenizer_name)
        return AutoTokenizer.from_pretrained(tokenizer_name)
    if config.decoder_type != "transformer":
        if not config.decoder_model_name:
            raise ValueError(
                f"--decoder {config.decoder_type} writes its labels with the decoder's own tokenizer: give "
                "--decoder-model-name (the LLM or Whisper checkpoint) or --tokenizer_name."
            )
        return load_decoder_tokenizer(config.decoder_type, config.decoder_model_name)
    return MMAVSRTokenizer.from_auto_avsr()


def build_processor(
    config: MMAVSRConfig,
    settings: Mapping | None = None,
    tokenizer=None,
    tokenizer_name: str | None = None,
    model_name_or_path: str | None = None,
) -> MMAVSRProcessor:
    """The processor of `config`'s model: a saved one (`tokenizer_name`, else `model_name_or_path`, when it is a
    processor folder and no new `tokenizer` is given), else built from `settings` (`processor_from_settings`) with
    `tokenizer` or the default one. Refused when the tokenizer's ids do not fit the decoder's vocabulary."""
    source = tokenizer_name or model_name_or_path
    if tokenizer is None and source and Path(source, "processor_config.json").is_file():
        processor = MMAVSRProcessor.from_pretrained(source)
    else:
        processor = processor_from_settings(config, settings, tokenizer or default_tokenizer(config, tokenizer_name))
    # a pretrained decoder's embedding table may have rows no token uses (Whisper's, Llama 3's are padded)
    transformer = config.decoder_type == "transformer"
    tokens = processor.tokenizer.vocab_size if transformer else len(processor.tokenizer)
    if tokens > config.vocab_size or (transformer and tokens != config.vocab_size):
        raise ValueError(
            f"The tokenizer has {tokens} ids but the model's decoder has {config.vocab_size}; "
            "give the matching --tokenizer_name or set text_config.vocab_size."
        )
    return processor


def separate_ctc_tokenizer(config: MMAVSRConfig) -> MMAVSRTokenizer | None:
    """The tokenizer writing `ctc_labels` for a CTC head with a vocabulary of its own (LLM and Whisper decoders,
    `ctc_vocabulary="separate"`, trained when ctc_weight > 0): auto_avsr's unigram5000 units."""
    if config.ctc_weight == 0 or config.ctc_shares_decoder_vocabulary:
        return None
    if config.ctc_vocab_size != AUTO_AVSR_VOCAB_SIZE:
        raise ValueError(
            f"The CTC head has a vocabulary of its own with {config.ctc_vocab_size} units; the script writes CTC "
            f"targets in auto_avsr's {AUTO_AVSR_VOCAB_SIZE} units only: use --ctc-weight 0, or ctc_vocabulary "
            "'decoder' in the preset (CTC over the decoder's tokens)."
        )
    return MMAVSRTokenizer.from_auto_avsr()


__all__ = [
    "build_model",
    "build_processor",
    "check_model_choices",
    "checkpoint_overrides",
    "config_overrides",
    "default_tokenizer",
    "init_from_models",
    "load_pretrained",
    "modalities_of",
    "model_from_values",
    "processor_from_settings",
    "separate_ctc_tokenizer",
    "transfer_weights",
]
