"""Named model presets: the JSON files of `hub_configs/` (one per configuration, e.g. `mmavsr-avsr-vit-whisper-llama-qlora`).

A preset holds `MMAVSRConfig` fields (the `*_model_name` fields name the Hub checkpoints of its pretrained parts), an
optional `processor` key with the keyword arguments of the video processor and the feature extractor, and the
tokenizer's settings (`builder.apply_tokenizer_settings`):
`{"video_processor": {...}, "feature_extractor": {...}, "tokenizer": {"lowercase": true}}`, and an optional `training`
key: the training recipe measured for the model, as defaults of the training script's arguments
(`{"learning_rate": 1e-3, "warmup_steps": 0.2, ...}`; its command-line flags override them). The training script reads
the same files (`--config_name NAME`); the models and processors are built by `builder.py`, for both.
"""

import dataclasses
import json
from importlib.resources import files
from pathlib import Path

from modeling_mmavsr.configuration_mmavsr import MMAVSRConfig, take_legacy_decoder
from modeling_mmavsr.modeling_mmavsr import MMAVSRForConditionalGeneration

from .builder import model_from_values, processor_from_settings


# the presets' folder: `hub_configs/` of the repository, installed as the data package `mmavsr_training.hub_configs`
# (setup.cfg maps it; the wheel and the editable install both carry it)
PRESETS_DIR = Path(files("mmavsr_training.hub_configs"))
# keys a config.json carries that are no configuration fields
_SAVED_ONLY_KEYS = (
    "architectures",
    "auto_map",
    "custom_pipelines",
    "transformers_version",
    "model_type",
    "dtype",
    "_name_or_path",
)
# keys a config accepts besides its fields: auto_avsr's `modality`, the legacy `llm_stack_factor` (`decoder` is
# mapped before the check)
_LEGACY_CONFIG_KEYS = ("modality", "llm_stack_factor")


def preset_names() -> list[str]:
    """The names of the presets in `hub_configs/`."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def preset_path(name: str) -> Path:
    """The JSON file of a preset name (with or without `.json`), `name` itself when it is a JSON file, or the
    config.json of a saved model's folder."""
    for candidate in (PRESETS_DIR / f"{name}.json", PRESETS_DIR / name, Path(name)):
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate / "config.json"
    raise FileNotFoundError(f"No preset {name!r} in {PRESETS_DIR} (presets: {', '.join(preset_names())}).")


def _read_preset(name: str) -> tuple[Path, dict, dict]:
    path = preset_path(name)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a preset is a JSON object of MMAVSRConfig fields.")
    training = values.pop("training", {})
    if not isinstance(training, dict):
        raise ValueError(f"{path}: 'training' is a JSON object of the training script's arguments, got {training!r}.")
    return path, values, training


def read_preset(name: str) -> tuple[dict, dict, dict]:
    """`(config fields, processor settings, training recipe)` of a preset, from one read of its file."""
    path, values, training = _read_preset(name)
    for key in _SAVED_ONLY_KEYS:
        values.pop(key, None)
    legacy = take_legacy_decoder(values)
    if legacy is not None:
        values["decoder_type"] = legacy
    processor = values.pop("processor", {})
    # MMAVSRConfig keeps any keyword as an attribute: a misspelt or unknown field would be carried and never applied
    fields = {field.name for field in dataclasses.fields(MMAVSRConfig)}
    unknown = sorted(set(values) - fields - set(_LEGACY_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown configuration fields {unknown}: a preset holds MMAVSRConfig fields (see its docstring), "
            "'processor' and 'training'."
        )
    unknown = sorted(set(processor) - {"video_processor", "feature_extractor", "tokenizer"})
    if unknown:
        raise ValueError(
            f"{path}: unknown processor settings {unknown}; use 'video_processor', 'feature_extractor' and 'tokenizer'."
        )
    return values, processor, training


def load_preset(name: str) -> tuple[dict, dict]:
    """`(config fields, processor settings)` of a preset."""
    values, processor, _ = read_preset(name)
    return values, processor


def load_preset_training(name: str) -> dict:
    """The training recipe of a preset (its `training` key; `{}` without one): argument names of the training
    script (`DataTrainingArguments`, `AVSRTrainingArguments`) and their defaults for this model. The script checks
    the names."""
    return _read_preset(name)[2]


def build_model_from_preset(name: str, pretrained: bool = True, **overrides) -> MMAVSRForConditionalGeneration:
    """The model of a preset, its fields updated with `overrides`.

    With `pretrained=True` the parts named by `*_model_name` are loaded (Hub ids or local folders) through
    `MMAVSRForConditionalGeneration.from_pretrained_components`; with `pretrained=False` the architecture is built
    with random weights, without the network: the pretrained parts then take their configuration from
    `vision_config` / `audio_config` / `text_config` in `overrides` (the LLM decoder needs its `text_config`).
    """
    values, _ = load_preset(name)
    legacy = take_legacy_decoder(overrides)
    if legacy is not None:
        overrides["decoder_type"] = legacy
    values.update(overrides)
    return model_from_values(values, pretrained=pretrained)


def build_processor_from_preset(name: str, tokenizer=None, **overrides):
    """The `MMAVSRProcessor` of a preset: its video processor and feature extractor settings (updated with
    `overrides`, keyed `video_processor` / `feature_extractor`), and `tokenizer` (default: auto_avsr's unigram5000,
    the Transformer decoder's; the LLM and Whisper decoders take their own)."""
    from mmavsr_processing.tokenization_mmavsr import MMAVSRTokenizer

    values, settings = load_preset(name)
    settings = {
        part: {**settings.get(part, {}), **overrides.get(part, {})} for part in ("video_processor", "feature_extractor")
    }
    tokenizer = tokenizer if tokenizer is not None else MMAVSRTokenizer.from_auto_avsr()
    return processor_from_settings(values, settings, tokenizer)


__all__ = [
    "PRESETS_DIR",
    "preset_names",
    "preset_path",
    "load_preset",
    "load_preset_training",
    "read_preset",
    "build_model_from_preset",
    "build_processor_from_preset",
]
