"""The LLM job's recipe (scripts/llm_job.sh): its presets (hub_configs/demo-*-llm-qlora.json) build, extend the main
job's demo models so that `--init_from_models` carries their encoders over, and train and decode through the training
script; the seed's `mmavsr-avsr-vit-whisper-llama-qlora` trains and decodes with the same commands when its pretrained
parts are local folders (`--vision-model-name` / `--audio-model-name` / `--decoder-model-name`). Tiny LLMs and
encoders stand in for SmolLM2, ViT and Whisper (no network); 4-bit QLoRA needs bitsandbytes (the test extra)."""

import json
import logging
import math
import shutil

import pytest
import torch
from transformers import AutoProcessor, ViTConfig, ViTModel, WhisperConfig, WhisperModel

from mmavsr_training.presets import build_model_from_preset, load_preset
from mmavsr_training.run import main
from modeling_mmavsr import MMAVSRForConditionalGeneration

from .test_presets import TINY_TEXT, tiny_inputs, tiny_overrides
from .test_training_script import common_flags, tiny_llm_folder, write_tiny_corpus


pytest.importorskip("bitsandbytes", reason="4-bit QLoRA needs bitsandbytes (pip install 'mmavsr[test]')")

# each LLM preset and the main job's preset whose trained model it starts from
LLM_PRESETS = {
    "demo-asr-logmel-llm-qlora": "demo-asr-logmel",
    "demo-avsr-resnet-logmel-llm-qlora": "demo-avsr-resnet-logmel",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", sorted(LLM_PRESETS))
def test_llm_preset_builds_tiny_trains_a_step_and_generates(name):
    values, _ = load_preset(name)
    torch.manual_seed(0)
    model = build_model_from_preset(name, pretrained=False, **tiny_overrides(values))
    config = model.config
    assert (config.decoder_type, config.use_qlora, config.ctc_weight, config.instruction) == (
        "llm",
        True,
        0.0,
        "Transcribe.",
    )
    assert any(type(module).__name__ == "Linear4bit" for module in model.modules())  # the LLM in NF4
    inputs = tiny_inputs(name, values)
    model.train()
    output = model(**inputs, labels=torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]]))
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.eval()
    assert model.generate(**inputs, num_beams=1, max_new_tokens=4).shape[0] == 2


@pytest.mark.parametrize("name", sorted(LLM_PRESETS))
def test_llm_preset_holds_every_encoder_weight_of_the_main_job_model(name):
    """--init_from_models copies weights of the same name and shape: at the presets' own sizes, every encoder and
    fusion weight of the main job's model has its place in the LLM model (only the projector and LLM start new)."""
    torch.manual_seed(0)
    main = build_model_from_preset(LLM_PRESETS[name], pretrained=False, text_config=TINY_TEXT["transformer"]())
    llm = build_model_from_preset(name, pretrained=False, text_config=TINY_TEXT["llm"]())
    target = {key: value.shape for key, value in llm.state_dict().items()}
    encoder = {key: value.shape for key, value in main.state_dict().items() if key.startswith("model.encoder.")}
    assert encoder and all(target.get(key) == shape for key, shape in encoder.items())


def test_llm_job_recipe_trains_and_decodes_through_the_script(corpus, tmp_path, caplog):
    """llm_job.sh's asr-llm step on a tiny corpus: the main job's audio preset trains a step, the LLM preset starts
    from it with a local LLM in 4-bit QLoRA, trains a step and prints the clean and 0 dB WER."""
    vocabulary = ["--train_vocabulary_size=40", "--train_vocabulary_type=word"]
    main(
        common_flags(corpus, tmp_path / "asr", "demo-asr-logmel")
        + ["--train-file=train.csv", "--max_steps=1"]
        + vocabulary
    )
    caplog.set_level(logging.INFO)
    results = main(
        common_flags(corpus, tmp_path / "asr-llm", "demo-asr-logmel-llm-qlora")
        + [
            f"--decoder-model-name={tiny_llm_folder(tmp_path / 'llm', lowercase=True)}",
            "--init_from_models",
            str(tmp_path / "asr"),
            "--train-file=train.csv",
            "--test-file=test.csv",
            "--do_train",
            "--do_predict",
            "--max_steps=1",
            "--decode-snr-target",
            "999999",
            "0",
            "--generation_num_beams=1",
        ]
    )
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["test_wer"])
    assert (tmp_path / "asr-llm" / "test_wer_table.json").is_file()
    assert f"--init_from_models: from {tmp_path / 'asr'}: model.encoder.audio_frontend" in caplog.text
    saved = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "asr-llm")
    assert (saved.config.decoder_type, saved.config.use_qlora, saved.config.instruction) == ("llm", True, "Transcribe.")
    assert any(type(module).__name__ == "Linear4bit" for module in saved.modules())
    # the preset's lower-case transcripts: the saved tokenizer lower-cases the corpus' upper-case words itself
    tokenizer = AutoProcessor.from_pretrained(tmp_path / "asr-llm").tokenizer
    assert tokenizer("PLACE RED")["input_ids"] == tokenizer("place red")["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer("PLACE RED")["input_ids"]


def test_a_trained_llm_model_decodes_after_its_llm_moved(corpus, tmp_path):
    """A QLoRA model saves its adapters, not the LLM's base weights: when the LLM has moved (another machine, a new
    virtual environment), --pretrained-model-path with --decoder-model-name decodes it as before; without the flag
    the error names the flag, and an LLM of another shape is refused."""
    llm = tiny_llm_folder(tmp_path / "llm", lowercase=True)
    trained = main(
        common_flags(corpus, tmp_path / "asr-llm", "demo-asr-logmel-llm-qlora")
        + [
            f"--decoder-model-name={llm}",
            "--train-file=train.csv",
            "--test-file=test.csv",
            "--do_train",
            "--do_predict",
            "--max_steps=2",
            "--generation_num_beams=1",
            f"--output_json={tmp_path / 'trained.json'}",
        ]
    )
    (tmp_path / "llm").rename(tmp_path / "moved")

    def decode(*flags):
        return main(
            [
                f"--pretrained-model-path={tmp_path / 'asr-llm'}",
                f"--root-dir={corpus}",
                "--test-file=test.csv",
                f"--output_dir={tmp_path / 'decode'}",
                "--report_to=none",
                "--generation_num_beams=1",
                "--per_device_eval_batch_size=2",
                f"--output_json={tmp_path / 'decoded.json'}",
                *flags,
            ]
        )

    with pytest.raises(FileNotFoundError, match=r"not its base weights.*\(the training script: --decoder-model-name\)"):
        decode()
    decoded = decode(f"--decoder-model-name={tmp_path / 'moved'}")
    assert decoded["test_loss"] == trained["test_loss"]  # the same LLM weights under the same adapters
    trained_texts, decoded_texts = (
        json.loads((tmp_path / name).read_text())[0]["conditions"] for name in ("trained.json", "decoded.json")
    )
    assert decoded_texts == trained_texts

    other = json.loads((tmp_path / "moved" / "config.json").read_text())
    shutil.copytree(tmp_path / "moved", tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(json.dumps({**other, "num_hidden_layers": 2}))
    with pytest.raises(
        ValueError,
        match=r"is not the decoder this model was built with: num_hidden_layers 2 \(the "
        r"model's: 1\)",
    ):
        decode(f"--decoder-model-name={tmp_path / 'other'}")


def test_vit_whisper_llama_qlora_preset_trains_and_decodes_with_local_parts(corpus, tmp_path):
    """The seed's headline configuration, its Hub parts replaced by local folders through the script's flags."""
    torch.manual_seed(0)
    vit_dir, whisper_dir = tmp_path / "vit", tmp_path / "whisper"
    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37),
        add_pooling_layer=False,
    ).save_pretrained(vit_dir)
    WhisperModel(
        WhisperConfig(
            d_model=32,
            encoder_layers=1,
            encoder_attention_heads=4,
            encoder_ffn_dim=37,
            decoder_layers=1,
            decoder_attention_heads=4,
            decoder_ffn_dim=37,
            num_mel_bins=80,
            vocab_size=60,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=3,
            begin_suppress_tokens=None,
            suppress_tokens=None,
        )
    ).save_pretrained(whisper_dir)
    results = main(
        common_flags(corpus, tmp_path / "out", "mmavsr-avsr-vit-whisper-llama-qlora")
        + [
            f"--vision-model-name={vit_dir}",
            f"--audio-model-name={whisper_dir}",
            f"--decoder-model-name={tiny_llm_folder(tmp_path / 'llm')}",
            "--train-file=train.csv",
            "--test-file=test.csv",
            "--do_train",
            "--do_predict",
            "--max_steps=2",
            "--generation_num_beams=1",
        ]
    )
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["test_wer"])
    saved = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "out")
    config = saved.config
    assert (config.vision_encoder, config.audio_encoder, config.decoder_type, config.use_qlora) == (
        "vit",
        "whisper",
        "llm",
        True,
    )
    assert config.vision_config.hidden_size == 32 and config.audio_config.d_model == 32  # the local parts
