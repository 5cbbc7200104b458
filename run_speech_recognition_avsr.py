#!/usr/bin/env python
"""Train, evaluate and decode MMAVSR models (lip reading, speech recognition, audio-visual) with `Seq2SeqTrainer`.

Arguments are `ModelArguments`, `DataTrainingArguments` and `AVSRTrainingArguments` (a `Seq2SeqTrainingArguments`),
given on the command line or as one JSON/YAML file. auto_avsr's flags work as written in its README:

    python run_speech_recognition_avsr.py --exp-dir=exp --exp-name=vsr --modality=video --root-dir=DATA \
        --train-file=train.csv --num-nodes=1                                            # = auto_avsr's train.py
    python run_speech_recognition_avsr.py --modality=video --root-dir=DATA --test-file=test.csv \
        --pretrained-model-path=exp/vsr/model_avg_10                                   # = auto_avsr's eval.py

Without `--do_train/--do_eval/--do_predict`, the flags choose: a `--train-file` trains (then evaluates `--val-file`
and `--test-file` when given); otherwise the `--val-file` and/or `--test-file` given are evaluated (`eval_*` and
`test_*` results).

Rerunning a command resumes its training from the newest complete checkpoint in the output folder. SIGTERM saves a
checkpoint after the step under way and exits with status 143; checkpoints are written atomically. Launch with
`torchrun` or `accelerate launch` for several processes. See docs/distributed_and_reliability.md.

The work is done by the package: `modeling_mmavsr.builder_mmavsr` (model and processor), `trainer_mmavsr` (the
Trainer, SIGTERM), `checkpointing_mmavsr` (resume, averaging), `evaluation_mmavsr` (WER, SNR tables),
`mmavsr_processing.label_files` / `hf_datasets` (label CSVs or a `datasets` dataset as splits, the training set) and
`augmentation` (noise and masks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from mmavsr_processing import CLEAN_SNR, MMAVSRTokenizer
from mmavsr_processing.augmentation import refuse_unused_audio_flags, training_augmentations
from mmavsr_processing.collation import MMAVSRDataCollator
from mmavsr_processing.hf_datasets import check_dataset_flags, load_dataset_splits, training_clips
from mmavsr_processing.label_files import INDEX_COLUMN, load_label_splits, noise_for_run, read_files_directly
from mmavsr_processing.stream_resume import StreamingStateCallback, restore_streaming_state
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modeling_mmavsr.builder_mmavsr import (
    build_model,
    build_processor,
    check_model_choices,
    init_from_models,
    modalities_of,
    separate_ctc_tokenizer,
)
from modeling_mmavsr.checkpointing_mmavsr import (
    INTERRUPTED_EXIT_CODE,
    average_last_checkpoints,
    discard_incomplete_checkpoints,
    resume_checkpoint,
)
from modeling_mmavsr.evaluation_mmavsr import WERMetric, evaluate_at_snrs, format_wer_table, plot_wer_tables
from modeling_mmavsr.presets import load_preset, load_preset_training
from modeling_mmavsr.trainer_mmavsr import (
    AVSRSeq2SeqTrainer,
    EpochCallback,
    SeededCollator,
    SigtermCheckpointCallback,
    check_world_size,
    end_distributed,
)

logger = logging.getLogger(__name__)


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
        metadata={"help": "A `datasets` dataset instead of label files: a Hub id, a save_to_disk folder, a "
                  "parquet/CSV/JSON file or a videofolder/audiofolder folder with a metadata file (docs/datasets.md)."},
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
        metadata={"help": "Stream --dataset_name's training split (nothing downloaded or converted up front; needs "
                  "--max_steps): batches of --max-frames frames (or --per_device_train_batch_size clips), each "
                  "process reading its own shards, resumed from a checkpoint where it stopped."},
    )
    max_frames: int | None = field(
        default=None, metadata={"help": "Cap on the summed video frames of a training batch (replaces the batch size)."}
    )
    train_num_buckets: int = field(default=400, metadata={"help": "Length buckets of the --max-frames sampler."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation clips."})
    time_masking: bool = field(default=True, metadata={"help": "auto_avsr's adaptive time masks in training."})
    train_snr: list[float] | None = field(
        default=None,
        metadata={"help": "Add babble/--noise-file noise to the audio in training at an SNR drawn from these "
                  "(999999 = clean); refused for a model without audio."},
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
            self.warmup_steps = min(self.warmup_epochs / epochs, 0.999) if epochs > 0 else 0.0
        if self.ckpt_path is not None:
            self.resume_from_checkpoint = self.ckpt_path
        if self.average_checkpoints is not None:
            if self.average_checkpoints < 1:
                raise ValueError(f"--average_checkpoints must be >= 1, got {self.average_checkpoints}.")
            if self.save_total_limit is not None and self.save_total_limit < self.average_checkpoints:
                raise ValueError(
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


def preset_recipe(config_name: str | None) -> dict:
    """The training recipe of `--config_name`'s preset (its `training` key): defaults of the data and training
    arguments. A recipe key that is neither is refused, naming the preset and the key."""
    if not config_name:
        return {}
    try:
        recipe = load_preset_training(config_name)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--config_name {config_name!r}: {error}") from None
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
            raise ValueError("--dataset_name: choose the splits' use with --do_train, --do_eval and/or --do_predict.")
        else:
            raise ValueError(
                "Nothing to do: give --train-file to train, or --test-file/--val-file to evaluate "
                "(or --do_train/--do_eval/--do_predict)."
            )
    return model_args, data_args, training_args


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Run what the arguments ask; returns every metric computed. `callbacks` go to the Trainer."""
    # 1. Parse arguments; model choices that cannot all be honoured are refused before anything is loaded
    model_args, data_args, training_args = parse_args(argv)
    model_choices = dataclasses.asdict(model_args)
    check_model_choices(model_choices)

    # 2. Logging
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    if training_args.log_level == "passive":
        level = logging.INFO if training_args.should_log else logging.WARNING
    for library_logger in (logger, logging.getLogger("modeling_mmavsr"), logging.getLogger("mmavsr_processing")):
        library_logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    check_world_size(training_args)
    if training_args.enable_jit_checkpoint:
        logger.warning(
            "--enable_jit_checkpoint is not needed: this script saves a checkpoint on SIGTERM itself (after the "
            "step under way, on every process at the same step); using that instead."
        )
        training_args.enable_jit_checkpoint = False

    # 3. Detect the last checkpoint: rerunning a command resumes it
    last_checkpoint = None
    evaluation_split = data_args.val_file or data_args.dataset_name
    if training_args.do_train and training_args.eval_strategy != "no" and not evaluation_split:
        raise ValueError(
            f"--eval_strategy {training_args.eval_strategy.value} evaluates the model during training on the "
            "validation split: give --val-file, or --dataset_name with its --eval_split_name (the test split never "
            "chooses the model)."
        )
    if training_args.do_train:
        last_checkpoint = resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    set_seed(training_args.seed)

    # 4. Load datasets (before the model: --train_vocabulary_size trains the vocabulary on the training transcripts);
    # a --dataset_name is read in step 5, once the model says which media it reads
    check_dataset_flags(data_args)
    splits = load_label_splits(data_args, training_args)

    # 5. Build model and processor
    tokenizer = None
    if model_args.train_vocabulary_size:
        if "train" not in splits and not (data_args.dataset_name and training_args.do_train):
            raise ValueError("--train_vocabulary_size needs training transcripts (--train-file or --dataset_name).")
        if "train" in splits:
            texts = splits["train"]["text"]
        else:  # only the transcripts of --dataset_name's training split
            texts = load_dataset_splits(data_args, training_args, (), ["train"], INDEX_COLUMN)
            texts = [row["text"] for row in texts["train"]]
        tokenizer = MMAVSRTokenizer.train_vocabulary(
            texts,
            Path(training_args.output_dir) / "vocabulary",
            vocab_size=model_args.train_vocabulary_size,
            model_type=model_args.train_vocabulary_type,
            hard_vocab_limit=False,
        )
    preset, settings = {}, {}
    if model_args.config_name:
        try:
            preset, settings = load_preset(model_args.config_name)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"--config_name {model_args.config_name!r}: {error}") from None
    model = build_model(model_choices, preset, tokenizer)
    config = model.config
    processor = build_processor(
        config, settings, tokenizer, tokenizer_name=model_args.tokenizer_name,
        model_name_or_path=model_args.model_name_or_path,
    )
    if model_args.init_from_models:
        init_from_models(model, processor, model_args.init_from_models)
    modalities = modalities_of(config)
    if "audio" not in modalities:
        refuse_unused_audio_flags(data_args, config.modality)
    ctc_tokenizer = separate_ctc_tokenizer(config)
    splits = {stage: read_files_directly(dataset, modalities) for stage, dataset in splits.items()}
    if data_args.dataset_name:
        splits = load_dataset_splits(data_args, training_args, modalities, index_column=INDEX_COLUMN)
    logger.info(f"Model: {config.modality} ({', '.join(modalities)}), {model.num_parameters():,} parameters.")

    # 6. Noise, augmentation and collators
    noise = noise_for_run(data_args, training_args, splits, modalities)
    train_collator = train_dataset = None
    if "train" in splits:
        augmentations = training_augmentations(modalities, data_args.time_masking, data_args.train_snr, noise)
        train_collator = SeededCollator(
            MMAVSRDataCollator(
                processor,
                training=True,
                video_augmentation=augmentations["video"],
                audio_augmentation=augmentations["audio"],
                modalities=modalities,
                ctc_tokenizer=ctc_tokenizer,
            ),
            seed=training_args.seed,
        )
        train_dataset = training_clips(splits["train"], processor, modalities, data_args, training_args, INDEX_COLUMN)

    # 7. Trainer: WER on the clean validation split during training (--eval_strategy), e.g. to keep the best model
    # (--metric_for_best_model wer --load_best_model_at_end)
    metric = WERMetric(processor)
    eval_collator = MMAVSRDataCollator(processor, modalities=modalities, ctc_tokenizer=ctc_tokenizer)
    evaluating_while_training = training_args.do_train and training_args.eval_strategy != "no"
    trainer = AVSRSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=splits["eval"] if evaluating_while_training else None,
        data_collator=train_collator or eval_collator,
        eval_collator=eval_collator,
        gen_kwargs={} if data_args.decode_ctc_weight is None else {"ctc_weight": data_args.decode_ctc_weight},
        processing_class=processor,
        compute_metrics=metric,
        callbacks=[EpochCallback(train_collator)] if train_collator else None,
        max_frames=data_args.max_frames,
        num_buckets=data_args.train_num_buckets,
        projector_lr_scale=training_args.projector_lr_scale,
    )
    for callback in callbacks or []:
        trainer.add_callback(callback)
    if data_args.streaming and train_dataset is not None:
        trainer.add_callback(StreamingStateCallback(train_dataset))  # the stream's position in each checkpoint

    # 8. Train (SIGTERM: save a checkpoint after the step under way, exit 143; the same command resumes)
    results = {}
    if training_args.do_train:
        if training_args.should_save:
            discard_incomplete_checkpoints(training_args.output_dir)
        if data_args.streaming:  # continue the stream where the checkpoint left it
            restore_streaming_state(train_dataset, last_checkpoint, training_args)
        sigterm = SigtermCheckpointCallback()
        trainer.add_callback(sigterm)
        sigterm.install()
        try:
            train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        finally:  # SIGTERM after training (final save, evaluation) ends the process as usual
            sigterm.restore()
        if sigterm.stopped_at_step is not None:
            checkpoint = Path(training_args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{sigterm.stopped_at_step}"
            logger.warning(f"Stopped by SIGTERM after step {sigterm.stopped_at_step}: {checkpoint} is saved. Run the "
                           "same command again to resume from it.")
            sys.exit(INTERRUPTED_EXIT_CODE)
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
        metrics = train_result.metrics
        if not data_args.streaming:  # a stream has no length
            metrics["train_samples"] = len(train_dataset)
        metrics["train_skipped_clips"] = len(trainer.skipped_clips)
        if trainer.skipped_clips:
            logger.warning(f"Skipped {len(trainer.skipped_clips)} unusable training clip(s), e.g. "
                           f"{sorted(trainer.skipped_clips)[0]}")
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
        if training_args.average_checkpoints:
            average_last_checkpoints(model, processor, training_args.output_dir, training_args.average_checkpoints)

    # 9. Evaluate / predict: one decoding per --decode-snr-target, a WER table (JSON and PNG plot) per split
    decoded = []
    for prefix in ("eval", "test"):
        if prefix not in splits:
            continue
        dataset = splits[prefix]
        metrics, rows, utterances = evaluate_at_snrs(
            trainer, dataset, data_args.decode_snr_target, processor, metric, prefix, modalities, noise,
            ctc_tokenizer=ctc_tokenizer,
        )
        metrics[f"{prefix}_samples"] = len(dataset)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        results.update(metrics)
        if trainer.is_world_process_zero():
            print(format_wer_table(rows, f"WER of {config.modality} on {len(dataset)} utterances ({prefix})"))
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / f"{prefix}_wer_table.json").write_text(json.dumps(rows, indent=2))
            plot_wer_tables({config.modality: rows}, Path(training_args.output_dir) / f"{prefix}_wer_table.png")
        decoded.append({"split": prefix, "conditions": utterances})

    # 10. Every utterance's hypothesis
    if data_args.output_json and decoded and trainer.is_world_process_zero():
        Path(data_args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(data_args.output_json).write_text(json.dumps(decoded, indent=2))
        logger.info(f"Wrote every utterance's hypothesis to {data_args.output_json}.")
    return results


if __name__ == "__main__":
    main()
    end_distributed()
