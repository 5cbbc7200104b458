"""Loading safety: weights come from safetensors or `torch.load(weights_only=True)`; a file whose unpickling would run
code (here: `os.system` creating a file) is refused with a message naming it, and the code never runs."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmavsr_training import trainer
from mmavsr_training.builder import load_pretrained
from mmavsr_training.checkpointing import refuse_unsafe_pickles
from mmavsr_training.convert_auto_avsr_checkpoint import CheckpointConversionError
from mmavsr_training.run import main
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
from modeling_mmavsr.loading_checks_mmavsr import UnsafeCheckpointError

from .test_training_script import common_flags, tiny_preset, write_tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


class Payload:
    """Unpickling this runs `touch PATH` (pickle calls what `__reduce__` names)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.fixture
def side_effect(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the pickled payload ran"


@pytest.fixture(scope="module")
def tiny_model():
    preset = dict(
        vision_encoder="resnet",
        audio_encoder=None,
        frontend_channels=4,
        frontend_layers=[1, 1, 1, 1],
        hidden_size=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        conv_kernel_size=3,
        text_config=dict(
            d_model=32,
            num_hidden_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
        ),
    )
    torch.manual_seed(0)
    return MMAVSRForConditionalGeneration(MMAVSRConfig(**preset))


def bin_folder(model, path, extra=None):
    """A model folder with pytorch_model.bin (a pickle) instead of model.safetensors."""
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save({**model.state_dict(), **(extra or {})}, path / "pytorch_model.bin")
    return path


def test_pytorch_model_bin_is_read_with_weights_only(tiny_model, tmp_path, side_effect):
    plain = load_pretrained(str(bin_folder(tiny_model, tmp_path / "plain")))
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], tensor), name

    evil = bin_folder(tiny_model, tmp_path / "evil", {"extra": Payload(side_effect)})
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"--pretrained-model-path .*evil: .*pytorch_model.bin.*its pickle needs posix.system",
    ):
        load_pretrained(str(evil))


def test_auto_avsr_pth_is_read_with_weights_only(tmp_path, side_effect):
    fixture = Path(__file__).parent / "fixtures" / "auto_avsr" / "audio_model.pth"
    model = load_pretrained(str(fixture), {"ctc_weight": 0.3})
    original = torch.load(fixture, weights_only=True)
    assert model.config.ctc_weight == 0.3
    assert torch.equal(model.ctc_head.ctc_lo.weight, original["ctc.ctc_lo.weight"])

    checkpoint = tmp_path / "vsr_trlrs3.pth"
    torch.save(
        {
            "state_dict": {"encoder.weight": torch.zeros(2)},
            "hyper_parameters": Payload(side_effect),
        },
        checkpoint,
    )
    with pytest.raises(
        CheckpointConversionError,
        match=r"vsr_trlrs3.pth: refused to load.*posix.system",
    ):
        load_pretrained(str(checkpoint))


def test_refuse_unsafe_pickles_names_the_file(tmp_path, side_effect):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    # a numpy RNG state, as the Trainer saves it, is allowed
    torch.save(
        {
            "python": (3, (1, 2), None),
            "numpy": np.random.get_state(),
            "cpu": torch.get_rng_state(),
        },
        folder / "rng_state.pth",
    )
    refuse_unsafe_pickles(folder)

    torch.save({"lr": 0.1, "hook": Payload(side_effect)}, folder / "scheduler.pt")
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"checkpoint-1/scheduler.pt: refused to load: its pickle calls or builds posix.system",
    ):
        refuse_unsafe_pickles(folder)
    (folder / "scheduler.pt").unlink()

    # a bare pickle (no torch.save archive) is refused without being opened by pickle
    (folder / "rng_state_1.pth").write_bytes(pickle.dumps(Payload(side_effect), protocol=2))
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"checkpoint-1/rng_state_1.pth: refused to load: not a `torch.save` archive",
    ):
        refuse_unsafe_pickles(folder)
    # and torch.load(weights_only=True), what the Trainer calls, refuses it too
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        torch.load(folder / "rng_state_1.pth", weights_only=True)


def test_resuming_from_a_checkpoint_with_a_payload_is_refused(corpus, tmp_path, side_effect, monkeypatch):
    """A real checkpoint whose optimizer.pt was replaced: resuming stops before loading anything; with the script's
    check switched off, the Trainer's own `torch.load(weights_only=True)` still refuses it."""
    preset = tiny_preset(tmp_path / "p.json", "video")
    output_dir = tmp_path / "out"
    flags = common_flags(corpus, output_dir, preset) + [
        "--train-file=train.csv",
        "--save_steps=1",
    ]
    main(flags + ["--max_steps=1"])
    checkpoint = output_dir / "checkpoint-1"
    refuse_unsafe_pickles(checkpoint)  # the Trainer's own files pass (its RNG state holds numpy objects)

    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    optimizer["payload"] = Payload(side_effect)
    torch.save(optimizer, checkpoint / "optimizer.pt")
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"checkpoint-1/optimizer.pt: refused to load: .*posix.system",
    ):
        main(flags + ["--max_steps=2"])
    assert not (output_dir / "checkpoint-2").exists()

    monkeypatch.setattr(trainer, "refuse_unsafe_pickles", lambda folder: None)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        main(flags + ["--max_steps=2"])
    assert not (output_dir / "checkpoint-2").exists()


# --- from_pretrained names the weight file that cannot be loaded --------------------------------------------------


def test_from_pretrained_names_a_truncated_or_corrupt_safetensors(tiny_model, tmp_path):
    from modeling_mmavsr.loading_checks_mmavsr import CorruptWeightsError

    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    whole = weights.read_bytes()
    cases = [
        (whole[: len(whole) // 2], rf"holds {len(whole) // 2} bytes but its header describes {len(whole)} \(cut short"),
        (whole[:100], r"holds 100 bytes but its header alone claims \d+"),
        (b"", r"holds 0 bytes, fewer than a safetensors header's length field"),
        (whole[:8] + b"{not json" + whole[17:], r"its header is not safetensors' JSON"),
    ]
    for content, problem in cases:
        weights.write_bytes(content)
        with pytest.raises(
            CorruptWeightsError, match=rf"{weights}: cannot load the model's weights: the file {problem}"
        ):
            MMAVSRForConditionalGeneration.from_pretrained(tmp_path)
    weights.write_bytes(whole)
    loaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, tiny_model.lm_head.weight)


def test_from_pretrained_names_a_pickle_that_needs_code_or_is_cut_short(tiny_model, tmp_path, side_effect):
    from modeling_mmavsr.loading_checks_mmavsr import CorruptWeightsError

    evil = bin_folder(tiny_model, tmp_path / "evil", {"extra": Payload(side_effect)})
    with pytest.raises(
        UnsafeCheckpointError,
        match=rf"{evil / 'pytorch_model.bin'}: refused to load: its pickle needs posix.system: code, not tensors",
    ):
        MMAVSRForConditionalGeneration.from_pretrained(evil)

    cut = bin_folder(tiny_model, tmp_path / "cut")
    weights = cut / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(CorruptWeightsError, match=rf"{weights}: cannot load the model's weights: not a readable"):
        MMAVSRForConditionalGeneration.from_pretrained(cut)
