"""The training script's arguments: `ModelArguments`, `DataTrainingArguments` and `AVSRTrainingArguments` (a
`Seq2SeqTrainingArguments`), parsed from the command line (auto_avsr's flags included) or one JSON/YAML file, with a
preset's training recipe as their defaults ([`parse_args`]). The command-line wording of the project lives here and in
the other modules of `mmavsr_training`; the model (`modeling_mmavsr`) and the data side (`mmavsr_processing`) never
speak in flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from mmavsr_processing import CLEAN_SNR

from .builder import UsageError
from .presets import read_preset


@dataclass
class ModelArguments:
    """Which model to train or evaluate: a saved model, a preset, or encoders/decoder named as in the seed's flags."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved model folder (save_pretrained, e.g. EXP/model_avg_10) or an auto_avsr .pth checkpoint; "
            "it keeps its architecture (flags that disagree with it are refused).",
            "aliases": ["--pretrained-model-path", "--pretrained_model_path"],
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A preset name from hub_configs/ (e.g. demo-vsr-resnet) or a config JSON."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A saved tokenizer/processor folder; default: auto_avsr's unigram5000."}
    )
    train_vocabulary_size: int | None = field(
        default=None,
        metadata={
            "help": "Train a SentencePiece vocabulary of about this size on the training transcripts (saved with "
            "the model) instead of using auto_avsr's unigram5000."
        },
    )
    train_vocabulary_type: str = field(
        default="unigram", metadata={"help": "SentencePiece model type.", "choices": ["unigram", "bpe", "word", "char"]}
    )
    modality: str | None = field(
        default=None, metadata={"help": "auto_avsr's input modality.", "choices": ["video", "audio", "audiovisual"]}
    )
    vision_encoder: str | None = field(default=None, metadata={"help": "resnet, vit, vivit, clip-vit or timm."})
    audio_encoder: str | None = field(default=None, metadata={"help": "resnet1d, whisper or wavlm."})
    decoder: str | None = field(default=None, metadata={"help": "transformer, llm or whisper-decoder (decoder_type)."})
    fusion_type: str | None = field(default=None, metadata={"help": "concat, add or gated."})
    vision_model_name: str | None = field(default=None, metadata={"help": "Pretrained vision encoder (id/folder)."})
    audio_model_name: str | None = field(default=None, metadata={"help": "Pretrained audio encoder (id/folder)."})
    decoder_model_name: str | None = field(default=None, metadata={"help": "Pretrained decoder (id/folder)."})
    ctc_weight: float | None = field(default=None, metadata={"help": "Weight of the CTC loss in training."})
    unfreeze_vision: bool = field(default=False, metadata={"help": "Train a pretrained (frozen) vision encoder."})
    unfreeze_audio: bool = field(default=False, metadata={"help": "Train a pretrained (frozen) audio encoder."})
    use_qlora: bool = field(
        default=False,
        metadata={"help": "LLM decoder in 4-bit NF4 with LoRA adapters (needs --decoder llm and bitsandbytes)."},
    )
    use_lora: bool = field(
        default=False,
        metadata={"help": "LoRA adapters over the LLM decoder's full-precision weights (needs --decoder llm)."},
    )
    qlora_r: int | None = field(default=None, metadata={"help": "LoRA rank (--use-qlora/--use-lora; default 16)."})
    qlora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (--use-qlora/--use-lora; default 32)."})
    transfer_frontend: bool = field(
        default=False, metadata={"help": "Load only the frontends from --pretrained-model-path (auto_avsr)."}
    )
    transfer_encoder: bool = field(
        default=False,
        metadata={"help": "Load only the encoder (frontends included) from --pretrained-model-path (auto_avsr)."},
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
    """Where the data is (auto_avsr's preprocessed layout, or a `datasets` dataset) and how it is batched, augmented
    and decoded."""

    root_dir: str | None = field(default=None, metadata={"help": "Root of the preprocessed dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training label CSV (in ROOT/labels/ or a path)."})
    val_file: str | None = field(default=None, metadata={"help": "Validation label CSV."})
    test_file: str | None = field(default=None, metadata={"help": "Test label CSV."})
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets` dataset instead of label files: a Hub id, a save_to_disk folder, a "
            "parquet/CSV/JSON file or a videofolder/audiofolder folder with a metadata file (docs/datasets.md)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    train_split_name: str = field(default="train", metadata={"help": "--dataset_name's training split."})
    eval_split_name: str = field(
        default="validation", metadata={"help": "--dataset_name's split for --do_eval (and evaluation in training)."}
    )
    test_split_name: str = field(default="test", metadata={"help": "--dataset_name's split for --do_predict."})
    video_column_name: str = field(default="video", metadata={"help": "--dataset_name's video column."})
    audio_column_name: str = field(default="audio", metadata={"help": "--dataset_name's audio column."})
    text_column_name: str = field(default="text", metadata={"help": "--dataset_name's transcript column."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream --dataset_name's training split (nothing downloaded or converted up front; needs "
            "--max_steps): batches of --max-frames frames (or --per_device_train_batch_size clips), each "
            "process reading its own shards, resumed from a checkpoint where it stopped."
        },
    )
    max_frames: int | None = field(
        default=None, metadata={"help": "Cap on the summed video frames of a training batch (replaces the batch size)."}
    )
    train_num_buckets: int = field(default=400, metadata={"help": "Length buckets of the --max-frames sampler."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation clips."})
    time_masking: bool = field(default=True, metadata={"help": "auto_avsr's adaptive time masks in training."})
    boundary_jitter_s: float = field(
        default=0.0,
        metadata={
            "help": "Move each training clip's start and end by up to this many seconds (trim, or add silence and "
            "still frames), the same in audio and video, so that the model transcribes segments cut from long "
            "recordings (0: off, auto_avsr's recipe; the demo presets use 0.2)."
        },
    )
    train_snr: list[float] | None = field(
        default=None,
        metadata={
            "help": "Add babble/--noise-file noise to the audio in training at an SNR drawn from these "
            "(999999 = clean); refused for a model without audio."
        },
    )
    noise_file: str | None = field(
        default=None, metadata={"help": "Noise wav; default: babble mixed from training (or test) utterances."}
    )
    decode_snr_target: list[float] = field(
        default_factory=lambda: [CLEAN_SNR],
        metadata={"help": "SNR(s) in dB of the noise added to the audio at evaluation; several give a WER table."},
    )
    decode_ctc_weight: float | None = field(
        default=None, metadata={"help": "CTC weight of joint decoding (default: the model's generation config)."}
    )
    output_json: str | None = field(
        default=None, metadata={"help": "Write every utterance's reference and hypothesis to this JSON file."}
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
            "help": "Skip (and count) unusable clips instead of stopping: bad label rows, missing files and clips "
            "whose media fail the check before training, when loading (the log names the first few and counts them), "
            "and training clips that fail to decode later (the next clip takes the place; `train_skipped_clips` "
            "counts them)."
        },
    )
    skip_media_check: bool = field(
        default=False,
        metadata={
            "help": "Do not open every clip before training (each mp4's header and first frame, each wav's header and "
            "first samples, the layout's format): a faster start on a large corpus, but a corrupt clip then stops the "
            "run only when the DataLoader reaches it (or is skipped then, with --skip-bad-files). With "
            "--skip-bad-files the evaluation sets are checked all the same; a --streaming split is only ever checked "
            "as it is read."
        },
    )


@dataclass
class AVSRTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with AVSR defaults, the seed's trainer flags, and checkpoint averaging."""

    predict_with_generate: bool = field(default=True, metadata={"help": "Decode with generate() for the WER."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the video/audio/text columns."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Loggers (tensorboard)."})
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin the batches in page-locked memory; by default when an accelerator (a GPU) is present."},
    )
    average_checkpoints: int | None = field(
        default=None,
        metadata={"help": "After training, average the last N checkpoints into OUTPUT_DIR/model_avg_N (auto_avsr)."},
    )
    projector_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "The decoder's projector (new layers from the encoder's width to an LLM's or Whisper decoder's) "
            "trains at this multiple of the learning rate; the encoder and the adapters at the learning rate."
        },
    )
    # auto_avsr's trainer flags, mapped onto the fields above in __post_init__
    exp_dir: str | None = field(default=None, metadata={"help": "auto_avsr: output_dir is EXP_DIR/EXP_NAME."})
    exp_name: str | None = field(default=None, metadata={"help": "auto_avsr: experiment name."})
    max_epochs: float | None = field(default=None, metadata={"help": "auto_avsr: = --num_train_epochs."})
    lr: float | None = field(default=None, metadata={"help": "auto_avsr: = --learning_rate."})
    warmup_epochs: float | None = field(default=None, metadata={"help": "auto_avsr: warmup as a share of epochs."})
    ckpt_path: str | None = field(default=None, metadata={"help": "auto_avsr: = --resume_from_checkpoint."})
    gpus: int | None = field(
        default=None, metadata={"help": "auto_avsr: processes per machine; checked against the launcher's."}
    )
    num_nodes: int | None = field(
        default=None, metadata={"help": "auto_avsr: machines; checked against the launcher's world size."}
    )

    def __post_init__(self):
        if self.exp_dir is not None or self.exp_name is not None:
            exp_dir = os.path.join(self.exp_dir or "./exp", self.exp_name or "")
            if self.output_dir is not None and os.path.normpath(self.output_dir) != os.path.normpath(exp_dir):
                raise UsageError(
                    f"--output_dir {self.output_dir} and --exp-dir/--exp-name ({exp_dir}) disagree; give one of them."
                )
            self.output_dir = exp_dir
        if self.max_epochs is not None:
            self.num_train_epochs = self.max_epochs
        if self.lr is not None:
            self.learning_rate = self.lr
        if self.warmup_epochs is not None:
            epochs = self.num_train_epochs
            self.warmup_steps = min(self.warmup_epochs / epochs, 0.999) if epochs > 0 else 0.0
        if self.ckpt_path is not None:
            self.resume_from_checkpoint = self.ckpt_path
        if self.average_checkpoints is not None:
            if self.average_checkpoints < 1:
                raise UsageError(f"--average_checkpoints must be >= 1, got {self.average_checkpoints}.")
            if self.save_total_limit is not None and self.save_total_limit < self.average_checkpoints:
                raise UsageError(
                    f"--save_total_limit {self.save_total_limit} keeps fewer checkpoints than "
                    f"--average_checkpoints {self.average_checkpoints} averages."
                )
        if self.dataloader_pin_memory is None:  # pinning needs an accelerator; on CPU torch warns at every loader
            self.dataloader_pin_memory = not self.use_cpu and torch.accelerator.is_available()
        if self.metric_for_best_model in ("wer", "eval_wer") and self.greater_is_better is None:
            self.greater_is_better = False  # the lower the WER, the better
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not torch.accelerator.is_available():
            # launched by torchrun/accelerate on machines without GPUs: Accelerate starts DDP over gloo only when told
            # to use the CPU; without it every process would train alone on all the data
            self.use_cpu = True
        super().__post_init__()


def translate_seed_flags(argv: list[str]) -> list[str]:
    """auto_avsr's bare `--debug` (a logging switch) becomes `--log_level debug` (Trainer's `--debug` takes a value)."""
    translated = []
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == "--debug" and (following is None or following.startswith("-")):
            translated += ["--log_level", "debug"]
        else:
            translated.append(arg)
    return translated


def read_argument_file(path: str) -> dict:
    """The arguments of a JSON or YAML argument file, as a dict."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Argument file {path} does not exist.")
    import yaml

    text = Path(path).read_text()
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        language = "JSON" if path.endswith(".json") else "YAML"
        raise ValueError(f"Argument file {path}: not valid {language} ({error}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"Argument file {path}: an object of argument names and values, got {type(values).__name__}.")
    return values


def load_config_name(config_name: str) -> tuple[dict, dict, dict]:
    """`(config fields, processor settings, training recipe)` of `--config_name`'s preset (a name from
    hub_configs/ or a JSON file); a missing one is named after the flag."""
    try:
        return read_preset(config_name)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--config_name {config_name!r}: {error}") from None


def preset_recipe(config_name: str | None) -> dict:
    """The training recipe of `--config_name`'s preset (its `training` key): defaults of the data and training
    arguments. A recipe key that is neither is refused, naming the preset and the key."""
    if not config_name:
        return {}
    recipe = load_config_name(config_name)[2]
    names = {field.name for cls in (DataTrainingArguments, AVSRTrainingArguments) for field in dataclasses.fields(cls)}
    unknown = sorted(set(recipe) - names)
    if unknown:
        raise ValueError(
            f"--config_name {config_name!r}: its 'training' recipe names {unknown}, which are no data or training "
            "arguments of this script (see --help)."
        )
    return recipe


def parse_args(argv: list[str] | None = None):
    """Command line (seed flags included) or a single JSON/YAML file -> the three argument dataclasses; without
    --do_train/--do_eval/--do_predict the label files choose, as auto_avsr's train.py and eval.py do."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, AVSRTrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        values = read_argument_file(argv[0])
        recipe = preset_recipe(values.get("config_name"))
        model_args, data_args, training_args = parser.parse_dict({**recipe, **values})
    else:
        argv = translate_seed_flags(argv)
        # the preset's recipe becomes the defaults, so that the command line still overrides every field of it (and
        # `--config_name PRESET --help` shows them)
        known, _ = parser.parse_known_args(args=[arg for arg in argv if arg not in ("-h", "--help")])
        parser.set_defaults(**preset_recipe(known.config_name))
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    # (an --eval_strategy other than "no" sets do_eval itself: that is evaluation during training, not a stage)
    chosen = training_args.do_eval and training_args.eval_strategy == "no"
    if not (training_args.do_train or chosen or training_args.do_predict):
        if data_args.train_file or data_args.val_file or data_args.test_file:  # each file its stage (eval_*, test_*)
            training_args.do_train = bool(data_args.train_file)
            training_args.do_eval = bool(data_args.val_file)
            training_args.do_predict = bool(data_args.test_file)
        elif data_args.dataset_name:
            raise UsageError("--dataset_name: choose the splits' use with --do_train, --do_eval and/or --do_predict.")
        else:
            raise UsageError(
                "Nothing to do: give --train-file to train, or --test-file/--val-file to evaluate "
                "(or --do_train/--do_eval/--do_predict)."
            )
    return model_args, data_args, training_args
