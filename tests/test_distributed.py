"""DDP: `torchrun --nproc_per_node 2` and `accelerate launch --multi_gpu --num_processes 2` (CPU processes, gloo) run
the training script on demo-corpus clips and match one process with the same global batch.

Two processes with batch b each equal one process with batch b and 2 gradient-accumulation steps to float precision
(same clips per step, gradients averaged, same BatchNorm batches). Against one process with batch 2b they differ
only by BatchNorm, which normalises each process's own b clips (no SyncBatchNorm on CPU): close, not equal.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from mmavsr_processing.demo_corpus import generate_demo_corpus
from mmavsr_training.builder import build_model
from mmavsr_training.presets import load_preset
from mmavsr_training.run import main

from .test_training_script import SCRIPT, tiny_preset


STEPS = 3  # 8 clips, global batch 4: the third step is in the second (reshuffled) epoch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Eight demo clips (all in train) and a tiny audio-visual preset without dropout or random crops, so that the
    runs differ only in how the batches are split."""
    root = tmp_path_factory.mktemp("distributed")
    generate_demo_corpus(
        root / "corpus",
        num_clips=8,
        seed=0,
        split_fractions=(1.0, 0.0, 0.0),
        num_workers=2,
        progress=False,
    )
    tiny_preset(root / "preset.json", "audiovisual", dropout=0.0, crop_size=24)
    return root


def flags(root, output_dir, batch_size, *extra):
    return [
        f"--config_name={root / 'preset.json'}",
        f"--root-dir={root / 'corpus'}",
        "--train-file=train.csv",
        f"--output_dir={output_dir}",
        f"--per_device_train_batch_size={batch_size}",
        f"--max_steps={STEPS}",
        "--logging_steps=1",
        "--save_strategy=no",
        "--time_masking=false",
        "--optim=sgd",  # updates proportional to the gradients (Adam would magnify tiny differences into sign flips)
        "--learning_rate=0.003",
        "--warmup_steps=0",
        "--seed=0",
        "--report_to=none",
        "--disable_tqdm=true",
        # without GPUs the script itself switches launched processes to the CPU (the case under test here); with
        # GPUs, keep to the CPU so that two processes never share one GPU
        *(["--use_cpu=true"] if torch.accelerator.is_available() else []),
        *extra,
    ]


@pytest.fixture(scope="module")
def one_process(setup):
    """The references, in this process: batch 2 with 2 accumulation steps, and batch 4."""
    main(flags(setup, setup / "accumulated", 2, "--gradient_accumulation_steps=2"))
    main(flags(setup, setup / "batch4", 4))
    return {"accumulated": setup / "accumulated", "batch4": setup / "batch4"}


def run_launcher(command, timeout=480):
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=SCRIPT.parent,
        timeout=timeout,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return log


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def trainable(state):
    return {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}


def losses(output_dir):
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def initial_weights(root):
    """The model main() starts from: seeded, then built from the preset."""
    set_seed(0)
    return trainable(build_model({}, load_preset(str(root / "preset.json"))[0]).state_dict())


def assert_matches_one_process(output_dir, one_process, root):
    weights = trainable(load_file(str(output_dir / "model.safetensors")))
    assert len(losses(output_dir)) == STEPS

    # == batch b with 2 accumulation steps, to float precision
    accumulated = trainable(load_file(str(one_process["accumulated"] / "model.safetensors")))
    for name, tensor in accumulated.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert losses(output_dir) == pytest.approx(losses(one_process["accumulated"]), rel=1e-5)

    # ~ batch 2b: the same clips per step; BatchNorm statistics over b instead of 2b clips
    assert losses(output_dir) == pytest.approx(losses(one_process["batch4"]), rel=5e-3)
    batch4 = trainable(load_file(str(one_process["batch4"] / "model.safetensors")))
    start = initial_weights(root)
    update = torch.cat([(weights[k] - start[k]).flatten() for k in start])
    update4 = torch.cat([(batch4[k] - start[k]).flatten() for k in start])
    assert torch.nn.functional.cosine_similarity(update, update4, dim=0) > 0.9
    assert update.norm() == pytest.approx(update4.norm().item(), rel=0.1)


# the training script with every processor save recorded (`RANK FOLDER` a line, in $SAVES_LOG)
RECORDING_SCRIPT = """
import os, sys
from mmavsr_processing import MMAVSRProcessor
save = MMAVSRProcessor.save_pretrained
def recorded(self, folder, *args, **kwargs):
    with open(os.environ["SAVES_LOG"], "a") as log:
        log.write(f"{os.environ.get('RANK', '0')} {folder}\\n")
    return save(self, folder, *args, **kwargs)
MMAVSRProcessor.save_pretrained = recorded
from mmavsr_training.run import cli
cli()
"""


def test_torchrun_two_cpu_processes_match_one_process(setup, one_process, monkeypatch):
    output_dir = setup / "torchrun"
    script = setup / "recording_script.py"
    script.write_text(RECORDING_SCRIPT)
    monkeypatch.setenv("SAVES_LOG", str(setup / "saves.log"))
    log = run_launcher(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            script,
        ]
        + flags(setup, output_dir, 2, "--gpus=4", "--num-nodes=1")
    )
    # the flags ask for 4 processes, the launcher started 2: a warning, and the launched world size wins
    assert "ask for 4 process(es) on 1 machine(s), but this run was launched with 2 process(es)" in log
    assert "continuing with the launched 2" in log
    # process 0 alone logs it, and alone writes the processor (checkpoints and the final folder)
    assert log.count("continuing with the launched 2") == 1
    saves = [line.split(" ", 1) for line in (setup / "saves.log").read_text().splitlines()]
    assert saves and {rank for rank, _ in saves} == {"0"}
    assert str(output_dir) in {folder for _, folder in saves}
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    assert_matches_one_process(output_dir, one_process, setup)


def test_accelerate_launch_two_cpu_processes_match_one_process(setup, one_process):
    output_dir = setup / "accelerate"
    # `--multi_gpu` picks Accelerate's torchrun-style launcher; on a machine without GPUs the script trains on the CPU
    # over gloo (`accelerate launch --cpu --num_processes 2` would start one process: its CPU launcher needs MPI)
    log = run_launcher(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes=2",
            "--num_machines=1",
            f"--main_process_port={free_port()}",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            SCRIPT,
        ]
        + flags(setup, output_dir, 2, "--gpus=2", "--num-nodes=1")
    )
    assert "ask for" not in log  # --gpus 2 --num-nodes 1 is what was launched
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in log
    assert_matches_one_process(output_dir, one_process, setup)
