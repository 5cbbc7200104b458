#!/usr/bin/env python
"""Train, evaluate and decode MMAVSR models (lip reading, speech recognition, audio-visual) with `Seq2SeqTrainer`.

Arguments are `ModelArguments`, `DataTrainingArguments` and `AVSRTrainingArguments` (a `Seq2SeqTrainingArguments`),
given on the command line or as one JSON/YAML file. auto_avsr's flags work as written in its README:

    python run_speech_recognition_avsr.py --exp-dir=exp --exp-name=vsr --modality=video --root-dir=DATA \
        --train-file=train.csv --num-nodes=1                                            # = auto_avsr's train.py
    python run_speech_recognition_avsr.py --modality=video --root-dir=DATA --test-file=test.csv \
        --pretrained-model-path=exp/vsr/model_avg_10                                   # = auto_avsr's eval.py

Without `--do_train/--do_eval/--do_predict`, the flags choose: a `--train-file` trains (then evaluates `--val-file`
and `--test-file` when given); otherwise a `--test-file` or `--val-file` is evaluated.

Rerunning a command resumes its training from the newest complete checkpoint in the output folder. SIGTERM saves a
checkpoint after the step under way and exits with status 143; checkpoints are written atomically. Launch with
`torchrun` or `accelerate launch` for several processes. See docs/distributed_and_reliability.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import jiwer
import numpy as np
import torch
import transformers
from mmavsr_processing import (
    CLEAN_SNR,
    AddNoise,
    MMAVSRFeatureExtractor,
    MMAVSRProcessor,
    MMAVSRTokenizer,
    MMAVSRVideoProcessor,
    TimeMask,
    make_babble,
)
from mmavsr_processing.collation import (
    SKIPPED_CLIPS,
    ClipReader,
    MaxFramesBatchSampler,
    MMAVSRDataCollator,
)
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)
from transformers.trainer import (
    OPTIMIZER_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
)
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    load_sharded_checkpoint,
    rotate_checkpoints,
)
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
from modeling_mmavsr.configuration_mmavsr import AUTO_AVSR_VOCAB_SIZE, LEGACY_MODALITIES
from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer
from modeling_mmavsr.convert_auto_avsr_checkpoint import (
    convert_auto_avsr_state_dict,
    load_auto_avsr_checkpoint,
)

logger = logging.getLogger(__name__)

HUB_CONFIGS_DIR = Path(__file__).resolve().parent / "hub_configs"
INDEX_COLUMN = "utterance_index"
SNR_NAMES = {CLEAN_SNR: "clean"}


@dataclass
class ModelArguments:
    """Which model to train or evaluate: a saved model, a preset, or encoders/decoder named as in the seed's flags."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved model folder (save_pretrained, e.g. EXP/model_avg_10) or an auto_avsr .pth checkpoint.",
            "aliases": ["--pretrained-model-path", "--pretrained_model_path"],
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "A preset name from hub_configs/ (e.g. demo-vsr-resnet), a config JSON or a config folder."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "A saved tokenizer/processor folder; default: auto_avsr's unigram5000."
        },
    )
    train_vocabulary_size: int | None = field(
        default=None,
        metadata={
            "help": "Train a SentencePiece unigram vocabulary of about this size on the training transcripts "
            "(saved with the model) instead of using auto_avsr's unigram5000."
        },
    )
    train_vocabulary_type: str = field(
        default="unigram",
        metadata={
            "help": "SentencePiece model of --train_vocabulary_size.",
            "choices": ["unigram", "bpe", "word", "char"],
        },
    )
    modality: str | None = field(
        default=None,
        metadata={
            "help": "auto_avsr's input modality.",
            "choices": ["video", "audio", "audiovisual"],
        },
    )
    vision_encoder: str | None = field(
        default=None, metadata={"help": "resnet, vit, vivit or clip-vit."}
    )
    audio_encoder: str | None = field(
        default=None, metadata={"help": "resnet1d, whisper or wavlm."}
    )
    decoder: str | None = field(
        default=None, metadata={"help": "transformer, llm or whisper-decoder."}
    )
    fusion_type: str | None = field(
        default=None, metadata={"help": "concat, add or gated."}
    )
    vision_model_name: str | None = field(
        default=None, metadata={"help": "Pretrained vision encoder (id/folder)."}
    )
    audio_model_name: str | None = field(
        default=None, metadata={"help": "Pretrained audio encoder (id/folder)."}
    )
    decoder_model_name: str | None = field(
        default=None, metadata={"help": "Pretrained decoder (id/folder)."}
    )
    ctc_weight: float | None = field(
        default=None, metadata={"help": "Weight of the CTC loss in training."}
    )
    unfreeze_vision: bool = field(
        default=False,
        metadata={"help": "Train a pretrained vision encoder (frozen by default)."},
    )
    unfreeze_audio: bool = field(
        default=False,
        metadata={"help": "Train a pretrained audio encoder (frozen by default)."},
    )
    use_qlora: bool = field(
        default=False,
        metadata={
            "help": "4-bit NF4 LLM decoder with LoRA (needs --decoder llm; without CUDA: LoRA, no quantization)."
        },
    )
    qlora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    qlora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    transfer_frontend: bool = field(
        default=False,
        metadata={
            "help": "Load only the frontends from --pretrained-model-path (auto_avsr)."
        },
    )
    transfer_encoder: bool = field(
        default=False,
        metadata={
            "help": "Load only the encoder from --pretrained-model-path (auto_avsr)."
        },
    )
    init_from_models: list[str] | None = field(
        default=None,
        metadata={
            "help": "Saved models (folders) to start a new model from: each weight takes the value of the first "
            "of them holding a tensor of its name and shape (e.g. an audio-visual model from an audio-only and a "
            "video-only one: their frontends, and the first one's Conformer and decoder; the fusion starts new). "
            "Output layers are taken only from a model with the same vocabulary."
        },
    )


@dataclass
class DataTrainingArguments:
    """Where the data is (auto_avsr's preprocessed layout) and how it is batched, augmented and decoded."""

    root_dir: str | None = field(
        default=None, metadata={"help": "Root of the preprocessed dataset."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Training label CSV (in ROOT/labels/ or a path)."},
    )
    val_file: str | None = field(
        default=None, metadata={"help": "Validation label CSV."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Test label CSV."})
    max_frames: int | None = field(
        default=None,
        metadata={
            "help": "Cap on the summed video frames of a training batch (replaces the batch size)."
        },
    )
    train_num_buckets: int = field(
        default=400, metadata={"help": "Length buckets of the --max-frames sampler."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training clips."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation clips."}
    )
    time_masking: bool = field(
        default=True, metadata={"help": "auto_avsr's adaptive time masks in training."}
    )
    train_snr: list[float] | None = field(
        default=None,
        metadata={
            "help": "Add babble/--noise-file noise in training at an SNR drawn from these (999999 = clean)."
        },
    )
    noise_file: str | None = field(
        default=None,
        metadata={
            "help": "Noise wav; default: babble mixed from training (or test) utterances."
        },
    )
    decode_snr_target: list[float] = field(
        default_factory=lambda: [CLEAN_SNR],
        metadata={
            "help": "SNR(s) in dB of the noise added at evaluation; several give a WER table."
        },
    )
    decode_ctc_weight: float | None = field(
        default=None,
        metadata={
            "help": "CTC weight of joint decoding (default: the model's generation config)."
        },
    )
    output_json: str | None = field(
        default=None,
        metadata={
            "help": "Write every utterance's reference and hypothesis to this JSON file."
        },
    )
    cache_clips: bool = field(
        default=False,
        metadata={
            "help": "Keep the decoded training clips in memory after their first read: later epochs skip decoding "
            "(a 96x96 RGB video takes ~28 KB a frame; for small corpora trained for several epochs)."
        },
    )
    skip_bad_files: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count) unusable clips instead of stopping: bad label rows and missing files "
            "when loading (evaluation sets also have every file opened and its format checked), and training "
            "clips that fail to decode (the next clip takes the place; `train_skipped_clips` counts them)."
        },
    )


@dataclass
class AVSRTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with AVSR defaults, the seed's trainer flags, and checkpoint averaging."""

    predict_with_generate: bool = field(
        default=True, metadata={"help": "Decode with generate() for the WER."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the video/audio/text columns."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Loggers (tensorboard)."}
    )
    average_checkpoints: int | None = field(
        default=None,
        metadata={
            "help": "After training, average the last N checkpoints into OUTPUT_DIR/model_avg_N (auto_avsr)."
        },
    )
    # auto_avsr's trainer flags, mapped onto the fields above in __post_init__
    exp_dir: str | None = field(
        default=None, metadata={"help": "auto_avsr: output_dir is EXP_DIR/EXP_NAME."}
    )
    exp_name: str | None = field(
        default=None, metadata={"help": "auto_avsr: experiment name."}
    )
    max_epochs: float | None = field(
        default=None, metadata={"help": "auto_avsr: = --num_train_epochs."}
    )
    lr: float | None = field(
        default=None, metadata={"help": "auto_avsr: = --learning_rate."}
    )
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "auto_avsr: warmup as a share of epochs."}
    )
    ckpt_path: str | None = field(
        default=None, metadata={"help": "auto_avsr: = --resume_from_checkpoint."}
    )
    gpus: int | None = field(
        default=None,
        metadata={
            "help": "auto_avsr: processes per machine; checked against the launcher's."
        },
    )
    num_nodes: int | None = field(
        default=None,
        metadata={
            "help": "auto_avsr: machines; checked against the launcher's world size."
        },
    )

    def __post_init__(self):
        if self.exp_dir is not None or self.exp_name is not None:
            exp_dir = os.path.join(self.exp_dir or "./exp", self.exp_name or "")
            if self.output_dir is not None and os.path.normpath(
                self.output_dir
            ) != os.path.normpath(exp_dir):
                raise ValueError(
                    f"--output_dir {self.output_dir} and --exp-dir/--exp-name ({exp_dir}) disagree; give one of them."
                )
            self.output_dir = exp_dir
        if self.max_epochs is not None:
            self.num_train_epochs = self.max_epochs
        if self.lr is not None:
            self.learning_rate = self.lr
        if self.warmup_epochs is not None:
            epochs = self.num_train_epochs
            self.warmup_steps = (
                min(self.warmup_epochs / epochs, 0.999) if epochs > 0 else 0.0
            )
        if self.ckpt_path is not None:
            self.resume_from_checkpoint = self.ckpt_path
        if self.average_checkpoints is not None:
            if self.average_checkpoints < 1:
                raise ValueError(
                    f"--average_checkpoints must be >= 1, got {self.average_checkpoints}."
                )
            if (
                self.save_total_limit is not None
                and self.save_total_limit < self.average_checkpoints
            ):
                raise ValueError(
                    f"--save_total_limit {self.save_total_limit} keeps fewer checkpoints than "
                    f"--average_checkpoints {self.average_checkpoints} averages."
                )
        if (
            int(os.environ.get("WORLD_SIZE", "1")) > 1
            and not self.use_cpu
            and not torch.accelerator.is_available()
        ):
            # launched by torchrun/accelerate on machines without GPUs: Accelerate starts DDP over gloo only when told
            # to use the CPU; without it every process would train alone on all the data
            self.use_cpu = True
        super().__post_init__()


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def _translate_seed_flags(argv: list[str]) -> list[str]:
    """auto_avsr's bare `--debug` (a logging switch) becomes `--log_level debug` (Trainer's `--debug` takes a value)."""
    translated = []
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--debug" and (following is None or following.startswith("-")):
            translated += ["--log_level", "debug"]
        else:
            translated.append(arg)
    return translated


def parse_args(argv: list[str] | None = None):
    """Command line (seed flags included) or a single JSON/YAML file -> the three argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, AVSRTrainingArguments)
    )
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"Argument file {path} does not exist.")
        if path.suffix == ".json":
            model_args, data_args, training_args = parser.parse_json_file(path)
        else:
            model_args, data_args, training_args = parser.parse_yaml_file(path)
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(
            args=_translate_seed_flags(argv), look_for_args_file=False
        )
    _choose_stages(data_args, training_args)
    return model_args, data_args, training_args


def _choose_stages(
    data_args: DataTrainingArguments, training_args: AVSRTrainingArguments
) -> None:
    """Without --do_train/--do_eval/--do_predict the files decide, as with auto_avsr's train.py and eval.py."""
    if training_args.do_train or training_args.do_eval or training_args.do_predict:
        return
    if data_args.train_file:
        training_args.do_train = True
        training_args.do_eval = data_args.val_file is not None
        training_args.do_predict = data_args.test_file is not None
    elif data_args.test_file or data_args.val_file:
        training_args.do_eval = True
    else:
        raise ValueError(
            "Nothing to do: give --train-file to train, or --test-file/--val-file to evaluate "
            "(or --do_train/--do_eval/--do_predict)."
        )


def check_world_size(training_args: AVSRTrainingArguments) -> None:
    """auto_avsr's --gpus/--num-nodes against the processes the launcher started: a mismatch warns (the launcher
    wins: torchrun/accelerate set the world size, these flags cannot change it)."""
    world_size = training_args.world_size
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = max(world_size // max(local_size, 1), 1)
    wanted_local = training_args.gpus if training_args.gpus is not None else local_size
    wanted_nodes = (
        training_args.num_nodes if training_args.num_nodes is not None else nodes
    )
    if (wanted_local, wanted_nodes) != (local_size, nodes):
        logger.warning(
            f"--gpus {training_args.gpus} --num-nodes {training_args.num_nodes} ask for {wanted_local} process(es) "
            f"on {wanted_nodes} machine(s), but this run was launched with {local_size} process(es) on {nodes} "
            f"machine(s); continuing with the launched {world_size}. To get what the flags ask for, launch with "
            f"`torchrun --nnodes {wanted_nodes} --nproc_per_node {wanted_local} run_speech_recognition_avsr.py ...`."
        )


# ---------------------------------------------------------------------------------------------------------------
# Model


def resolve_preset(name: str) -> Path:
    """A preset name (hub_configs/NAME.json), a JSON file or a folder with config.json."""
    for candidate in (
        Path(name),
        HUB_CONFIGS_DIR / name,
        HUB_CONFIGS_DIR / f"{name}.json",
    ):
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate / "config.json"
    presets = sorted(p.stem for p in HUB_CONFIGS_DIR.glob("*.json"))
    raise FileNotFoundError(
        f"--config_name {name!r}: no such preset, JSON file or config folder (presets: {presets})."
    )


def _config_overrides(model_args: ModelArguments, base: dict) -> dict:
    """Config fields set by the flags; `--modality` decides which encoders exist, the encoder flags their type."""
    overrides = {}
    vision, audio = base.get("vision_encoder"), base.get("audio_encoder")
    if model_args.modality is not None:
        wanted_vision, wanted_audio = LEGACY_MODALITIES[model_args.modality]
        vision = (vision or wanted_vision) if wanted_vision else None
        audio = (audio or wanted_audio) if wanted_audio else None
        for flag, value, allowed in (
            ("--vision-encoder", model_args.vision_encoder, wanted_vision),
            ("--audio-encoder", model_args.audio_encoder, wanted_audio),
        ):
            if value is not None and allowed is None:
                raise ValueError(
                    f"--modality {model_args.modality} has no use for {flag} {value}."
                )
    if model_args.vision_encoder is not None:
        vision = model_args.vision_encoder
    if model_args.audio_encoder is not None:
        audio = model_args.audio_encoder
    if (
        model_args.modality is not None
        or model_args.vision_encoder
        or model_args.audio_encoder
    ):
        overrides.update(vision_encoder=vision, audio_encoder=audio)
    if model_args.decoder is not None:  # --decoder sets the config's `decoder_type`
        overrides["decoder_type"] = model_args.decoder
    for name in (
        "fusion_type",
        "vision_model_name",
        "audio_model_name",
        "decoder_model_name",
        "ctc_weight",
    ):
        value = getattr(model_args, name)
        if value is not None:
            overrides[name] = value
    # pretrained encoders are frozen unless --unfreeze-*; encoders trained from scratch always train
    if model_args.unfreeze_vision:
        overrides["freeze_vision_encoder"] = False
    if model_args.unfreeze_audio:
        overrides["freeze_audio_encoder"] = False
    if model_args.use_qlora:
        overrides.update(
            use_qlora=True,
            qlora_r=model_args.qlora_r,
            qlora_alpha=model_args.qlora_alpha,
        )
    return overrides


def load_pretrained(
    path: str, config_overrides: dict
) -> MMAVSRForConditionalGeneration:
    """A save_pretrained folder, or an auto_avsr .pth checkpoint converted on the fly."""
    source = Path(path)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise FileNotFoundError(
                f"--pretrained-model-path {path}: folder has no config.json (not a saved model)."
            )
        try:  # model.safetensors, or pytorch_model.bin read with torch.load(weights_only=True)
            return MMAVSRForConditionalGeneration.from_pretrained(
                source, **config_overrides
            )
        except pickle.UnpicklingError as error:
            pickled = (
                ", ".join(p.name for p in sorted(source.glob("*.bin"))) or "its weights"
            )
            needs = re.search(r"GLOBAL (\S+)", str(error))
            raise UnsafeCheckpointError(
                f"--pretrained-model-path {path}: refused to load {pickled}: its pickle needs "
                f"{needs.group(1) if needs else 'Python objects beyond tensors'}, which "
                "`torch.load(weights_only=True)` does not allow (loading it could run arbitrary code). Models saved "
                "with save_pretrained hold model.safetensors; use one of those."
            ) from None
    if source.is_file() and source.suffix in (".pth", ".pt", ".ckpt"):
        # read with torch.load(weights_only=True): a pickle that needs more than tensors is refused
        config, state_dict = convert_auto_avsr_state_dict(
            load_auto_avsr_checkpoint(source)
        )
        for name, value in config_overrides.items():
            setattr(config, name, value)
        model = MMAVSRForConditionalGeneration(config)
        model.load_state_dict(state_dict, strict=True)
        return model
    raise FileNotFoundError(
        f"--pretrained-model-path {path}: no such model folder or .pth file."
    )


def read_preset(model_args: ModelArguments) -> tuple[dict, dict]:
    """The preset's config fields and its processor settings (the optional `processor` key of a preset JSON:
    `{"video_processor": {...}, "feature_extractor": {...}}` keyword arguments)."""
    if not model_args.config_name:
        return {}, {}
    base = json.loads(resolve_preset(model_args.config_name).read_text())
    for key in (
        "architectures",
        "auto_map",
        "transformers_version",
        "model_type",
        "_name_or_path",
        "dtype",
    ):
        base.pop(key, None)
    processor_kwargs = base.pop("processor", {})
    return base, processor_kwargs


def build_model(
    model_args: ModelArguments, tokenizer: MMAVSRTokenizer | None = None
) -> MMAVSRForConditionalGeneration:
    """The model to train or evaluate, from a saved model, a preset + flags, or the flags alone; a new `tokenizer`
    sets the decoder's vocabulary size and special ids."""
    transfer = model_args.transfer_frontend or model_args.transfer_encoder
    if model_args.init_from_models and (model_args.model_name_or_path or transfer):
        raise ValueError(
            "--init_from_models starts a new model from saved ones; --pretrained-model-path (and "
            "--transfer-frontend/--transfer-encoder) load one: use one or the other."
        )
    if model_args.model_name_or_path and not transfer:
        overrides = {
            k: v
            for k, v in _config_overrides(model_args, {}).items()
            if k in ("ctc_weight",)
        }
        return load_pretrained(model_args.model_name_or_path, overrides)
    if transfer and not model_args.model_name_or_path:
        raise ValueError(
            "--transfer-frontend/--transfer-encoder need --pretrained-model-path."
        )

    base, _ = read_preset(model_args)
    overrides = _config_overrides(model_args, base)
    if not base and "vision_encoder" not in overrides:
        raise ValueError(
            "Which model? Give --pretrained-model-path, --config_name (a preset in hub_configs/), --modality, or "
            "--vision-encoder/--audio-encoder."
        )
    config_kwargs = {**base, **overrides}
    if tokenizer is not None and config_kwargs.get("decoder_type", "transformer") != "transformer":
        raise ValueError(
            f"--train_vocabulary_size trains a vocabulary for the Transformer decoder; --decoder "
            f"{config_kwargs['decoder_type']} writes with its own tokenizer (--decoder-model-name or --tokenizer_name)."
        )
    if tokenizer is not None:
        special = tokenizer.eos_token_id
        config_kwargs["text_config"] = {
            **config_kwargs.get("text_config", {}),
            "vocab_size": tokenizer.vocab_size,
            "pad_token_id": 0,
            "bos_token_id": special,
            "eos_token_id": special,
            "decoder_start_token_id": special,
        }
    if any(
        config_kwargs.get(f"{part}_model_name")
        for part in ("vision", "audio", "decoder")
    ):
        builder = getattr(
            MMAVSRForConditionalGeneration, "from_pretrained_components", None
        )
        if builder is None:
            raise NotImplementedError(
                "--vision/audio/decoder-model-name need from_pretrained_components (not here yet)."
            )
        model = builder(**config_kwargs)
    else:
        model = MMAVSRForConditionalGeneration(MMAVSRConfig(**config_kwargs))
    if transfer:
        _transfer_weights(model, model_args)
    return model


VOCABULARY_WEIGHTS = ("model.decoder.embed_tokens.", "lm_head.", "ctc_head.")


def init_from_models(
    model: MMAVSRForConditionalGeneration, processor: MMAVSRProcessor, paths: list[str]
) -> None:
    """--init_from_models: fill `model`'s weights from saved models, the first holding a tensor of the same name and
    shape giving it; token embeddings and output layers only from a model whose tokenizer has `processor`'s
    vocabulary. Logs which weights came from where and which start new."""
    target = model.state_dict()
    taken: dict[str, str] = {}
    for path in paths:
        source_model = load_pretrained(path, {})
        same_vocabulary = _same_vocabulary(path, processor)
        for name, tensor in source_model.state_dict().items():
            if name in taken or name not in target or target[name].shape != tensor.shape:
                continue
            if name.startswith(VOCABULARY_WEIGHTS) and not same_vocabulary:
                continue
            target[name] = tensor
            taken[name] = path
        if not same_vocabulary:
            logger.warning(
                f"--init_from_models {path}: another vocabulary; its embeddings and output layers are not used."
            )
    if not taken:
        raise ValueError(f"--init_from_models {' '.join(paths)}: no weight of this model has a match there.")
    model.load_state_dict(target)
    for path in paths:
        parts = sorted({".".join(n.split(".")[:3]) for n, p in taken.items() if p == path})
        logger.info(f"--init_from_models: from {path}: {', '.join(parts) or 'nothing'}")
    new = sorted({".".join(n.split(".")[:3]) for n in target if n not in taken})
    logger.info(f"--init_from_models: new: {', '.join(new) or 'nothing'}")


def _same_vocabulary(path: str, processor: MMAVSRProcessor) -> bool:
    folder = Path(path)
    if not (folder.is_dir() and (folder / "processor_config.json").is_file()):
        return False
    return MMAVSRProcessor.from_pretrained(folder).tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def _transfer_weights(
    model: MMAVSRForConditionalGeneration, model_args: ModelArguments
) -> None:
    """auto_avsr's --transfer-frontend / --transfer-encoder: copy those parts of a saved model."""
    source = load_pretrained(model_args.model_name_or_path, {})
    prefixes = (
        ("model.encoder.",)
        if model_args.transfer_encoder
        else ("model.encoder.vision_frontend.", "model.encoder.audio_frontend.")
    )
    state = {k: v for k, v in source.state_dict().items() if k.startswith(prefixes)}
    missing = [k for k in state if k not in model.state_dict()]
    if not state or missing:
        raise ValueError(
            f"--pretrained-model-path {model_args.model_name_or_path}: cannot transfer {prefixes} "
            f"({'nothing found' if not state else f'{len(missing)} keys absent from this model'})."
        )
    model.load_state_dict(state, strict=False)
    logger.info(
        f"Loaded {len(state)} tensors ({', '.join(prefixes)}) from {model_args.model_name_or_path}."
    )


def build_processor(
    model_args: ModelArguments,
    config: MMAVSRConfig,
    tokenizer: MMAVSRTokenizer | None = None,
) -> MMAVSRProcessor:
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if (
        tokenizer is None
        and source
        and Path(source).is_dir()
        and (Path(source) / "processor_config.json").is_file()
    ):
        processor = MMAVSRProcessor.from_pretrained(source)
    else:
        _, settings = read_preset(model_args)
        video_kwargs = {
            "vision_encoder": config.vision_encoder or "resnet",
            **settings.get("video_processor", {}),
        }
        if tokenizer is None:
            tokenizer = default_tokenizer(model_args, config)
        audio_kwargs = dict(settings.get("feature_extractor", {}))
        if config.audio_encoder == "whisper":  # Whisper's encoder reads log-mels of its own number of bins
            audio_kwargs.setdefault("feature_type", "log-mel")
            audio_kwargs.setdefault("num_mel_bins", config.audio_config.num_mel_bins)
        if config.vision_encoder == "timm":  # size, crop, mean and std from the backbone's timm data config
            video_processor = MMAVSRVideoProcessor.from_timm(config, **settings.get("video_processor", {}))
        else:
            video_processor = MMAVSRVideoProcessor(**video_kwargs)
        processor = MMAVSRProcessor(
            feature_extractor=MMAVSRFeatureExtractor(**audio_kwargs),
            video_processor=video_processor,
            tokenizer=tokenizer,
        )
    # a pretrained decoder's embedding table may have rows no token uses (Whisper's, Llama 3's are padded)
    tokens = processor.tokenizer.vocab_size if config.decoder_type == "transformer" else len(processor.tokenizer)
    if tokens > config.vocab_size or (config.decoder_type == "transformer" and tokens != config.vocab_size):
        raise ValueError(
            f"The tokenizer has {tokens} ids but the model's decoder has {config.vocab_size}; "
            "give the matching --tokenizer_name or set text_config.vocab_size."
        )
    return processor


def default_tokenizer(model_args: ModelArguments, config: MMAVSRConfig):
    """--tokenizer_name; else the pretrained LLM's or Whisper's own tokenizer (--decoder-model-name), set up to write
    the labels those decoders train on; else auto_avsr's unigram5000."""
    if model_args.tokenizer_name:
        if config.decoder_type == "transformer":
            return MMAVSRTokenizer.from_pretrained(model_args.tokenizer_name)
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    if config.decoder_type != "transformer":
        if not config.decoder_model_name:
            raise ValueError(
                f"--decoder {config.decoder_type} writes its labels with the decoder's own tokenizer: give "
                "--decoder-model-name (the LLM or Whisper checkpoint) or --tokenizer_name."
            )
        return load_decoder_tokenizer(config.decoder_type, config.decoder_model_name)
    return MMAVSRTokenizer.from_auto_avsr()


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


# ---------------------------------------------------------------------------------------------------------------
# Data


def resolve_label_file(root_dir: str, label_file: str, flag: str) -> Path:
    """auto_avsr keeps label CSVs in ROOT/labels/; a path relative to ROOT or absolute works too."""
    candidates = [
        Path(root_dir) / "labels" / label_file,
        Path(root_dir) / label_file,
        Path(label_file),
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{flag} {label_file}: not found (looked for {', '.join(str(c) for c in candidates)})."
    )


def load_split(
    data_args: DataTrainingArguments, label_file: str, flag: str, limit: int | None
) -> datasets.Dataset:
    from mmavsr_processing.lrs3 import load_auto_avsr_dataset

    if not data_args.root_dir:
        raise ValueError(
            f"{flag} needs --root-dir (the root of the preprocessed dataset)."
        )
    if not Path(data_args.root_dir).is_dir():
        raise FileNotFoundError(f"--root-dir {data_args.root_dir}: no such directory.")
    path = resolve_label_file(data_args.root_dir, label_file, flag)
    # an evaluation set is opened whole when skipping: a clip dropped mid-way would change the WER's utterances
    dataset = load_auto_avsr_dataset(
        data_args.root_dir,
        path,
        skip_bad_files=data_args.skip_bad_files,
        check_media=data_args.skip_bad_files and flag != "--train-file",
    )
    if len(dataset) == 0:
        raise ValueError(f"{flag} {path}: no usable clips.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def modalities_of(config: MMAVSRConfig) -> tuple[str, ...]:
    return tuple(
        name
        for name, used in (
            ("video", config.vision_encoder),
            ("audio", config.audio_encoder),
        )
        if used
    )


def read_files_directly(
    dataset: datasets.Dataset, modalities: tuple[str, ...]
) -> datasets.Dataset:
    """Drop the media column the model does not use and leave the other undecoded: the collator reads each file
    with soundfile / PyAV, several times faster than opening a torchcodec decoder per row."""
    dataset = dataset.remove_columns(
        [
            c
            for c in ("video", "audio")
            if c not in modalities and c in dataset.column_names
        ]
    )
    for column in modalities:
        feature = dataset.features[column]
        undecoded = (
            datasets.Audio(sampling_rate=feature.sampling_rate, decode=False)
            if isinstance(feature, datasets.Audio)
            else datasets.Video(decode=False)
        )
        dataset = dataset.cast_column(column, undecoded)
    return dataset


def make_noise(
    data_args: DataTrainingArguments, dataset: datasets.Dataset, seed: int
) -> np.ndarray | str:
    """--noise-file, or babble mixed from (up to 32 of) the dataset's utterances, as auto_avsr's babble_noise.wav."""
    if data_args.noise_file:
        if not Path(data_args.noise_file).is_file():
            raise FileNotFoundError(
                f"--noise-file {data_args.noise_file}: no such file."
            )
        return data_args.noise_file
    from mmavsr_processing.feature_extraction_mmavsr import to_waveform

    picks = np.random.default_rng(seed).permutation(len(dataset))[:32]
    utterances = []
    for i in picks:
        try:
            utterances.append(
                to_waveform(dataset[int(i)]["audio"], None, 16000, True, True)
            )
        except ValueError as error:
            if not data_args.skip_bad_files:
                raise
            logger.warning(f"Babble noise: skipping a clip: {error}")
    if not utterances:
        raise ValueError("Babble noise: none of the clips picked could be read.")
    return make_babble(utterances, n_speakers=4, length=16000 * 30, seed=seed)


class SeededCollator:
    """Training batches whose random crops and augmentations depend only on (seed, epoch, utterances), never on the
    global RNG: a resumed run draws exactly what an uninterrupted run draws, and dropout's RNG stays untouched."""

    def __init__(self, collator: MMAVSRDataCollator, seed: int):
        self.collator = collator
        self.seed = seed
        self.epoch = 0

    def _augmentations(self):
        for group in (
            self.collator.video_augmentation,
            self.collator.audio_augmentation,
        ):
            yield from group or []

    def __call__(self, rows):
        indices = [int(row[INDEX_COLUMN]) for row in rows]
        seed = int(
            np.random.SeedSequence([self.seed, self.epoch, *indices]).generate_state(1)[
                0
            ]
        )
        for offset, augmentation in enumerate(self._augmentations()):
            augmentation.generator = np.random.default_rng([seed, offset])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.collator(rows)


class EpochCallback(TrainerCallback):
    """Tells the seeded collator which epoch it is collating."""

    def __init__(self, collator: SeededCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch + 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: atomic saves, resuming from the newest complete one, SIGTERM, loading safety

# checkpoints are written under OUTPUT_DIR/INCOMPLETE_CHECKPOINTS_DIR and renamed into OUTPUT_DIR once complete
INCOMPLETE_CHECKPOINTS_DIR = ".incomplete_checkpoints"
# the marker transformers' `--enable_jit_checkpoint` leaves in a checkpoint folder whose save has not finished
INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"
# the exit status of a run stopped by SIGTERM after saving its checkpoint (the shell's 128 + signal number): a
# scheduler sees an unfinished run, and rerunning the same command resumes it
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM
# the pickle-based files the Trainer reads back when resuming (with `torch.load(weights_only=True)`)
RESUMED_PICKLE_FILES = (OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME, "rng_state*.pth")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file needs Python objects beyond tensors and plain containers to be unpickled."""


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` (a checkpoint-STEP) cannot be resumed from, or None when its save finished."""
    if (folder / INCOMPLETE_MARKER).exists():
        return f"its save never finished ({INCOMPLETE_MARKER} is still there)"
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME} (written last: the save never finished)"
    try:
        json.loads(state.read_text())
    except ValueError:
        return f"its {TRAINER_STATE_NAME} is cut short (the save never finished)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-STEP of `output_dir` whose save finished; newer half-written ones are skipped with a
    warning (saves killed before this script's saves became atomic, or written by other tools)."""
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning(
            f"Ignoring {folder}: {problem}. Resuming from an older checkpoint."
        )
    return None


def discard_incomplete_checkpoints(output_dir: str) -> None:
    """Delete the half-written checkpoints that saves killed mid-way left in OUTPUT_DIR/.incomplete_checkpoints."""
    staging = Path(output_dir) / INCOMPLETE_CHECKPOINTS_DIR
    for leftover in sorted(staging.glob("*")):
        logger.warning(
            f"Ignoring and deleting {leftover}: a checkpoint whose save was killed before it finished."
        )
        shutil.rmtree(leftover, ignore_errors=True)


def refuse_unsafe_pickles(folder: Path) -> None:
    """Every pickle-based file the Trainer reads when resuming from `folder` must hold only tensors, plain containers
    and the numpy RNG state: `torch.load(weights_only=True)` refuses anything else, and this names the file first.
    The check reads the pickle's opcodes without running them."""
    for pattern in RESUMED_PICKLE_FILES:
        for path in sorted(folder.glob(pattern)):
            try:
                # the numpy objects of the RNG state are allowed, as the Trainer allows them
                with safe_globals():
                    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(
                        str(path)
                    )
            except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:
                raise UnsafeCheckpointError(
                    f"{path}: refused to load: not a `torch.save` archive ({str(error).splitlines()[0]}). The Trainer "
                    "writes this file with `torch.save`; a file replaced by a bare pickle may run code when loaded."
                ) from None
            if unsafe:
                raise UnsafeCheckpointError(
                    f"{path}: refused to load: its pickle calls or builds {', '.join(sorted(unsafe))}, which "
                    "`torch.load(weights_only=True)` does not allow (loading it could run arbitrary code). The "
                    "Trainer's own checkpoints never need this; resume only from checkpoints you wrote."
                )


class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM (preemption, `scancel`, `kill`): finish the optimizer step under way, save checkpoint-STEP and stop
    training, every process at the same step. A second SIGTERM ends the process at once (the atomic saves keep the
    newest complete checkpoint loadable). The handler is in place between `install()` and `restore()`."""

    def __init__(self):
        self.received = False
        self.stopped_at_step: int | None = None
        self._previous_handler = None

    def _on_sigterm(self, signum, frame):
        if self.received:  # the second one: die as SIGTERM's default action does
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.received = True

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "Training outside the main thread: SIGTERM will not save a checkpoint."
            )
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _anyone_received(self, args) -> bool:
        """Whether any process got SIGTERM (processes may see it at different steps: they agree on one)."""
        if not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            return self.received
        flag = torch.tensor([float(self.received)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_received(args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
            logger.warning(
                f"SIGTERM: stopping after step {state.global_step}; saving {PREFIX_CHECKPOINT_DIR}-{state.global_step}."
            )


# ---------------------------------------------------------------------------------------------------------------
# Trainer


class AVSRSeq2SeqTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with auto_avsr's frame-capped training batches (`--max-frames`), atomic checkpoint saves and
    resuming that refuses pickled code."""

    def __init__(
        self, *args, max_frames: int | None = None, num_buckets: int = 400, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.max_frames = max_frames
        self.num_buckets = num_buckets
        self._staging_dir: str | None = None
        # the messages of the clips `ClipReader` skipped in training (each clip once, however many epochs)
        self.skipped_clips: set[str] = set()

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.skipped_clips.update(inputs.pop(SKIPPED_CLIPS, ()))  # not a model input
        return super().training_step(model, inputs, num_items_in_batch)

    def get_train_dataloader(self):
        if self.max_frames is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        sampler = MaxFramesBatchSampler(
            dataset["num_frames"],
            max_frames=self.max_frames,
            shuffle=True,
            seed=self.args.seed,
            num_buckets=self.num_buckets,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return self.accelerator.prepare(loader)

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write checkpoint-STEP under OUTPUT_DIR/.incomplete_checkpoints, then rename it into OUTPUT_DIR once every
        process has written its part: a kill during the save leaves the previous checkpoints as they were."""
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / INCOMPLETE_CHECKPOINTS_DIR
        staging, final = staging_root / name, run_dir / name
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.state.best_model_checkpoint == str(staging):
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
            if final.exists():
                # saved again at this step: swap the folders, then drop the old one
                replaced = staging_root / f"{name}.replaced"
                os.replace(final, replaced)
                os.replace(staging, final)
                shutil.rmtree(replaced)
            else:
                os.replace(staging, final)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        refuse_unsafe_pickles(Path(resume_from_checkpoint))
        # Trainer's own version reads config.json with the base PreTrainedConfig, which MMAVSRConfig's `decoder` field
        # (a choice string beside `text_config`) makes ambiguous; the weights are all that resuming needs here
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        folder = Path(resume_from_checkpoint)
        if (folder / SAFE_WEIGHTS_NAME).is_file():
            model.load_state_dict(
                load_file(str(folder / SAFE_WEIGHTS_NAME)), strict=True
            )
        elif (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
            load_sharded_checkpoint(model, str(folder), strict=True, prefer_safe=True)
        else:
            raise FileNotFoundError(f"{folder}: no {SAFE_WEIGHTS_NAME} to resume from.")
        logger.info(f"Loaded the model weights of {folder}.")

    def _pad_tensors_to_max_len(self, tensor, max_length):
        # generated ids are padded with the decoder's pad id (the processor has no pad_token_id of its own)
        padded = tensor.new_full(
            (tensor.shape[0], max_length), self.model.config.text_config.pad_token_id
        )
        padded[:, : tensor.shape[-1]] = tensor
        return padded


class WERMetric:
    """compute_metrics: corpus WER (jiwer) of the decoded hypotheses; keeps the texts of the last call."""

    def __init__(self, processor: MMAVSRProcessor):
        self.processor = processor
        self.references: list[str] = []
        self.hypotheses: list[str] = []

    def __call__(self, prediction):
        predictions = np.where(
            prediction.predictions == -100, 0, prediction.predictions
        )
        self.hypotheses = [
            text.strip() for text in self.processor.batch_decode(predictions)
        ]
        self.references = [
            text.strip() for text in self.processor.batch_decode(prediction.label_ids)
        ]
        return {"wer": 100.0 * corpus_wer(self.references, self.hypotheses)}


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over reference words; an empty reference counts its hypothesis' words as insertions."""
    kept = [(r, h) for r, h in zip(references, hypotheses) if r]
    insertions = sum(len(h.split()) for r, h in zip(references, hypotheses) if not r)
    words = sum(len(r.split()) for r, _ in kept)
    if words == 0:
        return float(insertions > 0)
    output = jiwer.process_words(
        [r for r, _ in kept], [h if h else "" for _, h in kept]
    )
    return (
        output.substitutions + output.deletions + output.insertions + insertions
    ) / words


def snr_label(snr: float) -> str:
    return SNR_NAMES.get(snr, f"snr{snr:g}")


def evaluate_at_snrs(
    trainer: AVSRSeq2SeqTrainer,
    dataset: datasets.Dataset,
    data_args: DataTrainingArguments,
    config: MMAVSRConfig,
    processor: MMAVSRProcessor,
    metric: WERMetric,
    prefix: str,
    noise,
    gen_kwargs: dict,
    ctc_tokenizer: MMAVSRTokenizer | None = None,
) -> tuple[dict, list[dict]]:
    """Decode `dataset` once per --decode-snr-target (`ctc_tokenizer`: see `separate_ctc_tokenizer`); returns the
    metrics and one table row per SNR."""
    metrics, rows, utterances = {}, [], []
    for snr in data_args.decode_snr_target:
        audio_augmentation = None
        if "audio" in modalities_of(config) and snr < CLEAN_SNR:
            audio_augmentation = AddNoise(snr, noise=noise, seed=trainer.args.seed)
        trainer.data_collator = MMAVSRDataCollator(
            processor,
            training=False,
            audio_augmentation=audio_augmentation,
            modalities=modalities_of(config),
            ctc_tokenizer=ctc_tokenizer,
        )
        key = (
            prefix
            if len(data_args.decode_snr_target) == 1
            else f"{prefix}_{snr_label(snr)}"
        )
        result = trainer.evaluate(dataset, metric_key_prefix=key, **gen_kwargs)
        metrics.update(result)
        rows.append(
            {
                "snr": snr,
                "condition": snr_label(snr),
                "wer": result[f"{key}_wer"],
                "utterances": len(dataset),
            }
        )
        utterances.append(
            {
                "snr": snr,
                "wer": result[f"{key}_wer"],
                "utterances": [
                    {"index": i, "reference": r, "hypothesis": h}
                    for i, (r, h) in enumerate(
                        zip(metric.references, metric.hypotheses)
                    )
                ],
            }
        )
    if len(rows) > 1:
        metrics[f"{prefix}_wer"] = rows[0]["wer"]
    return metrics, rows, utterances


def format_wer_table(rows: list[dict], title: str) -> str:
    lines = [
        f"{title}",
        "| condition | SNR (dB) | WER (%) | utterances |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        snr = "-" if row["snr"] >= CLEAN_SNR else f"{row['snr']:g}"
        lines.append(
            f"| {row['condition']} | {snr} | {row['wer']:.2f} | {row['utterances']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint averaging


def checkpoint_dirs(output_dir: str) -> list[Path]:
    """The Trainer's checkpoint-STEP folders, oldest first."""
    found = [
        p
        for p in Path(output_dir).glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the float tensors of several model.safetensors (BatchNorm running stats included); integer tensors
    (BatchNorm's num_batches_tracked) take their maximum."""
    if not paths:
        raise ValueError("No checkpoints to average.")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing (checkpoint averaging reads model.safetensors)."
            )
        state = load_file(str(path))
        if total and state.keys() != total.keys():
            raise ValueError(
                f"{path}: its tensors differ from those of {paths[0]}; cannot average."
            )
        for name, tensor in state.items():
            if tensor.is_floating_point():
                total[name] = (
                    total[name] + tensor.double() if name in total else tensor.double()
                )
            else:
                total[name] = (
                    torch.maximum(total[name], tensor)
                    if name in total
                    else tensor.clone()
                )
    reference = load_file(str(paths[0]))
    return {
        name: (tensor / len(paths)).to(reference[name].dtype)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in total.items()
    }


def average_last_checkpoints(
    model: MMAVSRForConditionalGeneration,
    processor: MMAVSRProcessor,
    output_dir: str,
    count: int,
) -> Path:
    """auto_avsr's model_avg_N: average the last `count` checkpoints into OUTPUT_DIR/model_avg_N and load it."""
    checkpoints = checkpoint_dirs(output_dir)[-count:]
    if not checkpoints:
        raise FileNotFoundError(
            f"{output_dir}: no checkpoint-* folders to average (is --save_strategy 'no'?)."
        )
    if len(checkpoints) < count:
        logger.warning(
            f"Averaging {len(checkpoints)} checkpoints: fewer than the {count} asked for exist."
        )
    state = average_state_dicts([c / "model.safetensors" for c in checkpoints])
    model.load_state_dict(state, strict=True)
    target = Path(output_dir) / f"model_avg_{count}"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    logger.info(f"Averaged {', '.join(c.name for c in checkpoints)} into {target}.")
    return target


# ---------------------------------------------------------------------------------------------------------------
# Main


def resume_checkpoint(training_args: AVSRTrainingArguments) -> str | None:
    """--resume_from_checkpoint/--ckpt-path when given (it must be a complete checkpoint), else the newest complete
    checkpoint-STEP already in --output_dir, else None (a fresh run)."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        if not os.path.isdir(training_args.output_dir):
            return None
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info(
                f"Resuming from {checkpoint} (found in --output_dir; use another folder to start afresh)."
            )
        return checkpoint
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(
            f"--resume_from_checkpoint/--ckpt-path {checkpoint}: no such checkpoint folder."
        )
    problem = checkpoint_problem(Path(checkpoint))
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint/--ckpt-path {checkpoint}: cannot resume from it: {problem}."
        )
    return checkpoint


def setup_logging(training_args: AVSRTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    if training_args.log_level == "passive":
        level = logging.INFO if training_args.should_log else logging.WARNING
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def main(
    argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict:
    """Run what the arguments ask; returns every metric computed. `callbacks` go to the Trainer."""
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    check_world_size(training_args)
    if training_args.enable_jit_checkpoint:
        logger.warning(
            "--enable_jit_checkpoint is not needed: this script saves a checkpoint on SIGTERM itself (after the "
            "step under way, on every process at the same step); using that instead."
        )
        training_args.enable_jit_checkpoint = False
    set_seed(training_args.seed)

    train_dataset = eval_dataset = test_dataset = None
    if training_args.do_train:
        if not data_args.train_file:
            raise ValueError("--do_train needs --train-file.")
        train_dataset = load_split(
            data_args, data_args.train_file, "--train-file", data_args.max_train_samples
        )
    if training_args.do_eval:
        eval_file = data_args.val_file or data_args.test_file
        if not eval_file:
            raise ValueError("--do_eval needs --val-file (or --test-file).")
        flag = "--val-file" if data_args.val_file else "--test-file"
        eval_dataset = load_split(
            data_args, eval_file, flag, data_args.max_eval_samples
        )
    if training_args.do_predict:
        if not data_args.test_file:
            raise ValueError("--do_predict needs --test-file.")
        test_dataset = load_split(
            data_args, data_args.test_file, "--test-file", data_args.max_eval_samples
        )

    tokenizer = None
    if model_args.train_vocabulary_size:
        if train_dataset is None:
            raise ValueError(
                "--train_vocabulary_size needs training transcripts (--train-file)."
            )
        tokenizer = MMAVSRTokenizer.train_vocabulary(
            train_dataset["text"],
            Path(training_args.output_dir) / "vocabulary",
            vocab_size=model_args.train_vocabulary_size,
            model_type=model_args.train_vocabulary_type,
            hard_vocab_limit=False,
        )
    model = build_model(model_args, tokenizer)
    config = model.config
    processor = build_processor(model_args, config, tokenizer)
    if model_args.init_from_models:
        init_from_models(model, processor, model_args.init_from_models)
    modalities = modalities_of(config)
    ctc_tokenizer = separate_ctc_tokenizer(config)
    train_dataset, eval_dataset, test_dataset = (
        read_files_directly(dataset, modalities) if dataset is not None else None
        for dataset in (train_dataset, eval_dataset, test_dataset)
    )
    logger.info(
        f"Model: {config.modality} ({', '.join(modalities)}), {model.num_parameters():,} parameters."
    )

    noise = None
    needs_noise = bool(data_args.train_snr and training_args.do_train) or any(
        snr < CLEAN_SNR for snr in data_args.decode_snr_target
    )
    if needs_noise and "audio" in modalities:
        noise = make_noise(
            data_args, train_dataset or eval_dataset or test_dataset, training_args.seed
        )

    train_collator = None
    if train_dataset is not None:
        video_augmentation = (
            [TimeMask.for_video()]
            if data_args.time_masking and "video" in modalities
            else []
        )
        audio_augmentation = (
            [TimeMask.for_audio()]
            if data_args.time_masking and "audio" in modalities
            else []
        )
        if data_args.train_snr and "audio" in modalities:
            audio_augmentation.append(AddNoise(data_args.train_snr, noise=noise))
        train_collator = SeededCollator(
            MMAVSRDataCollator(
                processor,
                training=True,
                video_augmentation=video_augmentation or None,
                audio_augmentation=audio_augmentation or None,
                modalities=modalities,
                ctc_tokenizer=ctc_tokenizer,
            ),
            seed=training_args.seed,
        )
        # media are read in the DataLoader: an unusable clip raises naming its file, or with --skip-bad-files is
        # skipped and counted, the next clip taking its place
        train_dataset = ClipReader(
            train_dataset,
            processor,
            modalities,
            skip_bad_files=data_args.skip_bad_files,
            cache=data_args.cache_clips,
        )

    metric = WERMetric(processor)
    trainer = AVSRSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=train_collator
        or MMAVSRDataCollator(processor, modalities=modalities, ctc_tokenizer=ctc_tokenizer),
        processing_class=processor,
        compute_metrics=metric,
        callbacks=[EpochCallback(train_collator)] if train_collator else None,
        max_frames=data_args.max_frames,
        num_buckets=data_args.train_num_buckets,
    )
    for callback in callbacks or []:
        trainer.add_callback(callback)

    results = {}
    if training_args.do_train:
        checkpoint = resume_checkpoint(training_args)
        if training_args.should_save:
            discard_incomplete_checkpoints(training_args.output_dir)
        sigterm = SigtermCheckpointCallback()
        trainer.add_callback(sigterm)
        sigterm.install()
        try:
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
        finally:  # SIGTERM after training (final save, evaluation) ends the process as usual
            sigterm.restore()
        if sigterm.stopped_at_step is not None:
            logger.warning(
                f"Stopped by SIGTERM after step {sigterm.stopped_at_step}: "
                f"{Path(training_args.output_dir) / f'{PREFIX_CHECKPOINT_DIR}-{sigterm.stopped_at_step}'} is saved. "
                "Run the same command again to resume from it."
            )
            sys.exit(INTERRUPTED_EXIT_CODE)
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        metrics["train_skipped_clips"] = len(trainer.skipped_clips)
        if trainer.skipped_clips:
            logger.warning(
                f"Skipped {len(trainer.skipped_clips)} unusable training clip(s), e.g. "
                f"{sorted(trainer.skipped_clips)[0]}"
            )
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
        if training_args.average_checkpoints:
            average_last_checkpoints(
                model,
                processor,
                training_args.output_dir,
                training_args.average_checkpoints,
            )

    gen_kwargs = {}
    if data_args.decode_ctc_weight is not None:
        gen_kwargs["ctc_weight"] = data_args.decode_ctc_weight
    decoded = []
    for stage, dataset, prefix in (
        ("eval", eval_dataset, "eval"),
        ("predict", test_dataset, "test"),
    ):
        if dataset is None:
            continue
        if (
            noise is None
            and "audio" in modalities
            and any(s < CLEAN_SNR for s in data_args.decode_snr_target)
        ):
            noise = make_noise(data_args, dataset, training_args.seed)
        metrics, rows, utterances = evaluate_at_snrs(
            trainer,
            dataset,
            data_args,
            config,
            processor,
            metric,
            prefix,
            noise,
            gen_kwargs,
            ctc_tokenizer,
        )
        metrics[f"{prefix}_samples"] = len(dataset)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        results.update(metrics)
        table = format_wer_table(
            rows, f"WER of {config.modality} on {len(dataset)} utterances ({prefix})"
        )
        if trainer.is_world_process_zero():
            print(table)
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / f"{prefix}_wer_table.json").write_text(
                json.dumps(rows, indent=2)
            )
        decoded.append({"split": prefix, "conditions": utterances})

    if data_args.output_json and decoded and trainer.is_world_process_zero():
        Path(data_args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(data_args.output_json).write_text(json.dumps(decoded, indent=2))
        logger.info(f"Wrote every utterance's hypothesis to {data_args.output_json}.")
    return results


def end_distributed():
    """After a launched run: every process waits for the others (rank 0 may still be saving), then the process group
    is torn down, so that no process exits with the group's threads alive (an abort, "terminate called without an
    active exception", that fails the launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    end_distributed()
