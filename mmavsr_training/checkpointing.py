"""Training checkpoints: which `checkpoint-STEP` folders are complete, which one a run resumes from, refusing pickled
code before resuming, and averaging the last N checkpoints into `model_avg_N` (auto_avsr's `--average_checkpoints`).

Saves are made atomic by `AVSRSeq2SeqTrainer` (`trainer.py`): a checkpoint is written under
`OUTPUT_DIR/.incomplete_checkpoints` and renamed into `OUTPUT_DIR` once complete.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_pt_utils import safe_globals
from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME

from modeling_mmavsr.loading_checks_mmavsr import UnsafeCheckpointError


logger = logging.getLogger(__name__)

# checkpoints are written under OUTPUT_DIR/INCOMPLETE_CHECKPOINTS_DIR and renamed into OUTPUT_DIR once complete
INCOMPLETE_CHECKPOINTS_DIR = ".incomplete_checkpoints"
# the marker transformers' `--enable_jit_checkpoint` leaves in a checkpoint folder whose save has not finished
INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"
# the exit status of a run stopped by SIGTERM after saving its checkpoint (the shell's 128 + signal number): a
# scheduler sees an unfinished run, and rerunning the same command resumes it
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM
# the pickle-based files the Trainer reads back when resuming (with `torch.load(weights_only=True)`)
RESUMED_PICKLE_FILES = (OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME, "rng_state*.pth")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The Trainer's checkpoint-STEP folders of `output_dir`, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


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


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint-STEP of `output_dir` whose save finished; newer half-written ones are skipped with a
    warning (saves killed before saves became atomic, or written by other tools)."""
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning(f"Ignoring {folder}: {problem}. Resuming from an older checkpoint.")
    return None


def resume_checkpoint(output_dir: str, resume_from_checkpoint: str | None = None) -> str | None:
    """`resume_from_checkpoint` when given (it must be a complete checkpoint), else the newest complete
    checkpoint-STEP already in `output_dir`, else None (a fresh run)."""
    if resume_from_checkpoint is None:
        if not os.path.isdir(output_dir):
            return None
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint:
            logger.info(f"Resuming from {checkpoint} (found in --output_dir; use another folder to start afresh).")
        return checkpoint
    if not os.path.isdir(resume_from_checkpoint):
        raise FileNotFoundError(
            f"--resume_from_checkpoint/--ckpt-path {resume_from_checkpoint}: no such checkpoint folder."
        )
    problem = checkpoint_problem(Path(resume_from_checkpoint))
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint/--ckpt-path {resume_from_checkpoint}: cannot resume from it: {problem}."
        )
    return resume_from_checkpoint


def discard_incomplete_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the half-written checkpoints that saves killed mid-way left in OUTPUT_DIR/.incomplete_checkpoints."""
    staging = Path(output_dir) / INCOMPLETE_CHECKPOINTS_DIR
    for leftover in sorted(staging.glob("*")):
        logger.warning(f"Ignoring and deleting {leftover}: a checkpoint whose save was killed before it finished.")
        shutil.rmtree(leftover, ignore_errors=True)


def refuse_unsafe_pickles(folder: Path) -> None:
    """Every pickle-based file the Trainer reads when resuming from `folder` must hold only tensors, plain containers
    and the numpy RNG state: `torch.load(weights_only=True)` refuses anything else, and this names the file first.
    The check reads the pickle's opcodes without running them."""
    for pattern in RESUMED_PICKLE_FILES:
        for path in sorted(Path(folder).glob(pattern)):
            try:
                with safe_globals():  # the numpy objects of the RNG state are allowed, as the Trainer allows them
                    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
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


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the float tensors of several safetensors files (model.safetensors: BatchNorm running stats included;
    adapter_model.safetensors); integer tensors (BatchNorm's num_batches_tracked) take their maximum."""
    if not paths:
        raise ValueError("No checkpoints to average.")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (checkpoint averaging reads it from every checkpoint averaged).")
        state = load_file(str(path))
        if total and state.keys() != total.keys():
            raise ValueError(f"{path}: its tensors differ from those of {paths[0]}; cannot average.")
        for name, tensor in state.items():
            if tensor.is_floating_point():
                total[name] = total[name] + tensor.double() if name in total else tensor.double()
            else:
                total[name] = torch.maximum(total[name], tensor) if name in total else tensor.clone()
    reference = load_file(str(paths[0]))
    return {
        name: (tensor / len(paths)).to(reference[name].dtype) if tensor.is_floating_point() else tensor
        for name, tensor in total.items()
    }


def average_last_checkpoints(model, processor, output_dir: str, count: int) -> Path:
    """auto_avsr's model_avg_N: average the last `count` checkpoints of `output_dir` into OUTPUT_DIR/model_avg_N (the
    model's weights and `processor`), and load the average into `model`. A model with LoRA adapters averages its
    adapter_model.safetensors too and saves the way its `save_pretrained` does (adapter files beside the weights)."""
    checkpoints = checkpoint_dirs(output_dir)[-count:]
    if not checkpoints:
        raise FileNotFoundError(f"{output_dir}: no checkpoint-* folders to average (is --save_strategy 'no'?).")
    if len(checkpoints) < count:
        logger.warning(f"Averaging {len(checkpoints)} checkpoints: fewer than the {count} asked for exist.")
    state = average_state_dicts([c / "model.safetensors" for c in checkpoints])
    if getattr(model, "_hf_peft_config_loaded", False):  # LoRA / QLoRA: the adapters are averaged as well
        adapters = average_state_dicts([c / ADAPTER_SAFE_WEIGHTS_NAME for c in checkpoints])
        model.load_saved_weights(state, adapters, f"the average of {', '.join(str(c) for c in checkpoints)}")
    else:
        model.load_state_dict(state, strict=True)
    target = Path(output_dir) / f"model_avg_{count}"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    logger.info(f"Averaged {', '.join(c.name for c in checkpoints)} into {target}.")
    return target


__all__ = [
    "INCOMPLETE_CHECKPOINTS_DIR",
    "INCOMPLETE_MARKER",
    "INTERRUPTED_EXIT_CODE",
    "average_last_checkpoints",
    "average_state_dicts",
    "checkpoint_dirs",
    "checkpoint_problem",
    "discard_incomplete_checkpoints",
    "last_complete_checkpoint",
    "refuse_unsafe_pickles",
    "resume_checkpoint",
]
