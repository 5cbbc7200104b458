"""Resuming a streamed training split from a Trainer checkpoint.

[`StreamingStateCallback`] writes a [`MaxFramesStreamBatcher`]'s position into each checkpoint and
[`restore_streaming_state`] loads it back before `trainer.train(resume_from_checkpoint=...)`. Kept apart from
`hf_datasets` because it needs the Trainer's callback classes, and `transformers.trainer_utils` imports peft and
bitsandbytes when they are installed: the package imports this module only when one of these names is used.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .hf_datasets import MaxFramesStreamBatcher


__all__ = ["STREAM_STATE_FILE", "StreamingStateCallback", "restore_streaming_state"]

logger = logging.getLogger(__name__)

STREAM_STATE_FILE = "stream_state_rank{rank}.json"


class StreamingStateCallback(TrainerCallback):
    """Writes the batcher's `state_dict()` into each checkpoint (`stream_state_rank{R}.json`, one a process), so that
    [`restore_streaming_state`] resumes the stream where the checkpoint left it instead of re-reading the batches
    already trained on. Needs the batcher iterated in the training process (`dataloader_num_workers=0`); with
    workers nothing is written, and resuming falls back to the Trainer's skipping of the trained batches."""

    def __init__(self, batcher: MaxFramesStreamBatcher):
        self.batcher = batcher

    def on_save(self, args, state, control, **kwargs):
        if args.dataloader_num_workers:
            logger.warning(
                "Streaming with dataloader_num_workers > 0: the stream's position is not saved in the checkpoint; "
                "a resumed run skips the trained batches by reading them again."
            )
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            path = folder / STREAM_STATE_FILE.format(rank=args.process_index)
            path.write_text(json.dumps(self.batcher.state_dict()))


def restore_streaming_state(batcher: MaxFramesStreamBatcher, checkpoint: str | os.PathLike | None, args) -> bool:
    """Before `trainer.train(resume_from_checkpoint=checkpoint)`: loads the stream's state saved in `checkpoint` by
    [`StreamingStateCallback`] into `batcher` and sets `args.ignore_data_skip` (the stream resumes by itself, so the
    Trainer must not skip batches too). Returns False, changing nothing, when there is no checkpoint, no saved state
    for this process, or `args.ignore_data_skip` is already set (the user asked to start the data afresh)."""
    if checkpoint is None or args.ignore_data_skip:
        return False
    path = Path(checkpoint) / STREAM_STATE_FILE.format(rank=args.process_index)
    if not path.is_file():
        logger.warning(f"{checkpoint}: no saved stream position; the Trainer skips the trained batches, reading them.")
        return False
    batcher.load_state_dict(json.loads(path.read_text()))
    args.ignore_data_skip = True
    logger.info(f"Resuming the stream where {checkpoint} left it.")
    return True
