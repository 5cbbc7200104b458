"""run_speech_recognition_avsr.py (`mmavsr_training.run.main`): the seed's command lines, training, evaluation, SNR tables, resume, averaging, and
the options it refuses; the package's builder, checkpointing and evaluation modules it runs on."""

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from safetensors.torch import load_file, save_file

from mmavsr_processing import MMAVSRTokenizer, write_audio, write_video
from mmavsr_training import builder
from mmavsr_training.arguments import parse_args
from mmavsr_training.checkpointing import average_last_checkpoints, average_state_dicts, checkpoint_dirs
from mmavsr_training.presets import PRESETS_DIR, load_preset, load_preset_training
from mmavsr_training.run import main
from mmavsr_training.trainer import check_world_size
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration, MMAVSRProcessor
from modeling_mmavsr.configuration_mmavsr import LEGACY_MODALITIES

from .common import StopAt, word_tokenizer


SCRIPT = Path(__file__).resolve().parent.parent / "run_speech_recognition_avsr.py"


WORDS = ["BIN", "BLUE", "AT", "NOW", "PLACE", "RED", "WITH", "GREEN"]


def tiny_preset(path, modality, dropout=None, crop_size=20):
    """A preset JSON of the demo presets' shape, shrunk to test size, with a small video processor (24x24 frames cropped
    to `crop_size`); `dropout` sets every dropout of the encoder and decoder (the configs' defaults otherwise)."""
    vision, audio = LEGACY_MODALITIES[modality]
    preset = dict(
        vision_encoder=vision,
        audio_encoder=audio,
        frontend_channels=4,
        frontend_layers=[1, 1, 1, 1],
        fusion_hidden_size=32,
        hidden_size=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        conv_kernel_size=3,
        ctc_weight=0.3,
        text_config=dict(
            d_model=32,
            num_hidden_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
        ),
        processor={
            "video_processor": {
                "size": {"height": 24, "width": 24},
                "crop_size": {"height": crop_size, "width": crop_size},
            }
        },
    )
    if dropout is not None:
        preset.update(encoder_dropout=dropout, positional_dropout=dropout, ctc_dropout=dropout)
        preset["text_config"].update(dropout=dropout, attention_dropout=dropout, positional_dropout=dropout)
    path.write_text(json.dumps(preset))
    return str(path)


def write_tiny_corpus(root):
    """A few short clips (noise video + noise audio) in auto_avsr's layout: ROOT/labels/*.csv, ROOT/demo/*.mp4|wav."""
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    generator = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        lines = []
        for index in range(count):
            frames = int(generator.integers(8, 12))
            relative = f"{split}/clip{index}.mp4"
            video = (generator.random((frames, 24, 24)) * 255).astype(np.uint8)
            wave = (0.1 * generator.standard_normal(frames * 640)).astype(np.float32)
            write_video(root / "demo" / relative, video)
            write_audio((root / "demo" / relative).with_suffix(".wav"), wave)
            text = " ".join(generator.choice(WORDS, 3))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            lines.append(f"demo,{relative},{frames},{' '.join(map(str, ids))}")
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def common_flags(corpus, output_dir, preset):
    return [
        f"--config_name={preset}",
        f"--root-dir={corpus}",
        f"--output_dir={output_dir}",
        "--report_to=none",
        "--per_device_train_batch_size=2",
        "--per_device_eval_batch_size=2",
        "--seed=0",
        "--disable_tqdm=true",
        "--generation_num_beams=2",
    ]


# ------------------------------------------------------------------------------------------------ arguments


def test_seed_train_command_maps_onto_trainer_arguments():
    model_args, data_args, args = parse_args(
        [
            "--exp-dir=exp",
            "--exp-name=vsr",
            "--modality=video",
            "--root-dir=data",
            "--train-file=train.csv",
            "--num-nodes=4",
            "--val-file=val.csv",
            "--test-file=test.csv",
            "--gpus=8",
            "--pretrained-model-path=pre",
            "--transfer-frontend",
            "--warmup-epochs=5",
            "--max-epochs=75",
            "--max-frames=1600",
            "--lr=0.001",
            "--weight-decay=0.03",
            "--ctc-weight=0.1",
            "--train-num-buckets=400",
            "--ckpt-path=exp/vsr/checkpoint-10",
            "--debug",
        ]
    )
    assert args.output_dir == "exp/vsr"
    assert (args.num_train_epochs, args.learning_rate, args.weight_decay) == (
        75,
        1e-3,
        0.03,
    )
    assert args.warmup_steps == pytest.approx(5 / 75)
    assert args.resume_from_checkpoint == "exp/vsr/checkpoint-10"
    assert args.log_level == "debug"
    assert (args.gpus, args.num_nodes) == (8, 4)
    assert (args.do_train, args.do_eval, args.do_predict) == (True, True, True)
    assert (
        model_args.modality,
        model_args.model_name_or_path,
        model_args.transfer_frontend,
    ) == ("video", "pre", True)
    assert model_args.ctc_weight == 0.1
    assert (data_args.root_dir, data_args.train_file, data_args.max_frames) == (
        "data",
        "train.csv",
        1600,
    )
    assert data_args.train_num_buckets == 400


def test_seed_encoder_decoder_and_qlora_flags():
    model_args, data_args, _ = parse_args(
        [
            "--vision-encoder",
            "vit",
            "--audio-encoder",
            "whisper",
            "--decoder",
            "llm",
            "--fusion-type",
            "gated",
            "--vision-model-name",
            "v",
            "--audio-model-name",
            "a",
            "--decoder-model-name",
            "d",
            "--unfreeze-vision",
            "--unfreeze-audio",
            "--use-qlora",
            "--qlora-r",
            "8",
            "--qlora-alpha",
            "16",
            "--root-dir",
            "r",
            "--train-file",
            "t.csv",
            "--exp-dir",
            "e",
            "--exp-name",
            "n",
            "--output-json",
            "out.json",
        ]
    )
    assert (
        model_args.vision_encoder,
        model_args.audio_encoder,
        model_args.decoder,
    ) == ("vit", "whisper", "llm")
    assert (model_args.fusion_type, model_args.vision_model_name) == ("gated", "v")
    assert (model_args.audio_model_name, model_args.decoder_model_name) == ("a", "d")
    assert model_args.unfreeze_vision and model_args.unfreeze_audio and model_args.use_qlora
    assert (model_args.qlora_r, model_args.qlora_alpha) == (8, 16)
    overrides = builder.config_overrides(dataclasses.asdict(model_args))
    assert overrides["fusion_type"] == "gated" and overrides["use_qlora"] and overrides["qlora_r"] == 8
    assert overrides["freeze_vision_encoder"] is False and overrides["freeze_audio_encoder"] is False
    assert data_args.output_json == "out.json"


@pytest.mark.parametrize(
    "files, stages",
    [
        (["--test-file=test.csv"], (False, False, True)),  # auto_avsr's eval.py: the test split, test_* results
        (["--val-file=val.csv"], (False, True, False)),
        (["--val-file=val.csv", "--test-file=test.csv"], (False, True, True)),  # both decoded, neither dropped
    ],
)
def test_seed_eval_command_chooses_evaluation(files, stages):
    model_args, data_args, args = parse_args(
        [
            "--modality=audio",
            "--root-dir=data",
            *files,
            "--pretrained-model-path=exp/asr/model_avg_10",
            "--decode-snr-target",
            "999999",
            "10",
            "5",
            "0",
            "-5",
        ]
    )
    assert (args.do_train, args.do_eval, args.do_predict) == stages
    assert model_args.model_name_or_path == "exp/asr/model_avg_10"
    assert data_args.decode_snr_target == [999999, 10, 5, 0, -5]
    assert args.predict_with_generate


def test_arguments_from_json_and_yaml(tmp_path):
    values = {
        "modality": "video",
        "root_dir": "d",
        "train_file": "t.csv",
        "output_dir": str(tmp_path / "o"),
        "max_epochs": 3,
        "decode_snr_target": [999999, 0],
    }
    (tmp_path / "args.json").write_text(json.dumps(values))
    (tmp_path / "args.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()))
    for name in ("args.json", "args.yaml"):
        model_args, data_args, args = parse_args([str(tmp_path / name)])
        assert (model_args.modality, args.num_train_epochs, args.do_train) == (
            "video",
            3,
            True,
        )
        assert data_args.decode_snr_target == [999999, 0]


def test_a_presets_training_recipe_is_the_default_and_every_flag_overrides_it(tmp_path):
    """The LLM presets carry the LLM job's recipe (their `training` section): `--config_name` alone trains with it,
    on the command line and in an argument file, and each flag given overrides its field; presets without one keep
    the Trainer's defaults."""
    base = ["--root-dir=d", "--train-file=t.csv", f"--output_dir={tmp_path / 'o'}"]
    _, data_args, args = parse_args(["--config_name=demo-asr-logmel-llm-qlora"] + base)
    assert (args.learning_rate, args.lr_scheduler_type, args.warmup_steps, args.weight_decay, args.max_grad_norm) == (
        5e-4,
        "cosine",
        0.2,
        0.01,
        5.0,
    )
    assert args.projector_lr_scale == 10.0
    assert (args.per_device_train_batch_size, args.num_train_epochs, data_args.time_masking) == (8, 1, False)
    _, data_args, args = parse_args(
        [
            "--config-name",
            "demo-avsr-resnet-logmel-llm-qlora",
            "--lr=1e-3",
            "--warmup_steps=0",
            "--max-epochs=3",
            "--time_masking=true",
            "--per_device_train_batch_size=2",
            "--projector_lr_scale=1",
        ]
        + base
    )
    assert (args.learning_rate, args.warmup_steps, args.num_train_epochs, args.per_device_train_batch_size) == (
        1e-3,
        0,
        3,
        2,
    )
    assert args.projector_lr_scale == 1.0
    assert data_args.time_masking and args.lr_scheduler_type == "cosine"  # the rest of the recipe stays
    (tmp_path / "args.json").write_text(
        json.dumps(
            {
                "config_name": "demo-asr-logmel-llm-qlora",
                "root_dir": "d",
                "train_file": "t.csv",
                "output_dir": str(tmp_path / "o"),
                "learning_rate": 2e-4,
            }
        )
    )
    _, data_args, args = parse_args([str(tmp_path / "args.json")])
    assert (args.learning_rate, args.warmup_steps, data_args.time_masking) == (2e-4, 0.2, False)
    _, data_args, args = parse_args(["--config_name=demo-asr-resnet1d"] + base)
    assert (args.learning_rate, args.warmup_steps, data_args.time_masking) == (5e-5, 0, True)


def test_help_with_a_preset_shows_its_recipe_as_the_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config_name", "demo-vsr-resnet", "--help"])
    with_preset = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    without = " ".join(capsys.readouterr().out.split())
    epochs = "Total number of training epochs to perform. (default: {})"
    assert epochs.format(load_preset_training("demo-vsr-resnet")["num_train_epochs"]) in with_preset
    assert epochs.format(3.0) in without


JOBS = {  # each job script and the presets it trains
    "main_job.sh": ("demo-asr-logmel", "demo-vsr-resnet", "demo-avsr-resnet-logmel"),
    "llm_job.sh": ("demo-asr-logmel-llm-qlora", "demo-avsr-resnet-logmel-llm-qlora"),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_jobs_train_their_presets_recipes_without_repeating_them(job):
    """Each job trains its presets with their `training` recipe: the job script is valid bash and gives none of the
    recipe's fields as a flag (one place for the recipe: running the script with the preset trains the same model)."""
    path = SCRIPT.parent / "scripts" / job
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    for preset in JOBS[job]:
        assert f" {preset} " in text
        recipe = load_preset_training(preset)
        assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size"} <= set(recipe)
        assert not [name for name in recipe if f"--{name} " in text]
    # auto_avsr's names for them neither, but where a variable the user sets asks for it: ${LLM_LR:+--lr "$LLM_LR"}
    fixed = re.sub(r"\$\{\w+:\+[^}]*\}", "", text)
    assert not [alias for alias in ("--lr ", "--max-epochs ", "--weight-decay ", "--warmup-epochs ") if alias in fixed]


def test_the_jobs_training_step_passes_epochs_only_when_given(tmp_path):
    """scripts/train_step.sh's `train NAME PRESET EPOCHS FLAGS...` runs the training script with the preset, the
    job's common flags and its own; an empty EPOCHS leaves the preset's epochs, a given one overrides them."""
    shell = f"""
        WORK={tmp_path}; start=$(date +%s); common=(--root-dir corpus --seed 0)
        . {SCRIPT.parent / "scripts" / "train_step.sh"}
        python() {{ echo "$@"; }}  # records the command line the job would run
        train asr demo-asr-logmel "" --train-snr 999999 0
        train vsr demo-vsr-resnet 3
    """
    subprocess.run(["bash", "-c", shell], check=True)
    assert (tmp_path / "asr.log").read_text().split() == [
        "run_speech_recognition_avsr.py",
        "--config_name",
        "demo-asr-logmel",
        "--exp-name",
        "asr",
        "--root-dir",
        "corpus",
        "--seed",
        "0",
        "--train-snr",
        "999999",
        "0",
    ]
    assert "--max-epochs 3 --root-dir" in (tmp_path / "vsr.log").read_text()


def test_a_training_recipe_naming_no_argument_is_refused(tmp_path):
    preset = json.loads((PRESETS_DIR / "demo-asr-logmel-llm-qlora.json").read_text())
    preset["training"]["learning_rat"] = 1e-3
    (tmp_path / "typo.json").write_text(json.dumps(preset))
    with pytest.raises(ValueError, match=r"typo.json'.*\['learning_rat'\].*no data or training arguments"):
        parse_args([f"--config_name={tmp_path / 'typo.json'}", "--root-dir=d", "--train-file=t.csv"])
    preset["training"] = [1e-3]
    (tmp_path / "list.json").write_text(json.dumps(preset))
    with pytest.raises(ValueError, match="'training' is a JSON object"):
        parse_args([f"--config_name={tmp_path / 'list.json'}", "--root-dir=d", "--train-file=t.csv"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml: an object of argument names"):
        parse_args([str(tmp_path / "list.yaml")])
    (tmp_path / "broken.json").write_text('{"root_dir": "d",')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON \(Expecting"):
        parse_args([str(tmp_path / "broken.json")])


def test_modality_and_flag_conflicts_are_refused():
    with pytest.raises(ValueError, match="--modality video has no use for --audio-encoder"):
        builder.build_model({"modality": "video", "audio_encoder": "resnet1d"})
    with pytest.raises(ValueError, match="--output_dir .* disagree"):
        parse_args(
            [
                "--exp-dir",
                "e",
                "--exp-name",
                "n",
                "--output_dir",
                "other",
                "--test-file",
                "t",
            ]
        )
    with pytest.raises(ValueError, match="Nothing to do"):
        parse_args(["--modality", "video"])
    with pytest.raises(ValueError, match="an LLM decoder"):
        builder.build_model({"modality": "video", "use_qlora": True})


def test_qlora_flags_reach_the_config():
    model_args = parse_args(
        [
            "--modality",
            "video",
            "--decoder",
            "llm",
            "--use-qlora",
            "--qlora-r",
            "4",
            "--test-file",
            "t",
        ]
    )[0]
    overrides = builder.config_overrides(dataclasses.asdict(model_args))
    assert (overrides["decoder_type"], overrides["use_qlora"], overrides["qlora_r"]) == ("llm", True, 4)
    assert "qlora_alpha" not in overrides  # the config's default
    # --use-lora: LoRA over the full-precision LLM (the config's `use_lora`), the same rank flags
    flags = ["--modality=audio", "--decoder=llm", "--use-lora", "--qlora-alpha=8", "--test-file=t"]
    model_args = parse_args(flags)[0]
    overrides = builder.config_overrides(dataclasses.asdict(model_args))
    assert (overrides["use_lora"], overrides["qlora_alpha"], "use_qlora" in overrides) == (True, 8, False)
    assert MMAVSRConfig(**{**overrides, "text_config": {"model_type": "llama"}}).use_lora


def test_world_size_flags_that_disagree_with_the_launcher_warn(caplog, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, _, args = parse_args(["--modality", "video", "--test-file", "t", "--gpus", "8", "--num-nodes", "4"])
    with caplog.at_level(logging.WARNING, logger="mmavsr_training.trainer"):
        check_world_size(args)
    assert "launched with 1 process(es) on 1 machine(s)" in caplog.text
    assert "torchrun --nnodes 4 --nproc_per_node 8" in caplog.text
    caplog.clear()
    _, _, args = parse_args(["--modality", "video", "--test-file", "t", "--gpus", "1", "--num-nodes", "1"])
    with caplog.at_level(logging.WARNING, logger="mmavsr_training.trainer"):
        check_world_size(args)
    # (other records may appear: an earlier test's run of the script can leave transformers logging at INFO)
    assert not [record for record in caplog.records if record.name == "mmavsr_training.trainer"]


# ------------------------------------------------------------------------------------------------ clear errors


def test_missing_files_and_folders_give_clear_errors(corpus, tmp_path):
    preset = tiny_preset(tmp_path / "p.json", "video")
    flags = common_flags(corpus, tmp_path / "out", preset)
    with pytest.raises(FileNotFoundError, match="--root-dir .*nowhere: no such directory"):
        main(flags + [f"--root-dir={tmp_path / 'nowhere'}", "--test-file=test.csv"])
    with pytest.raises(FileNotFoundError, match="--test-file missing.csv: not found"):
        main(flags + ["--test-file=missing.csv"])
    with pytest.raises(FileNotFoundError, match="--pretrained-model-path .*absent: no such model"):
        main(flags + ["--test-file=test.csv", f"--pretrained-model-path={tmp_path / 'absent'}"])
    with pytest.raises(FileNotFoundError, match="--config_name 'no-such-preset'"):
        main(
            [
                "--config_name=no-such-preset",
                f"--root-dir={corpus}",
                "--test-file=test.csv",
            ]
        )
    with pytest.raises(FileNotFoundError, match="--noise-file .*none.wav: no such file"):
        main(
            flags[1:]
            + [
                f"--config_name={tiny_preset(tmp_path / 'a.json', 'audio')}",
                "--test-file=test.csv",
                "--decode-snr-target=0",
                f"--noise-file={tmp_path / 'none.wav'}",
            ]
        )


def save_tiny_model(folder, modality, **fields):
    preset = json.loads(Path(tiny_preset(Path(str(folder) + ".json"), modality)).read_text())
    preset.pop("processor")
    torch.manual_seed(0)
    MMAVSRForConditionalGeneration(MMAVSRConfig(**{**preset, **fields})).save_pretrained(folder)
    return str(folder)


def test_flags_that_disagree_with_a_saved_model_are_refused_before_loading(tmp_path):
    """--pretrained-model-path keeps the saved architecture: each model flag is honoured or refused, naming the flag
    and the checkpoint's value; the refusal comes before any data is read (the --root-dir here does not exist)."""
    audio = save_tiny_model(tmp_path / "audio", "audio")
    flags = [f"--pretrained-model-path={audio}", f"--root-dir={tmp_path / 'nowhere'}", "--test-file=test.csv"]
    refused = {
        "--modality=video": r"--modality video disagrees with the checkpoint at .*audio \(audio\); drop the flag",
        "--audio-encoder=whisper": r"--audio-encoder whisper disagrees with the checkpoint at .*audio \(resnet1d\)",
        "--vision-encoder=resnet": r"--vision-encoder resnet disagrees with the checkpoint at .*audio \(None\)",
        "--decoder=llm": r"--decoder llm disagrees with the checkpoint at .*audio \(transformer\)",
        "--fusion-type=gated": r"--fusion-type gated disagrees with the checkpoint at .*\(audio-only: no fusion\)",
        "--decoder-model-name=some/llm": r"--decoder-model-name some/llm disagrees with the checkpoint .*\(None\)",
        "--use-qlora": r"--use-qlora \(with use_qlora=True, qlora_r=16, qlora_alpha=32\) disagrees with the "
        r"checkpoint at .*audio \(use_qlora=False, qlora_r=16, qlora_alpha=32\)",
        f"--config_name={tiny_preset(tmp_path / 'p.json', 'audio')}": r"--config_name .*p.json builds a new model, "
        r"--pretrained-model-path .*audio loads a saved one",
        "--train_vocabulary_size=40": r"--train_vocabulary_size trains a new vocabulary, but the model at .*audio",
        "--qlora-r=8": r"--qlora-r 8 sets the LoRA adapters of --use-qlora or --use-lora",
        f"--init_from_models={audio}": "use one or the other",
    }
    for flag, message in refused.items():
        with pytest.raises(ValueError, match=message):
            main(flags + [flag])
    # the same choices that agree with the checkpoint pass; --ctc-weight and --unfreeze-* are honoured
    loaded = builder.load_pretrained(
        audio,
        {
            "modality": "audio",
            "audio_encoder": "resnet1d",
            "decoder": "transformer",
            "ctc_weight": 0.5,
            "unfreeze_audio": True,
        },
    )
    assert (loaded.config.ctc_weight, loaded.config.freeze_audio_encoder) == (0.5, False)


def test_flags_that_disagree_are_a_usage_error_on_the_command_line(tmp_path):
    """As argparse refuses a bad command line: one line on stderr, `PROG: error: ...`, exit status 2, no traceback."""
    audio = save_tiny_model(tmp_path / "audio", "audio")
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--pretrained-model-path={audio}",
            f"--root-dir={tmp_path}",
            "--test-file=test.csv",
            "--modality=video",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert lines == [
        f"run_speech_recognition_avsr.py: error: --modality video disagrees with the checkpoint at "
        f"{audio} (audio); drop the flag, or start a new model from its weights with --init_from_models or "
        "--transfer-frontend."
    ]
    assert "Traceback" not in done.stderr


def test_transfer_flags_and_audio_flags_on_a_video_model_are_refused(corpus, tmp_path):
    video = save_tiny_model(tmp_path / "video", "video")
    with pytest.raises(ValueError, match="--transfer-frontend copies the frontends, --transfer-encoder the whole"):
        main(
            [
                f"--pretrained-model-path={video}",
                "--transfer-frontend",
                "--transfer-encoder",
                f"--root-dir={tmp_path / 'nowhere'}",
                "--train-file=train.csv",
            ]
        )
    flags = common_flags(corpus, tmp_path / "out", tiny_preset(tmp_path / "p.json", "video"))
    with pytest.raises(ValueError, match="--train-snr 0 999999: noise is added to the audio, and this video model"):
        main(flags + ["--train-file=train.csv", "--train-snr", "0", "999999"])
    with pytest.raises(ValueError, match="--noise-file .*noise.wav: noise is added to the audio, and this video"):
        main(flags + ["--test-file=test.csv", f"--noise-file={tmp_path / 'noise.wav'}"])
    with pytest.raises(ValueError, match="--boundary_jitter_s must be a number of seconds >= 0, got -0.1"):
        main(flags + ["--train-file=train.csv", "--boundary_jitter_s=-0.1"])
    assert not (tmp_path / "out").exists(), "a refused run must not start training"
    # the same flags on a model with audio are taken
    for modality in ("audio", "audiovisual"):
        choices = {"config_name": tiny_preset(tmp_path / f"{modality}.json", modality)}
        model = builder.build_model(choices, load_preset(choices["config_name"])[0])
        assert "audio" in builder.modalities_of(model.config)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.smoke
def test_train_average_then_evaluate_like_the_seed(corpus, tmp_path, monkeypatch):
    """train.py-style training with model_avg_2, then an eval.py-style run of the averaged model at two SNRs."""
    preset = tiny_preset(tmp_path / "p.json", "audiovisual")
    out = tmp_path / "exp" / "av"
    results = main(
        [
            f"--config_name={preset}",
            f"--root-dir={corpus}",
            f"--exp-dir={tmp_path / 'exp'}",
            "--exp-name=av",
            "--train-file=train.csv",
            "--val-file=test.csv",
            "--max-epochs=2",
            "--save_strategy=epoch",
            "--average_checkpoints=2",
            "--train-snr",
            "0",
            "999999",
            "--boundary_jitter_s=0.2",
            "--per_device_train_batch_size=2",
            "--generation_num_beams=2",
            "--disable_tqdm=true",
        ]
    )
    assert np.isfinite(results["eval_wer"]) and results["eval_wer"] >= 0
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_wer"] == pytest.approx(results["eval_wer"])
    assert list((out / "runs").rglob("events.out.tfevents.*")), "TensorBoard logs are missing"

    # model_avg_2 is the mean of the last two checkpoints, BatchNorm statistics included
    checkpoints = checkpoint_dirs(out)
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    first, second = (load_file(str(c / "model.safetensors")) for c in checkpoints)
    averaged = load_file(str(out / "model_avg_2" / "model.safetensors"))
    name = next(k for k in averaged if k.endswith("running_mean"))
    torch.testing.assert_close(averaged[name], (first[name] + second[name]) / 2)

    # eval.py-style: evaluation chosen by the flags, a WER table over SNRs, every utterance in --output-json; its
    # TensorBoard logs go to its output folder, not to ./runs where it was started
    monkeypatch.chdir(tmp_path / "exp")
    hypotheses = tmp_path / "hyp.json"
    results = main(
        [
            "--modality=audiovisual",
            f"--root-dir={corpus}",
            "--test-file=test.csv",
            f"--pretrained-model-path={out / 'model_avg_2'}",
            f"--output_dir={tmp_path / 'eval'}",
            "--decode-snr-target",
            "999999",
            "0",
            f"--output-json={hypotheses}",
            "--generation_num_beams=2",
        ]
    )
    assert list((tmp_path / "eval" / "runs").rglob("events.out.tfevents.*"))
    assert not (tmp_path / "exp" / "runs").exists()
    table = json.loads((tmp_path / "eval" / "test_wer_table.json").read_text())  # the test file's, named so
    assert [row["condition"] for row in table] == ["clean", "snr0"]
    plot = imread(tmp_path / "eval" / "test_wer_table.png")  # the table's plot beside it, a readable PNG
    assert plot.ndim == 3 and plot.shape[0] > 100 and plot.shape[1] > 100
    assert not list((tmp_path / "eval").glob("eval_*"))
    assert results["test_clean_loss"] != results["test_snr0_loss"], "the 0 dB condition was not noisier"
    decoded = json.loads(hypotheses.read_text())[0]["conditions"]
    references = [u["reference"] for u in decoded[0]["utterances"]]
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    expected = [
        tokenizer.decode([int(t) for t in line.split(",")[3].split()])
        for line in (corpus / "labels" / "test.csv").read_text().splitlines()
    ]
    assert sorted(references) == sorted(expected)
    assert all(isinstance(u["hypothesis"], str) for u in decoded[1]["utterances"])


def test_video_only_decoding_through_the_trainer(corpus, tmp_path, capsys):
    """Seq2SeqTrainer.prediction_step hands video-only batches (no input_features) to generate(); a word vocabulary
    trained on the transcripts replaces auto_avsr's and is saved with the model."""
    preset = tiny_preset(tmp_path / "p.json", "video")
    results = main(
        common_flags(corpus, tmp_path / "out", preset)
        + [
            "--train-file=train.csv",
            "--test-file=test.csv",
            "--do_train",
            "--do_predict",
            "--max_steps=1",
            "--train_vocabulary_size=40",
            "--train_vocabulary_type=word",
        ]
    )
    assert np.isfinite(results["test_wer"])
    saved = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "out")
    tokenizer = MMAVSRProcessor.from_pretrained(tmp_path / "out").tokenizer
    assert saved.config.vocab_size == tokenizer.vocab_size < 40
    assert saved.config.text_config.eos_token_id == tokenizer.eos_token_id == tokenizer.vocab_size - 1
    assert len(tokenizer.tokenize("BLUE AT NOW")) == 3
    assert "WER of video on 2 utterances (test)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "test_results.json").read_text())["test_wer"] == results["test_wer"]


def tiny_llm_folder(path, lowercase: bool = False) -> str:
    """A pretrained LLM as users give --decoder-model-name: a 1-layer random Llama and a word-level tokenizer (of
    the corpus' words, or of them in lower case)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer([word.lower() if lowercase else word for word in WORDS])
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("ctc_vocabulary", ["separate", "decoder"])
def test_llm_decoder_trains_its_ctc_head_and_decodes_through_the_script(corpus, tmp_path, ctc_vocabulary):
    """--decoder llm --decoder-model-name: labels from the LLM's own tokenizer; the CTC head trains on auto_avsr's
    units (`ctc_labels` from the collator) or on the LLM's tokens, which joint CTC decoding then also uses."""
    preset = json.loads(Path(tiny_preset(tmp_path / "p.json", "audio")).read_text())
    del preset["text_config"]
    preset.update(
        decoder_type="llm", decoder_model_name=tiny_llm_folder(tmp_path / "llm"), ctc_vocabulary=ctc_vocabulary
    )
    (tmp_path / "p.json").write_text(json.dumps(preset))
    torch.manual_seed(0)
    initial = (
        MMAVSRForConditionalGeneration.from_pretrained_components(
            **{k: v for k, v in preset.items() if k != "processor"}
        )
        .ctc_head.ctc_lo.weight.detach()
        .clone()
    )
    decoding = ["--decode_ctc_weight=0.4"] if ctc_vocabulary == "decoder" else []
    results = main(
        common_flags(corpus, tmp_path / "out", str(tmp_path / "p.json"))
        + ["--train-file=train.csv", "--test-file=test.csv", "--do_train", "--do_predict", "--max_steps=2"]
        + decoding
    )
    assert np.isfinite(results["test_wer"]) and np.isfinite(results["train_loss"])
    with pytest.raises(ValueError, match="writes with its own tokenizer"):
        main(
            common_flags(corpus, tmp_path / "out2", str(tmp_path / "p.json"))
            + ["--train-file=train.csv", "--max_steps=1", "--train_vocabulary_size=20"]
        )
    saved = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert saved.config.ctc_vocabulary == ctc_vocabulary
    assert saved.ctc_head.ctc_lo.weight.shape == initial.shape
    assert saved.ctc_head.ctc_lo.out_features == (5049 if ctc_vocabulary == "separate" else len(WORDS) + 4)
    assert not torch.equal(saved.ctc_head.ctc_lo.weight, initial)  # the CTC loss reached the head
    processor = MMAVSRProcessor.from_pretrained(tmp_path / "out")
    assert processor(text="BIN AT NOW")["labels"].tolist() == [[3, 5, 6, 2]]  # the LLM's ids, then its eos


def test_audio_visual_model_starts_from_an_audio_and_a_video_model(corpus, tmp_path, caplog):
    """--init_from_models: frontends from each unimodal model, the Conformer and decoder from the first, a new fusion;
    output layers only from a model with the same vocabulary."""
    vocabulary = ["--train_vocabulary_size=40", "--train_vocabulary_type=word"]
    for modality in ("audio", "video"):
        preset = tiny_preset(tmp_path / f"{modality}.json", modality)
        main(
            common_flags(corpus, tmp_path / modality, preset) + ["--train-file=train.csv", "--max_steps=1"] + vocabulary
        )
    audio, video = (
        MMAVSRForConditionalGeneration.from_pretrained(tmp_path / m).state_dict() for m in ("audio", "video")
    )
    sources = [str(tmp_path / "audio"), str(tmp_path / "video")]
    flags = common_flags(corpus, tmp_path / "av", tiny_preset(tmp_path / "av.json", "audiovisual"))
    choices = {"init_from_models": sources}
    preset = load_preset(str(tmp_path / "av.json"))[0]

    # the word vocabulary the script trains from the same transcripts is the unimodal models' one
    processor = MMAVSRProcessor.from_pretrained(tmp_path / "audio")
    model = builder.build_model(choices, preset, processor.tokenizer)
    builder.init_from_models(model, processor, sources)
    for name, tensor in model.state_dict().items():
        if name.startswith("model.encoder.vision_frontend."):
            assert torch.equal(tensor, video[name]), name
        elif name.startswith("model.encoder.fusion."):
            assert name not in audio and name not in video
        else:  # audio frontend, Conformer, decoder, output layers
            assert torch.equal(tensor, audio[name]), name

    # another vocabulary (auto_avsr's): the output layers and token embeddings start new, the rest is taken
    model = builder.build_model(choices, preset)
    initial_head = model.lm_head.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger=builder.logger.name):
        builder.init_from_models(model, builder.build_processor(model.config), sources)
    assert "another vocabulary" in caplog.text
    assert torch.equal(model.lm_head.weight, initial_head)
    name = "model.encoder.conformer.layers.0.feed_forward.w_1.weight"
    assert torch.equal(model.state_dict()[name], audio[name])

    # through the script: the audio-visual run starts from both and trains
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=builder.logger.name):
        results = main(flags + ["--train-file=train.csv", "--max_steps=1", "--init_from_models", *sources] + vocabulary)
    assert np.isfinite(results["train_loss"])
    assert "--init_from_models: new: model.encoder.fusion" in caplog.text
    with pytest.raises(ValueError, match="use one or the other"):
        main(flags + ["--init_from_models", *sources, f"--pretrained-model-path={sources[0]}", "--test-file=test.csv"])


def test_validation_wer_during_training_keeps_the_best_checkpoint(corpus, tmp_path):
    """--eval_strategy decodes the validation split during training and scores its WER; --metric_for_best_model wer
    (lower is better without --greater_is_better) with --load_best_model_at_end ends with the best checkpoint's
    weights. Without --val-file it is refused before training (the test split never chooses the model)."""
    out = tmp_path / "out"
    flags = common_flags(corpus, out, tiny_preset(tmp_path / "p.json", "audio")) + [
        "--train-file=train.csv",
        "--max_steps=3",
        "--eval_strategy=steps",
        "--eval_steps=1",
        "--save_steps=1",
        "--metric_for_best_model=wer",
        "--load_best_model_at_end",
        "--learning_rate=0.01",
        "--decode_ctc_weight=0.3",
    ]
    with pytest.raises(ValueError, match="--eval_strategy steps evaluates the model during training on the validation"):
        main(flags + ["--test-file=test.csv"])
    assert not out.exists()
    results = main(flags + ["--val-file=test.csv"])
    state = json.loads((out / "trainer_state.json").read_text())
    wers = {entry["step"]: entry["eval_wer"] for entry in state["log_history"] if "eval_wer" in entry}
    assert sorted(wers) == [1, 2, 3]
    best_step = min(wers, key=lambda step: (wers[step], step))  # the first of equal WERs stays the best
    assert best_step < 3, "the last checkpoint is the best: this run cannot tell --load_best_model_at_end apart"
    assert state["best_metric"] == wers[best_step] == min(wers.values())
    assert state["best_model_checkpoint"] == str(out / f"checkpoint-{best_step}")
    final = load_file(str(out / "model.safetensors"))
    for step in wers:
        checkpoint = load_file(str(out / f"checkpoint-{step}" / "model.safetensors"))
        same = all(torch.equal(final[name], tensor) for name, tensor in checkpoint.items())
        assert same == (step == best_step), f"the final model {'is not' if same else 'is'} checkpoint-{step}"
    assert results["eval_wer"] == pytest.approx(wers[best_step])  # the final evaluation decodes the best model
    # evaluating leaves the model's generation settings as they were: no max_length (Seq2SeqTrainer's default of 20,
    # which generate() would then warn about at every batch) lands in the saved generation configs
    for folder in [out, *(out / f"checkpoint-{step}" for step in wers)]:
        saved = json.loads((folder / "generation_config.json").read_text())
        assert "max_length" not in saved and "num_beams" not in saved, folder


def test_resumed_run_ends_where_an_uninterrupted_run_ends(corpus, tmp_path):
    """6 steps straight == 3 steps, stop, resume to 6 (time masks, noise, random crops and dropout all active)."""
    preset = tiny_preset(tmp_path / "p.json", "audiovisual")

    def run(output_dir, callbacks=None):
        flags = common_flags(corpus, output_dir, preset) + [
            "--train-file=train.csv",
            "--max_steps=6",
            "--save_steps=3",
            "--max-frames=24",
            "--train-snr",
            "0",
            "999999",
            "--learning_rate=0.003",
            "--warmup_steps=2",
        ]
        main(flags, callbacks=callbacks)

    run(tmp_path / "straight")
    run(tmp_path / "resumed", callbacks=[StopAt(3)])
    interrupted = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert checkpoint_dirs(tmp_path / "resumed")[-1].name == "checkpoint-3"
    run(tmp_path / "resumed")  # finds checkpoint-3 in the output folder and resumes from it
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert any(not torch.equal(interrupted[k], resumed[k]) for k in resumed), "the resumed run did not train"
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_average_state_dicts_means_floats_and_keeps_the_largest_counter(tmp_path):
    states = [
        {
            "w": torch.tensor([1.0, 2.0]),
            "bn.running_var": torch.tensor([1.0]),
            "bn.num_batches_tracked": torch.tensor(3),
        },
        {
            "w": torch.tensor([3.0, 6.0]),
            "bn.running_var": torch.tensor([3.0]),
            "bn.num_batches_tracked": torch.tensor(7),
        },
    ]
    paths = []
    for index, state in enumerate(states):
        paths.append(tmp_path / f"{index}.safetensors")
        save_file(state, str(paths[-1]))
    averaged = average_state_dicts(paths)
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(averaged["bn.running_var"], torch.tensor([2.0]))
    assert averaged["bn.num_batches_tracked"].item() == 7
    assert averaged["bn.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="missing"):
        average_state_dicts([tmp_path / "absent.safetensors"])


def test_average_last_checkpoints_loads_into_the_model(tmp_path):
    torch.manual_seed(0)
    preset = json.loads(Path(tiny_preset(tmp_path / "p.json", "video")).read_text())
    preset.pop("processor")
    model = MMAVSRForConditionalGeneration(MMAVSRConfig(**preset))
    for step, scale in ((1, 1.0), (2, 2.0), (3, 4.0)):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(
            {k: v * scale if v.is_floating_point() else v for k, v in model.state_dict().items()},
            str(folder / "model.safetensors"),
        )
    original = {k: v.clone() for k, v in model.state_dict().items()}
    processor = MMAVSRProcessor.from_auto_avsr()
    target = average_last_checkpoints(model, processor, str(tmp_path / "out"), 2)
    assert target.name == "model_avg_2"
    name = "lm_head.weight"
    torch.testing.assert_close(model.state_dict()[name], original[name] * 3.0)
    reloaded = MMAVSRForConditionalGeneration.from_pretrained(target)
    torch.testing.assert_close(reloaded.state_dict()[name], original[name] * 3.0)


def test_presets_get_the_features_their_audio_encoder_reads():
    # the log-mel demo preset's Whisper-style stem, and a Whisper encoder with no processor settings at all
    preset = json.loads((PRESETS_DIR / "demo-asr-logmel.json").read_text())
    preset.pop("processor")
    for audio_config in (preset["audio_config"], {**preset["audio_config"], "num_mel_bins": 128}):
        config = MMAVSRConfig(**{**preset, "audio_config": audio_config})
        processor = builder.build_processor(config)
        extractor = processor.feature_extractor
        assert (extractor.feature_type, extractor.num_mel_bins) == ("log-mel", audio_config["num_mel_bins"])
    raw = builder.build_processor(MMAVSRConfig(modality="audio"))
    assert raw.feature_extractor.feature_type == "raw"


def test_batches_are_pinned_only_where_an_accelerator_is_or_when_asked(monkeypatch):
    """Pinning needs an accelerator (on CPU torch warns at every DataLoader): the default follows the machine, and the
    flag still does what it says either way."""
    flags = ["--modality", "video", "--test-file", "t"]
    for present in (False, True):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda present=present: present)
        assert parse_args(flags)[2].dataloader_pin_memory is present
    assert parse_args(flags + ["--use_cpu"])[2].dataloader_pin_memory is False
    for value in (False, True):
        assert parse_args(flags + ["--dataloader_pin_memory", str(value).lower()])[2].dataloader_pin_memory is value
