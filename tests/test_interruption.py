"""Interrupted training: SIGTERM saves a checkpoint and exits, SIGKILL during a save leaves the newest complete
checkpoint loadable, and either run resumed ends exactly where an uninterrupted run ends (weights and loss log)."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmavsr_training import checkpointing
from mmavsr_training.arguments import parse_args
from mmavsr_training.checkpointing import (
    INCOMPLETE_CHECKPOINTS_DIR,
    INCOMPLETE_MARKER,
    INTERRUPTED_EXIT_CODE,
    checkpoint_dirs,
    checkpoint_problem,
    last_complete_checkpoint,
    resume_checkpoint,
)
from mmavsr_training.run import main

from .test_training_script import SCRIPT, common_flags, tiny_preset, write_tiny_corpus


MAX_STEPS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return tiny_preset(tmp_path_factory.mktemp("preset") / "p.json", "audiovisual")


def training_flags(corpus, output_dir, preset, save_steps):
    """Time masks, training noise, random crops and dropout all active: resuming must restore every RNG."""
    return common_flags(corpus, output_dir, preset) + [
        "--train-file=train.csv",
        f"--max_steps={MAX_STEPS}",
        f"--save_steps={save_steps}",
        "--logging_steps=1",
        "--max-frames=24",
        "--train-snr",
        "0",
        "999999",
        "--learning_rate=0.003",
        "--warmup_steps=2",
    ]


def launch(arguments, **kwargs):
    """The script (or a wrapper around it) in its own process, its log on a pipe."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.Popen(
        [sys.executable, *map(str, arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=SCRIPT.parent,
        **kwargs,
    )


def trainer_state(output_dir):
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())


def losses(output_dir):
    return {
        entry["step"]: [entry["loss"], entry["grad_norm"]]
        for entry in trainer_state(output_dir)["log_history"]
        if "loss" in entry
    }


def evaluations(output_dir):
    history = trainer_state(output_dir)["log_history"]
    return [(entry["step"], entry["eval_wer"]) for entry in history if "eval_wer" in entry]


def assert_same_training(resumed_dir, straight_dir):
    straight = load_file(str(straight_dir / "model.safetensors"))
    resumed = load_file(str(resumed_dir / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)
    resumed, straight = losses(resumed_dir), losses(straight_dir)
    assert sorted(resumed) == sorted(straight) == list(range(1, MAX_STEPS + 1))
    for step, values in straight.items():
        assert resumed[step] == pytest.approx(values, abs=1e-5), f"step {step}"


def sigterm_after_first_step(flags):
    """The script run as a user runs it, SIGTERM once its first step is logged: (exit code, log)."""
    process = launch([SCRIPT, *flags])
    log = []
    for line in process.stdout:
        log.append(line)
        if "'loss'" in line:  # step 1 is done: training is under way
            process.send_signal(signal.SIGTERM)
            break
    log.append(process.communicate(timeout=300)[0])
    return process.returncode, "".join(log)


@pytest.fixture(scope="module")
def straight_run(corpus, preset, tmp_path_factory):
    """The uninterrupted reference run."""
    output_dir = tmp_path_factory.mktemp("straight")
    main(training_flags(corpus, output_dir, preset, save_steps=2))
    return output_dir


def test_sigterm_saves_a_checkpoint_exits_and_the_rerun_resumes(corpus, preset, straight_run, tmp_path):
    output_dir = tmp_path / "out"
    flags = training_flags(corpus, output_dir, preset, save_steps=100)  # no scheduled save before the end
    # as a user runs it: a progress bar and TensorBoard logs
    flags = [f for f in flags if f not in ("--disable_tqdm=true", "--report_to=none")] + ["--report_to=tensorboard"]
    returncode, log = sigterm_after_first_step(flags)
    assert returncode == INTERRUPTED_EXIT_CODE == 143, log
    assert "Traceback" not in log, log
    checkpoints = checkpoint_dirs(output_dir)
    assert len(checkpoints) == 1, log
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped_at < MAX_STEPS, log
    assert f"Stopped by SIGTERM after step {stopped_at}" in log
    assert checkpoint_problem(checkpoints[0]) is None
    assert not (output_dir / "model.safetensors").exists(), "an interrupted run must not pass for a finished one"
    assert f"{stopped_at}/{MAX_STEPS} [" in log, "no progress bar"
    assert list((output_dir / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"

    handler = signal.getsignal(signal.SIGTERM)
    main(flags)  # the same command again: resumes from the SIGTERM checkpoint
    assert signal.getsignal(signal.SIGTERM) is handler, "SIGTERM's handler outlived training"
    assert_same_training(output_dir, straight_run)


def test_sigterm_in_an_epoch_of_epoch_wise_validation_stops_without_decoding_and_resumes_exactly(
    corpus, preset, tmp_path
):
    """The main job's flags (validation WER every epoch, the best epoch kept): the cut-short epoch is neither decoded
    nor saved as an epoch (a preemption leaves seconds), and the resumed run keeps the epoch the straight run keeps."""

    def flags(output_dir):  # batches of at most 12 frames, one clip of the 4 (8 to 11 frames): 4 steps an epoch
        kept = [f for f in training_flags(corpus, output_dir, preset, save_steps=100) if not f.startswith("--save_")]
        return [f for f in kept if not f.startswith("--max-frames")] + [
            "--max-frames=12",
            "--val-file=test.csv",
            "--eval_strategy=epoch",
            "--save_strategy=epoch",
            "--metric_for_best_model=wer",
            "--load_best_model_at_end",
        ]

    straight = tmp_path / "straight"
    main(flags(straight))
    output_dir = tmp_path / "out"
    returncode, log = sigterm_after_first_step(flags(output_dir))
    assert returncode == INTERRUPTED_EXIT_CODE, log
    (checkpoint,) = checkpoint_dirs(output_dir)
    assert checkpoint.name in ("checkpoint-1", "checkpoint-2", "checkpoint-3"), log  # inside the first epoch
    assert "eval_wer" not in log and "Running Evaluation" not in log, log
    assert evaluations(checkpoint) == []

    main(flags(output_dir))
    assert [step for step, _ in evaluations(straight)] == [4, MAX_STEPS]
    assert evaluations(output_dir) == evaluations(straight)
    best = trainer_state(straight)["best_model_checkpoint"]
    assert Path(trainer_state(output_dir)["best_model_checkpoint"]).name == Path(best).name
    assert_same_training(output_dir, straight)


KILL_DURING_SAVE = """
import os, runpy, signal, sys
from mmavsr_training.trainer import AVSRSeq2SeqTrainer

save_rng_state = AVSRSeq2SeqTrainer._save_rng_state

def save_rng_state_then_die(self, output_dir):
    # the model, optimizer and scheduler of this checkpoint are on disk, its RNG and trainer state are not
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)

AVSRSeq2SeqTrainer._save_rng_state = save_rng_state_then_die
runpy.run_path({script!r}, run_name="__main__")
"""


def test_sigkill_during_a_save_leaves_the_last_checkpoint_loadable(corpus, preset, straight_run, tmp_path, caplog):
    output_dir = tmp_path / "out"
    flags = training_flags(corpus, output_dir, preset, save_steps=2)
    wrapper = tmp_path / "kill_during_save.py"
    wrapper.write_text(KILL_DURING_SAVE.format(script=str(SCRIPT), step=4))
    process = launch([wrapper, *flags])
    log = process.communicate(timeout=300)[0]
    assert process.returncode == -signal.SIGKILL, log

    # the killed save never reached checkpoint-4: only its staging folder, half-written, is there
    assert [c.name for c in checkpoint_dirs(output_dir)] == ["checkpoint-2"]
    half_written = output_dir / INCOMPLETE_CHECKPOINTS_DIR / "checkpoint-4"
    assert (half_written / "model.safetensors").is_file()
    assert (half_written / "optimizer.pt").is_file()
    assert not (half_written / "trainer_state.json").exists()

    with caplog.at_level(logging.WARNING, logger=checkpointing.logger.name):
        main(flags)  # the same command again
    assert f"Ignoring and deleting {half_written}" in caplog.text
    assert not half_written.exists()
    assert_same_training(output_dir, straight_run)


def test_half_written_checkpoints_are_skipped_with_a_warning(tmp_path, caplog):
    """Checkpoint folders from saves that were not atomic (older runs, other tools, `--enable_jit_checkpoint`)."""
    output_dir = tmp_path / "out"
    states = {
        "checkpoint-2": '{"global_step": 2}',
        "checkpoint-4": '{"global_step": 4}',
        "checkpoint-6": '{"global_st',  # cut short
        "checkpoint-8": None,  # no trainer_state.json
        "checkpoint-10": '{"global_step": 10}',
    }
    for name, state in states.items():
        (output_dir / name).mkdir(parents=True)
        if state is not None:
            (output_dir / name / "trainer_state.json").write_text(state)
    (output_dir / "checkpoint-10" / INCOMPLETE_MARKER).write_text("in progress")
    with caplog.at_level(logging.WARNING, logger=checkpointing.logger.name):
        assert last_complete_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-4")
    assert f"Ignoring {output_dir / 'checkpoint-10'}: its save never finished" in caplog.text
    assert f"Ignoring {output_dir / 'checkpoint-8'}: it has no trainer_state.json" in caplog.text
    assert f"Ignoring {output_dir / 'checkpoint-6'}: its trainer_state.json is cut short" in caplog.text
    assert "checkpoint-4:" not in caplog.text

    _, _, args = parse_args(
        [
            "--modality=video",
            "--train-file=t.csv",
            f"--output_dir={output_dir}",
            "--report_to=none",
        ]
    )
    assert resume_checkpoint(args.output_dir, args.resume_from_checkpoint) == str(output_dir / "checkpoint-4")
    args.resume_from_checkpoint = str(output_dir / "checkpoint-8")
    with pytest.raises(
        ValueError,
        match="checkpoint-8: cannot resume from it: it has no trainer_state.json",
    ):
        resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
