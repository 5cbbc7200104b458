"""Checkpoints of models with LoRA / QLoRA adapters keep the adapters: resuming a Trainer run, loading its best
checkpoint at the end, averaging checkpoints (`--average_checkpoints`), and `--init_from_models` into a 4-bit model.
A tiny random Llama decoder; QLoRA (real bitsandbytes NF4 on the CPU) where its base comes from a local folder."""

import pytest
import torch
from transformers import Seq2SeqTrainingArguments

from mmavsr_training import builder
from mmavsr_training.checkpointing import average_last_checkpoints, checkpoint_dirs
from mmavsr_training.trainer import AVSRSeq2SeqTrainer
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer

from .common import StopAt, make_inputs
from .test_qlora import ADAPTERS, TINY_ENCODER, lora_names, tiny_config
from .test_training_script import tiny_llm_folder


pytest.importorskip("bitsandbytes", reason="4-bit QLoRA needs bitsandbytes (pip install 'mmavsr[test]')")

LABELS = torch.tensor([[5, 6, 2], [7, 2, -100]])
BATCHES = [{**make_inputs("audio", [6, 4], seed=seed), "labels": LABELS} for seed in range(4)]


def lora_model(seed: int) -> MMAVSRForConditionalGeneration:
    torch.manual_seed(seed)
    return MMAVSRForConditionalGeneration(tiny_config(use_lora=True))


def adapters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def trainer(model, output_dir, projector_lr_scale=1.0, **options) -> AVSRSeq2SeqTrainer:
    """4 AdamW steps over 4 fixed batches (one a step), a checkpoint every 2."""
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        max_steps=4,
        save_steps=2,
        per_device_train_batch_size=1,
        learning_rate=0.02,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=100,
        seed=0,
        **options,
    )
    return AVSRSeq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=BATCHES,
        eval_dataset=BATCHES[:1],
        data_collator=lambda rows: rows[0],
        projector_lr_scale=projector_lr_scale,
    )


def test_load_best_model_at_end_restores_the_best_checkpoints_adapters(tmp_path):
    model = lora_model(0)
    # the largest loss is "best": the first checkpoint, before training lowered it
    run = trainer(
        model,
        tmp_path / "out",
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,
        label_names=["labels"],
    )
    run.train()
    assert run.state.best_model_checkpoint == str(tmp_path / "out" / "checkpoint-2")
    best = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "out" / "checkpoint-2")
    last = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "out" / "checkpoint-4")
    final, wanted, other = adapters(model), adapters(best), adapters(last)
    assert final.keys() == wanted.keys() and final
    assert all(torch.equal(final[name], tensor) for name, tensor in wanted.items())
    assert any(not torch.equal(final[name], tensor) for name, tensor in other.items())


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    return tiny_llm_folder(tmp_path_factory.mktemp("llm"))


def qlora_model(llm_folder, seed: int = 0) -> MMAVSRForConditionalGeneration:
    torch.manual_seed(seed)
    return MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm", decoder_model_name=llm_folder, use_qlora=True, **TINY_ENCODER, **ADAPTERS
    )


@pytest.mark.parametrize("option, projector_lr_scale", [("use_lora", 1.0), ("use_qlora", 1.0), ("use_lora", 10.0)])
def test_a_resumed_run_ends_with_the_adapters_of_an_uninterrupted_one(option, projector_lr_scale, tmp_path, llm_folder):
    """Also where the projector trains at its own rate: its optimizer groups are rebuilt before the state loads."""

    def build(seed):
        return lora_model(seed) if option == "use_lora" else qlora_model(llm_folder, seed)

    straight = build(0)
    trainer(straight, tmp_path / "straight", projector_lr_scale).train()
    interrupted = trainer(build(0), tmp_path / "resumed", projector_lr_scale)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert [c.name for c in checkpoint_dirs(tmp_path / "resumed")] == ["checkpoint-2"]
    resumed = build(1)  # other random adapters (and encoder): all of it must come from checkpoint-2
    resumed_run = trainer(resumed, tmp_path / "resumed", projector_lr_scale)
    resumed_run.train(resume_from_checkpoint=True)
    rates = {group["lr"] for group in resumed_run.optimizer.param_groups}
    assert rates == {0.02, 0.02 * projector_lr_scale}
    assert resumed.is_llm_quantized == (option == "use_qlora")
    expected, actual = adapters(straight), adapters(resumed)
    assert expected.keys() == actual.keys() and expected
    initial = adapters(build(0))
    assert any(not torch.equal(tensor, initial[name]) for name, tensor in expected.items())  # it trained
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-6, rtol=0, msg=name)
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_averaged_qlora_checkpoints_hold_the_mean_of_their_adapters(tmp_path, llm_folder):
    model = qlora_model(llm_folder)
    assert model.is_llm_quantized
    saved = []
    for step, scale in ((1, 1.0), (2, 2.0), (3, 4.0)):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name or name.startswith("model.encoder."):
                    param.add_(scale)
        model.save_pretrained(tmp_path / "out" / f"checkpoint-{step}")
        saved.append({**adapters(model), "encoder": model.model.encoder.state_dict()})
    processor = builder.processor_from_settings(model.config, None, load_decoder_tokenizer("llm", llm_folder))
    target = average_last_checkpoints(model, processor, str(tmp_path / "out"), 2)
    assert (target / "adapter_model.safetensors").is_file()
    reloaded = MMAVSRForConditionalGeneration.from_pretrained(target)
    assert reloaded.is_llm_quantized and reloaded.config.use_qlora
    averaged = adapters(reloaded)
    assert averaged.keys() == lora_names(model) and averaged
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (saved[1][name] + saved[2][name]) / 2, msg=name)
        torch.testing.assert_close(adapters(model)[name], tensor, msg=name)  # and into the model
    for name, tensor in reloaded.model.encoder.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (saved[1]["encoder"][name] + saved[2]["encoder"][name]) / 2, msg=name)


def test_init_from_models_fills_a_qlora_model_with_a_saved_audio_models_encoder(tmp_path, llm_folder):
    torch.manual_seed(1)
    audio = MMAVSRForConditionalGeneration(MMAVSRConfig(**TINY_ENCODER))
    audio.save_pretrained(tmp_path / "audio")
    model = qlora_model(llm_folder)
    encoder = audio.model.encoder.state_dict()
    assert any(not torch.equal(model.model.encoder.state_dict()[name], t) for name, t in encoder.items())
    llm_before = {name: t.clone() for name, t in model.state_dict().items() if name.startswith("model.decoder.")}
    processor = builder.processor_from_settings(model.config, None, load_decoder_tokenizer("llm", llm_folder))
    builder.init_from_models(model, processor, [str(tmp_path / "audio")])
    for name, tensor in model.model.encoder.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in llm_before.items())  # the 4-bit LLM as it was
    assert model.is_llm_quantized and lora_names(model)
    loss = model(**BATCHES[0]).loss
    assert torch.isfinite(loss)


def test_a_saved_adapter_model_finds_its_llm_from_any_folder_or_says_where_it_looked(tmp_path, monkeypatch):
    """A model built with a relative --decoder-model-name saves adapters only and reloads its LLM base from
    `decoder_model_name`: recorded as an absolute path, so a fresh process elsewhere loads it; a base that has gone
    is named in the error, and `decoder_model_name=` points the loading at its new place."""
    monkeypatch.chdir(tmp_path)
    tiny_llm_folder(tmp_path / "llm")
    torch.manual_seed(0)
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm", decoder_model_name="./llm", use_lora=True, **TINY_ENCODER, **ADAPTERS
    ).eval()
    assert model.config.decoder_model_name == str(tmp_path / "llm")
    inputs = make_inputs("audio", [6, 4])
    expected = model(**inputs, labels=LABELS).logits
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(loaded(**inputs, labels=LABELS).logits, expected, atol=0, rtol=0)

    (tmp_path / "llm").rename(tmp_path / "moved")
    with pytest.raises(
        FileNotFoundError,
        match="holds the LLM's adapters, not its base weights, which come from "
        f"decoder_model_name='{tmp_path / 'llm'}': not found",
    ):
        MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "saved")
    moved = MMAVSRForConditionalGeneration.from_pretrained(
        tmp_path / "saved", decoder_model_name=str(tmp_path / "moved")
    ).eval()
    torch.testing.assert_close(moved(**inputs, labels=LABELS).logits, expected, atol=0, rtol=0)
