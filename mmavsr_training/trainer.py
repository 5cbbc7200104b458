"""Training MMAVSR models with `Seq2SeqTrainer`: the Trainer subclass (frame-capped batches, atomic checkpoint saves,
resuming that refuses pickled code), seeded training batches and the callback that keeps their epoch, and SIGTERM
handling (save a checkpoint after the step under way, then stop)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mmavsr_processing.collation import SKIPPED_CLIPS, MaxFramesBatchSampler
from mmavsr_processing.hf_datasets import MaxFramesStreamBatcher, streaming_dataloader
from mmavsr_processing.label_files import INDEX_COLUMN

from .checkpointing import INCOMPLETE_CHECKPOINTS_DIR, refuse_unsafe_pickles


logger = logging.getLogger(__name__)


class AVSRSeq2SeqTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with auto_avsr's frame-capped training batches (`max_frames`), atomic checkpoint saves and
    resuming that refuses pickled code; counts the training clips `ClipReader` skipped (`skipped_clips`).

    Evaluation batches come from `eval_collator` when it is set (`data_collator` is then the training batches' only:
    evaluation during training reads clean, unaugmented clips), and decode with `gen_kwargs` (e.g. the joint CTC
    weight) unless `evaluate` is given others. With `projector_lr_scale`, the decoder's projector (the new layers from
    the encoder's width to an LLM's or Whisper decoder's) trains at that multiple of the learning rate."""

    def __init__(
        self,
        *args,
        max_frames: int | None = None,
        num_buckets: int = 400,
        eval_collator=None,
        gen_kwargs: dict | None = None,
        projector_lr_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if projector_lr_scale <= 0:
            raise ValueError(f"projector_lr_scale must be > 0, got {projector_lr_scale}.")
        if projector_lr_scale != 1.0 and not projector_parameters(self.model):
            raise ValueError(
                f"projector_lr_scale {projector_lr_scale}: this model's decoder (decoder_type="
                f"{self.model.config.decoder_type!r}) has no trainable projector to train at another rate."
            )
        self.projector_lr_scale = projector_lr_scale
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None and self.args.output_dir:
                # transformers picks OUTPUT_DIR/runs/... when training begins: an evaluation-only run would log to
                # ./runs in the working directory
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())
        self.max_frames = max_frames
        self.num_buckets = num_buckets
        self.eval_collator = eval_collator
        self.gen_kwargs = dict(gen_kwargs or {})
        self._staging_dir: str | None = None
        # the messages of the clips `ClipReader` skipped in training (each clip once, however many epochs)
        self.skipped_clips: set[str] = set()

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, its projector parameters moved into groups of their own at `projector_lr_scale`
        times their group's learning rate (and the same weight decay), before any step."""
        if self.optimizer is not None or self.projector_lr_scale == 1.0:  # already made, or nothing to move
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        projector = {id(p) for p in projector_parameters(self.model if model is None else model)}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in projector]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in projector]
            optimizer.add_param_group({**group, "params": moved, "lr": group["lr"] * self.projector_lr_scale})
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.skipped_clips.update(inputs.pop(SKIPPED_CLIPS, ()))  # not a model input
        return super().training_step(model, inputs, num_items_in_batch)

    def get_train_dataloader(self):
        if isinstance(self.train_dataset, MaxFramesStreamBatcher):  # --streaming: items are batches already
            return streaming_dataloader(self.train_dataset, self.data_collator, self.args)
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

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        training_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **gen_kwargs):
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **{**self.gen_kwargs, **gen_kwargs})

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # Seq2SeqTrainer.prediction_step fills the model's generation config with GenerationConfig's global defaults
        # (max_length 20, num_beams 1, ...) to pad its outputs: from the second batch on, generate() would warn that
        # max_new_tokens and max_length are both set, and every checkpoint saved after an evaluation would carry
        # them. The settings it found unset are unset again after each batch.
        generation_config = self.model.generation_config
        unset = [
            name
            for name in generation_config._get_default_generation_params()
            if getattr(generation_config, name, None) is None
        ]
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            for name in unset:
                setattr(generation_config, name, None)

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

    def _loads_adapters_itself(self, model) -> bool:
        """A model holding LoRA adapters (not a peft `PeftModel`, which the Trainer knows): its checkpoints keep the
        adapters in adapter_model.safetensors, which the Trainer's own loading of model.safetensors would drop.
        DeepSpeed and FSDP restore the full state of their own checkpoints."""
        has_adapters = getattr(model, "_hf_peft_config_loaded", False) and hasattr(model, "load_checkpoint_folder")
        return has_adapters and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        refuse_unsafe_pickles(Path(resume_from_checkpoint))
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self._loads_adapters_itself(unwrapped):
            logger.info(f"Loading model and LoRA adapters from {resume_from_checkpoint}.")
            unwrapped.load_checkpoint_folder(resume_from_checkpoint)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not self._loads_adapters_itself(unwrapped):
            return super()._load_best_model()
        logger.info(
            f"Loading best model and LoRA adapters from {self.state.best_model_checkpoint} "
            f"(score: {self.state.best_metric})."
        )
        unwrapped.load_checkpoint_folder(self.state.best_model_checkpoint)
        return None

    def _pad_tensors_to_max_len(self, tensor, max_length):
        # generated ids are padded with the decoder's pad id (the processor has no pad_token_id of its own)
        padded = tensor.new_full((tensor.shape[0], max_length), self.model.config.text_config.pad_token_id)
        padded[:, : tensor.shape[-1]] = tensor
        return padded


def projector_parameters(model) -> list[torch.nn.Parameter]:
    """The trainable parameters of the decoder's projector (`model.model.decoder.projector`: encoder states to the
    width of an LLM or Whisper decoder); none for a decoder without one."""
    projector = getattr(getattr(getattr(model, "model", None), "decoder", None), "projector", None)
    return [p for p in projector.parameters() if p.requires_grad] if projector is not None else []


class SeededCollator:
    """Training batches whose random crops and augmentations depend only on (seed, epoch, utterances), never on the
    global RNG: a resumed run draws exactly what an uninterrupted run draws, and dropout's RNG stays untouched. Rows
    carry their position in the split in `INDEX_COLUMN`."""

    def __init__(self, collator, seed: int):
        self.collator = collator
        self.seed = seed
        self.epoch = 0

    def _augmentations(self):
        collator = self.collator
        for group in (collator.video_augmentation, collator.audio_augmentation, collator.clip_augmentation):
            yield from group or []

    def __call__(self, rows):
        indices = [int(row[INDEX_COLUMN]) for row in rows]
        seed = int(np.random.SeedSequence([self.seed, self.epoch, *indices]).generate_state(1)[0])
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


class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM (preemption, `scancel`, `kill`): finish the optimizer step under way, save checkpoint-STEP and stop
    training, every process at the same step. A second SIGTERM ends the process at once (the atomic saves keep the
    newest complete checkpoint loadable). The handler is in place inside `with callback.installed():`."""

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
            logger.warning("Training outside the main thread: SIGTERM will not save a checkpoint.")
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[SigtermCheckpointCallback]:
        """The handler in place for the duration of the block (training), the previous one restored after it (a
        SIGTERM during the final save or evaluation ends the process as usual)."""
        self.install()
        try:
            yield self
        finally:
            self.restore()

    def _anyone_received(self, args) -> bool:
        """Whether any process got SIGTERM (processes may see it at different steps: they agree on one)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
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

    def on_epoch_end(self, args, state, control, **kwargs):
        # the Trainer ends a cut-short epoch as a finished one: with --eval_strategy/--save_strategy epoch it would
        # decode the validation set (minutes of a preemption's grace period) and record a mid-epoch model as the best
        # one, so that the resumed run would no longer end where an uninterrupted run ends. An epoch SIGTERM stopped
        # at its last step did finish: it is evaluated, as in the uninterrupted run.
        if self.stopped_at_step is not None and abs(state.epoch - round(state.epoch)) > 1e-6:
            control.should_evaluate = False
            control.should_save = False


def check_world_size(training_args) -> None:
    """auto_avsr's --gpus/--num-nodes (`training_args.gpus` / `num_nodes`) against the processes the launcher
    started: a mismatch warns (the launcher wins: torchrun/accelerate set the world size, these flags cannot)."""
    world_size = training_args.world_size
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = max(world_size // max(local_size, 1), 1)
    wanted_local = training_args.gpus if training_args.gpus is not None else local_size
    wanted_nodes = training_args.num_nodes if training_args.num_nodes is not None else nodes
    if (wanted_local, wanted_nodes) != (local_size, nodes):
        logger.warning(
            f"--gpus {training_args.gpus} --num-nodes {training_args.num_nodes} ask for {wanted_local} process(es) "
            f"on {wanted_nodes} machine(s), but this run was launched with {local_size} process(es) on {nodes} "
            f"machine(s); continuing with the launched {world_size}. To get what the flags ask for, launch with "
            f"`torchrun --nnodes {wanted_nodes} --nproc_per_node {wanted_local} run_speech_recognition_avsr.py ...`."
        )


def end_distributed() -> None:
    """After a launched run: every process waits for the others (rank 0 may still be saving), then the process group
    is torn down, so that no process exits with the group's threads alive (an abort, "terminate called without an
    active exception", that fails the launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = [
    "AVSRSeq2SeqTrainer",
    "EpochCallback",
    "SeededCollator",
    "SigtermCheckpointCallback",
    "check_world_size",
    "end_distributed",
    "projector_parameters",
]
