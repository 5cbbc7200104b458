"""What a user runs, in a fresh process outside the checkout, with only the imports the user writes.

The suite's own process has imported both packages and the tests' helpers; these tests run the user's code in a
subprocess started with `python -I` (no PYTHONPATH, no user site, neither the current folder nor the checkout on
`sys.path`) in a tmp folder, so only what the user's imports do counts.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from mmavsr_processing import MMAVSRProcessor, read_audio, write_audio, write_video
from mmavsr_training.presets import build_model_from_preset, load_preset_training
from modeling_mmavsr import MMAVSRForConditionalGeneration

from .common import tiny_config


REPO = Path(__file__).resolve().parent.parent
AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)
FRAMES = 30
TIMEOUT = 300


def run_user_code(code: str, cwd: Path, python: str = sys.executable, *args: str) -> dict:
    """Run `code` with `python -I` in `cwd` (outside the checkout); it prints one JSON object as its last line."""
    assert not Path(cwd).resolve().is_relative_to(REPO), f"{cwd} is inside the checkout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"the user code failed:\n{(result.stdout + result.stderr)[-6000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny audio-only and audio-visual models saved with `model.save_pretrained` + `processor.save_pretrained`, a
    real wav and a real mp4 (96x96 frames at 25 fps with an AAC track)."""
    root = tmp_path_factory.mktemp("user")
    paths = {}
    for seed, modality in enumerate(("audio", "audiovisual")):
        torch.manual_seed(seed)
        model = MMAVSRForConditionalGeneration(tiny_config(modality, text_config=AUTO_AVSR_TEXT)).eval()
        model.generation_config.num_beams = 1
        model.generation_config.max_new_tokens = 8
        model.save_pretrained(root / modality)
        MMAVSRProcessor.from_auto_avsr().save_pretrained(root / modality)
        paths[modality] = str(root / modality)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(FRAMES * 640)).astype(np.float32)
    write_audio(root / "clip.wav", wave)
    write_video(root / "clip.mp4", rng.integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8), audio=wave)
    paths.update(wav=str(root / "clip.wav"), mp4=str(root / "clip.mp4"), cwd=str(root / "cwd"))
    (root / "cwd").mkdir()
    return paths


USER_CODE = """
    import json, sys

    import modeling_mmavsr
    from transformers import AutoProcessor, AutoTokenizer, pipeline

    paths = json.loads(sys.argv[1])
    processor = AutoProcessor.from_pretrained(paths["audio"])
    tokenizer = AutoTokenizer.from_pretrained(paths["audio"])
    asr = pipeline("automatic-speech-recognition", model=paths["audio"])
    avsr = pipeline("audio-visual-speech-recognition", model=paths["audiovisual"])
    features = pipeline("audio-visual-feature-extraction", model=paths["audio"])
    print(json.dumps({
        "processor": type(processor).__name__,
        "parts": [type(p).__name__ for p in (processor.feature_extractor, processor.video_processor, processor.tokenizer)],
        "tokenizer": type(tokenizer).__name__,
        "ids": tokenizer("HELLO WORLD")["input_ids"],
        "asr": asr(paths["wav"])["text"],
        "avsr": avsr(paths["mp4"])["text"],
        "features": list(features(paths["wav"])["features"].shape),
    }))
"""


@pytest.mark.smoke
def test_one_import_loads_a_saved_folder_in_a_fresh_process(saved):
    """After only `import modeling_mmavsr`: AutoProcessor, AutoTokenizer, the ASR pipeline on a wav, the
    audio-visual pipeline on an mp4 and the feature-extraction pipeline, each giving what the loaded classes give."""
    got = run_user_code(USER_CODE, Path(saved["cwd"]), sys.executable, json.dumps(saved))
    assert got["processor"] == "MMAVSRProcessor"
    assert got["parts"] == ["MMAVSRFeatureExtractor", "MMAVSRVideoProcessor", "MMAVSRTokenizer"]
    assert got["tokenizer"] == "MMAVSRTokenizer"
    processor = MMAVSRProcessor.from_pretrained(saved["audio"])
    assert got["ids"] == processor.tokenizer("HELLO WORLD")["input_ids"]

    model = MMAVSRForConditionalGeneration.from_pretrained(saved["audio"]).eval()
    wave = read_audio(saved["wav"])
    expected = processor.batch_decode(model.generate(**processor(audio=wave, sampling_rate=16000)))[0]
    assert expected and got["asr"] == expected
    avsr = pipeline("audio-visual-speech-recognition", model=saved["audiovisual"])
    assert got["avsr"] and got["avsr"] == avsr(saved["mp4"])["text"]
    assert got["features"] == [FRAMES, model.config.hidden_size]


def test_processing_does_not_import_the_model_package(tmp_path):
    got = run_user_code(
        """
        import json, sys
        import mmavsr_processing
        print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] == "modeling_mmavsr")}))
        """,
        tmp_path,
    )
    assert got["loaded"] == []


def test_importing_the_packages_leaves_the_llm_extra_unloaded_until_a_trainer_callback_is_asked_for(tmp_path):
    # bitsandbytes logs a kernel warning when imported; only LLM decoders and training should pay for it
    got = run_user_code(
        """
        import json, sys
        import modeling_mmavsr
        before = sorted(m for m in ("peft", "bitsandbytes") if m in sys.modules)
        from mmavsr_processing import StreamingStateCallback
        from transformers import TrainerCallback
        print(json.dumps({"before": before, "callback": issubclass(StreamingStateCallback, TrainerCallback)}))
        """,
        tmp_path,
    )
    assert got == {"before": [], "callback": True}


# the preset's architecture at test sizes (the released one takes long to build on a busy CPU)
TINY_SIZES = dict(
    frontend_channels=4,
    hidden_size=32,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    text_config=dict(
        vocab_size=24,
        d_model=32,
        num_hidden_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        bos_token_id=23,
        eos_token_id=23,
        decoder_start_token_id=23,
    ),
)
WHEEL_USER_CODE = """
    import json, sys

    import modeling_mmavsr
    from mmavsr_training.presets import PRESETS_DIR, build_model_from_preset, load_preset_training, preset_names

    model = build_model_from_preset("mmavsr-vsr-resnet-transformer", pretrained=False, **json.loads(sys.argv[1]))
    print(json.dumps({
        "package": modeling_mmavsr.__file__,
        "presets_dir": str(PRESETS_DIR),
        "presets": preset_names(),
        "parameters": model.num_parameters(),
        "vision_encoder": model.config.vision_encoder,
        "llm_recipe": load_preset_training("demo-asr-logmel-llm-qlora"),
        "editable_finder": [m for m in sys.modules if m.startswith("__editable__")],
    }))
"""


def source_files() -> list[str]:
    """The files of the source tree a wheel is built from: tracked ones and new ones git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listing.split("\0") if name and (REPO / name).is_file()]


def test_the_wheel_carries_the_presets(tmp_path):
    """The wheel of the source tree, installed into a fresh virtualenv, builds a preset outside the checkout and
    reads an LLM preset's training recipe.

    The wheel is built from a copy of the source tree (so no `build/` or `*.egg-info` lands in the checkout), without
    build isolation and without the network. The virtualenv reuses the test environment's dependencies (torch,
    transformers, ...) through a `.pth` file naming that environment's site-packages: a folder named in a `.pth` file
    joins `sys.path` after the virtualenv's own site-packages, but the `.pth` files inside it are not run, so the
    editable install's finder (`__editable__.mmavsr-*.pth`) never loads and `modeling_mmavsr` can only come from the
    wheel. (`venv --system-site-packages` would not do: from inside a virtualenv it exposes the base interpreter's
    site-packages, not the test environment's.) The user code runs with `python -I` in a tmp folder, so neither the
    checkout nor the current folder is on `sys.path`, and it reports where `modeling_mmavsr` was imported from.
    """
    source, dist, venv, cwd = (tmp_path / name for name in ("source", "dist", "venv", "cwd"))
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    cwd.mkdir()
    quiet = dict(check=True, capture_output=True, text=True, timeout=TIMEOUT)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source)]
    subprocess.run(build, **quiet)
    (wheel,) = dist.glob("mmavsr-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
    python = str(venv / "bin" / "python")
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(subprocess.run([python, "-c", purelib], **quiet).stdout.strip())
    (site_packages / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", str(wheel)], **quiet)

    got = run_user_code(WHEEL_USER_CODE, cwd, python, json.dumps(TINY_SIZES))
    assert Path(got["package"]).is_relative_to(site_packages), got["package"]
    assert Path(got["presets_dir"]) == site_packages / "mmavsr_training" / "hub_configs"
    assert got["editable_finder"] == []
    # every preset of the source tree the wheel was built from
    assert set(got["presets"]) == {path.stem for path in (source / "hub_configs").glob("*.json")}
    expected = build_model_from_preset("mmavsr-vsr-resnet-transformer", pretrained=False, **TINY_SIZES)
    assert got["vision_encoder"] == "resnet" and got["parameters"] == expected.num_parameters()
    assert got["llm_recipe"] == load_preset_training("demo-asr-logmel-llm-qlora") and got["llm_recipe"]["warmup_steps"]
