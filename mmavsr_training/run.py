"""`main`: what `python run_speech_recognition_avsr.py ARGS` runs, as numbered steps (arguments, logging, checkpoint,
data, model, collators, Trainer, training, evaluation, hypotheses). The work of each step is done by the modules of
this package and by `mmavsr_processing`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import datasets
import transformers
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mmavsr_processing import MMAVSRTokenizer
from mmavsr_processing.augmentation import training_augmentations
from mmavsr_processing.collation import MMAVSRDataCollator
from mmavsr_processing.label_files import INDEX_COLUMN, read_files_directly
from mmavsr_processing.stream_resume import StreamingStateCallback, restore_streaming_state

from .arguments import load_config_name, parse_args
from .builder import (
    UsageError,
    build_model,
    build_processor,
    check_model_choices,
    init_from_models,
    modalities_of,
    separate_ctc_tokenizer,
)
from .checkpointing import (
    INTERRUPTED_EXIT_CODE,
    average_last_checkpoints,
    discard_incomplete_checkpoints,
    resume_checkpoint,
)
from .data import (
    check_dataset_flags,
    load_dataset_splits,
    load_label_splits,
    noise_for_run,
    refuse_unused_audio_flags,
    training_clips,
)
from .evaluation import WERMetric, evaluate_at_snrs, format_wer_table, write_wer_table
from .trainer import (
    AVSRSeq2SeqTrainer,
    EpochCallback,
    SeededCollator,
    SigtermCheckpointCallback,
    check_world_size,
    end_distributed,
)


logger = logging.getLogger(__name__)


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
        level = logging.INFO if training_args.should_log else logging.ERROR  # the other processes: errors only
    for package in ("mmavsr_training", "modeling_mmavsr", "mmavsr_processing"):
        logging.getLogger(package).setLevel(level)
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
        preset, settings, _ = load_config_name(model_args.config_name)
    model = build_model(model_choices, preset, tokenizer)
    config = model.config
    processor = build_processor(
        config,
        settings,
        tokenizer,
        tokenizer_name=model_args.tokenizer_name,
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
        augmentations = training_augmentations(
            modalities, data_args.time_masking, data_args.train_snr, noise, data_args.boundary_jitter_s
        )
        train_collator = SeededCollator(
            MMAVSRDataCollator(
                processor,
                training=True,
                video_augmentation=augmentations["video"],
                audio_augmentation=augmentations["audio"],
                clip_augmentation=augmentations["clip"],
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
        with sigterm.installed():  # only during training: a SIGTERM later (final save, evaluation) ends the process
            train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        if sigterm.stopped_at_step is not None:
            checkpoint = Path(training_args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{sigterm.stopped_at_step}"
            logger.warning(
                f"Stopped by SIGTERM after step {sigterm.stopped_at_step}: {checkpoint} is saved. Run the "
                "same command again to resume from it."
            )
            sys.exit(INTERRUPTED_EXIT_CODE)
        trainer.save_model()
        if training_args.should_save:  # process 0 only, as `save_model`
            processor.save_pretrained(training_args.output_dir)
        metrics = train_result.metrics
        if not data_args.streaming:  # a stream has no length
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
            average_last_checkpoints(model, processor, training_args.output_dir, training_args.average_checkpoints)

    # 9. Evaluate / predict: one decoding per --decode-snr-target, a WER table (JSON and PNG plot) per split
    decoded = []
    for prefix in ("eval", "test"):
        if prefix not in splits:
            continue
        dataset = splits[prefix]
        metrics, rows, utterances = evaluate_at_snrs(
            trainer,
            dataset,
            data_args.decode_snr_target,
            processor,
            metric,
            prefix,
            modalities,
            noise,
            ctc_tokenizer=ctc_tokenizer,
        )
        metrics[f"{prefix}_samples"] = len(dataset)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        results.update(metrics)
        if trainer.is_world_process_zero():
            print(format_wer_table(rows, f"WER of {config.modality} on {len(dataset)} utterances ({prefix})"))
            write_wer_table(rows, training_args.output_dir, prefix, config.modality)
        decoded.append({"split": prefix, "conditions": utterances})

    # 10. Every utterance's hypothesis
    if data_args.output_json and decoded and trainer.is_world_process_zero():
        Path(data_args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(data_args.output_json).write_text(json.dumps(decoded, indent=2))
        logger.info(f"Wrote every utterance's hypothesis to {data_args.output_json}.")
    return results


def cli() -> None:
    """The command line's entry point: `main()` on `sys.argv`, then the distributed process group ended. Flags that
    cannot all be honoured ([`UsageError`]) end it as argparse ends a bad command line: `PROG: error: MESSAGE` on
    stderr (one line per process) and exit status 2."""
    try:
        main()
    except UsageError as error:
        end_distributed()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    end_distributed()
