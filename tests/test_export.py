"""Hub export: a folder with auto_map, flat code files and a model card that loads with `trust_remote_code=True` in a
fresh process where this package cannot be imported, and gives the installed package's outputs."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

from mmavsr_processing import MMAVSRProcessor, read_video, write_audio, write_video
from mmavsr_training.export import (
    CODE_PACKAGES,
    ExportError,
    code_requirements,
    export_model,
    find_code_files,
    main,
)
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration, pipeline_mmavsr

from .common import tiny_config
from .face_video import moving_face_clip


AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)
FRAMES, DECODER_IDS = 20, [[5048, 17, 230]]
WER_ROWS = [
    {"condition": "clean", "snr": 999999, "wer": 12.5, "utterances": 8},
    {"condition": "babble", "snr": 0, "wer": 40.0, "utterances": 8},
]
# run in a fresh interpreter: the package is made unimportable, everything comes from the exported folders
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_mmavsr", "mmavsr_processing"):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Blocker())
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

    sys.path.insert(0, sys.argv[1])
    from remote_outputs import outputs

    results = {}
    for name, folder, media, inputs in json.loads(sys.argv[2]):
        inputs = dict(np.load(inputs))
        results[name] = outputs(
            AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True),
            AutoModel.from_pretrained(folder, trust_remote_code=True),
            AutoProcessor.from_pretrained(folder, trust_remote_code=True),
            pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True),
            media, inputs,
        )
    for module in ("modeling_mmavsr", "mmavsr_processing"):
        try:
            __import__(module)
            raise SystemExit(f"{module} was importable")
        except ImportError:
            pass
    print(json.dumps(results))
    """
)
# shared by both sides: the outputs compared
OUTPUTS_MODULE = textwrap.dedent(
    """
    import torch

    def outputs(model, base, processor, asr, media, inputs):
        face = inputs.pop("face_frames", None)
        kwargs = {"sampling_rate": 16000} if "audio" in inputs else {}
        features = processor(**{k: v for k, v in inputs.items()}, **kwargs)
        with torch.no_grad():
            hidden = base(**features, decoder_input_ids=torch.tensor(%r)).last_hidden_state
        crops = {}
        if face is not None:  # a full face: the pipeline crops the mouth with its default detector
            sound = inputs["audio"][: len(face) * 640]
            crops["face_text"] = asr({"video": face, "audio": sound, "sampling_rate": 16000})["text"]
            crops["detector"] = asr.mouth_cropper.detector_name
            crops["crops"] = asr.mouth_cropper(face).tolist()
        return {
            **crops,
            "classes": [type(o).__module__ + "." + type(o).__name__ for o in (model, base, processor, asr)],
            "features": {k: v.tolist() for k, v in features.items()},
            "hidden": hidden.tolist(),
            "generated": model.generate(**features).tolist(),
            "text": asr(media)["text"],
            "generation": {"num_beams": model.generation_config.num_beams,
                           "ctc_weight": getattr(model.generation_config, "ctc_weight", None)},
        }
    """
    % (DECODER_IDS,)
)


def save_model(folder, modality, seed):
    torch.manual_seed(seed)
    model = MMAVSRForConditionalGeneration(tiny_config(modality, text_config=AUTO_AVSR_TEXT)).eval()
    model.generation_config.num_beams = 3
    model.save_pretrained(folder)
    MMAVSRProcessor.from_auto_avsr().save_pretrained(folder)
    (folder / "test_wer_table.json").write_text(json.dumps(WER_ROWS))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exports (audio-visual and audio-only), their media and processor inputs."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    wave = (0.1 * rng.standard_normal(FRAMES * 640)).astype(np.float32)
    write_video(root / "clip.mp4", frames, audio=wave)
    write_audio(root / "clip.wav", wave)
    face = moving_face_clip(num_frames=FRAMES)[0]  # a real face, 256x256: the pipeline crops its mouth
    np.savez(root / "av.npz", audio=wave, videos=read_video(root / "clip.mp4")[0], face_frames=face)
    np.savez(root / "audio.npz", audio=wave)
    cases = {}
    for name, modality, media in (("av", "audiovisual", "clip.mp4"), ("audio", "audio", "clip.wav")):
        source = save_model(root / f"{name}_model", modality, seed=len(cases))
        out = export_model(source, root / f"{name}_export", repo_id=f"someone/mmavsr-tiny-{name}")
        cases[name] = (str(out), str(root / media), str(root / f"{name}.npz"))
    (root / "remote_outputs.py").write_text(OUTPUTS_MODULE)
    return root, cases


def test_export_writes_auto_map_custom_pipelines_and_flat_code(exported):
    _, cases = exported
    folder = cases["av"][0]
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mmavsr.MMAVSRConfig",
        "AutoModel": "modeling_mmavsr.MMAVSRModel",
        "AutoModelForSpeechSeq2Seq": "modeling_mmavsr.MMAVSRForConditionalGeneration",
    }
    assert config["custom_pipelines"] == {
        "automatic-speech-recognition": {
            "impl": "pipeline_mmavsr.MMAVSRSpeechRecognitionPipeline",
            "pt": ["AutoModelForSpeechSeq2Seq"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads(open(os.path.join(folder, "processor_config.json")).read())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_mmavsr.MMAVSRProcessor"
    tokenizer_config = json.loads(open(os.path.join(folder, "tokenizer_config.json")).read())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_mmavsr.MMAVSRTokenizer"
    # the saved generation settings survive (Transformers drops unknown keys of `_from_model_config` files)
    generation = json.loads(open(os.path.join(folder, "generation_config.json")).read())
    assert generation["num_beams"] == 3 and generation["ctc_weight"] == 0.1

    code = sorted(f for f in os.listdir(folder) if f.endswith(".py"))
    needed = {
        "configuration_mmavsr.py",
        "modeling_mmavsr.py",
        "generation_mmavsr.py",
        "pipeline_mmavsr.py",
        "processing_mmavsr.py",
        "feature_extraction_mmavsr.py",
        "video_processing_mmavsr.py",
        "tokenization_mmavsr.py",
        "media_io.py",
        "mouth_cropping.py",
        "mouth_alignment.py",
        "mean_face_20words.py",
    }
    assert needed <= set(code)
    # what no exported class imports stays out
    assert not {
        "lrs3.py",
        "collation.py",
        "augmentation.py",
        "demo_corpus.py",
        "export.py",
        "presets.py",
        "__init__.py",
    } & set(code)
    for name in code:
        tree = ast.parse(open(os.path.join(folder, name)).read())
        absolute = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and getattr(node, "level", 0) == 0
            and any(
                (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] in CODE_PACKAGES
                for alias in node.names
            )
        ]
        assert not absolute, f"{name}: absolute imports of the package on lines {absolute}"
    # the same files as following the imports from the exported classes' modules gives
    assert set(find_code_files([pipeline_mmavsr.__file__])) <= set(code)


def test_exported_folders_load_without_the_package_and_match_it(exported, tmp_path):
    root, cases = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    arguments = json.dumps([[name, *case] for name, case in cases.items()])
    run = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(root), arguments],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    remote = json.loads(run.stdout.strip().splitlines()[-1])

    sys.path.insert(0, str(root))
    try:
        from remote_outputs import outputs
    finally:
        sys.path.remove(str(root))
    for name, (folder, media, inputs) in cases.items():
        # the installed package: its own classes and its own task name (the exported ASR task needs remote code)
        asr = pipeline("audio-visual-speech-recognition", model=folder)
        local = outputs(
            AutoModelForSpeechSeq2Seq.from_pretrained(folder),
            AutoModel.from_pretrained(folder),
            AutoProcessor.from_pretrained(folder),
            asr,
            media,
            dict(np.load(inputs)),
        )
        theirs = remote[name]
        assert all(c.startswith("transformers_modules.") for c in theirs["classes"]), theirs["classes"]
        assert [c.rsplit(".", 1)[1] for c in theirs["classes"]] == [c.rsplit(".", 1)[1] for c in local["classes"]]
        assert theirs["generation"] == local["generation"] == {"num_beams": 3, "ctc_weight": 0.1}
        assert theirs["features"].keys() == local["features"].keys()
        for key in local["features"]:
            np.testing.assert_array_equal(np.array(theirs["features"][key]), np.array(local["features"][key]))
        np.testing.assert_allclose(np.array(theirs["hidden"]), np.array(local["hidden"]), atol=1e-6)
        assert theirs["generated"] == local["generated"]
        assert theirs["text"] == local["text"] and local["text"]
        if name == "av":  # an exported model crops as auto_avsr does, as the package does: its mean face travels along
            assert theirs["detector"] == local["detector"] == "mediapipe"
            np.testing.assert_array_equal(np.array(theirs["crops"]), np.array(local["crops"]))
            assert theirs["face_text"] == local["face_text"]


def test_model_card_has_usage_configuration_and_metrics(exported):
    _, cases = exported
    card = open(os.path.join(cases["av"][0], "README.md")).read()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "pipeline_tag: automatic-speech-recognition" in card and "- lip-reading" in card
    assert 'pipeline("automatic-speech-recognition", model="someone/mmavsr-tiny-av", trust_remote_code=True)' in card
    assert "| task | audio-visual speech recognition (AVSR) |" in card
    assert "| fusion | `concat` |" in card and "| decoding | beam 3, CTC weight 0.1 |" in card
    assert "| Conformer | 2 layers, width 32, 4 heads, feed-forward 64, kernel 5 |" in card
    # what Transformers checks before running the code (optional imports inside `try` are left out)
    listed = card.split("(`pip install ")[1].split("`")[0].split()
    assert listed == code_requirements(Path(cases["av"][0]))
    assert {"av", "numpy", "sentencepiece", "torch", "transformers"} <= set(listed)
    assert "opencv-python-headless" not in listed and "cv2" not in listed
    assert "| clean | clean | 12.50 | 8 |" in card and "| babble | 0 | 40.00 | 8 |" in card
    audio_card = open(os.path.join(cases["audio"][0], "README.md")).read()
    assert "lip-reading" not in audio_card and 'transcriber("speaker.wav")' in audio_card


def test_export_leaves_no_auto_class_registration_behind(exported, tmp_path):
    assert MMAVSRConfig._auto_class is None and MMAVSRForConditionalGeneration._auto_class is None
    assert MMAVSRProcessor._auto_class is None
    model = MMAVSRForConditionalGeneration(tiny_config("video"))
    model.save_pretrained(tmp_path)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    assert not list(tmp_path.glob("*.py"))


def test_export_errors_name_the_problem(exported, tmp_path):
    root, cases = exported
    model_only = tmp_path / "model_only"
    MMAVSRForConditionalGeneration(tiny_config("video")).save_pretrained(model_only)
    with pytest.raises(ExportError, match="model_only: no processor_config.json"):
        export_model(model_only, tmp_path / "out")
    with pytest.raises(ExportError, match="av_export: exists and is not empty"):
        export_model(root / "av_model", cases["av"][0])
    with pytest.raises(ExportError, match="nowhere: no config.json"):
        export_model(tmp_path / "nowhere", tmp_path / "out")
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\n\ndef f():\n    from modeling_mmavsr import MMAVSRConfig\n")
    with pytest.raises(ExportError, match="bad.py:4: `from modeling_mmavsr import ...` imports the package itself"):
        find_code_files([bad])
    with pytest.raises(SystemExit):
        main(["--model", str(root / "av_model"), "--output-dir", str(tmp_path / "o"), "--push-to-hub", "a/b"])


def test_cli_exports_and_pushes_with_a_token(exported, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    root, _ = exported
    calls = []

    class FakeHfApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", sorted(os.listdir(folder_path)), repo_id))
            return "https://huggingface.co/someone/pushed/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out = tmp_path / "cli_export"
    main(
        [
            "--model",
            str(root / "audio_model"),
            "--output-dir",
            str(out),
            "--metrics",
            str(root / "av_model" / "test_wer_table.json"),
            "--push-to-hub",
            "someone/pushed",
            "--token",
            "hf_secret",
        ]
    )
    assert calls[0] == ("init", "hf_secret")
    assert calls[1] == ("create_repo", "someone/pushed", {"private": False, "exist_ok": True, "repo_type": "model"})
    assert calls[2][0] == "upload_folder" and calls[2][2] == "someone/pushed"
    assert {"config.json", "model.safetensors", "README.md", "pipeline_mmavsr.py"} <= set(calls[2][1])
    assert "Pushed to someone/pushed" in capsys.readouterr().out
    assert 'model="someone/pushed"' in (out / "README.md").read_text()

    calls.clear()
    main(["--model", str(root / "audio_model"), "--output-dir", str(tmp_path / "local_only")])
    assert calls == []  # no token, no push
