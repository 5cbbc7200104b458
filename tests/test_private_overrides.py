"""The private methods of Transformers that mmavsr overrides (or that Transformers calls on it by name): each is
listed in docs/architecture.md with its reason, and each test here fails when the Transformers version in use changes
the method the override was written against (renamed, removed, other parameters), so that a new version is checked
where it can break mmavsr silently."""

import inspect
from pathlib import Path

import pytest
from transformers import Seq2SeqTrainer, Trainer
from transformers.generation.utils import GenerationMixin

from mmavsr_training.trainer import AVSRSeq2SeqTrainer
from modeling_mmavsr import MMAVSRForConditionalGeneration
from modeling_mmavsr.generation_mmavsr import MMAVSRGenerationMixin


ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
# (Transformers class, private method) -> its parameters in the versions tested (transformers 5.23)
OVERRIDES = {
    (GenerationMixin, "_prepare_decoder_input_ids_for_generation"): (
        "self",
        "batch_size",
        "model_input_name",
        "model_kwargs",
        "decoder_start_token_id",
        "device",
    ),
    (GenerationMixin, "_get_top_k_continuations"): (
        "self",
        "accumulated_log_probs",
        "running_sequences",
        "running_beam_indices",
        "cur_len",
        "decoder_prompt_len",
        "do_sample",
        "beams_to_keep",
        "num_beams",
        "batch_size",
        "kwargs",
    ),
    (Trainer, "_get_output_dir"): ("self", "trial"),
    (Trainer, "_save_checkpoint"): ("self", "model", "trial"),
    (Trainer, "_load_from_checkpoint"): ("self", "resume_from_checkpoint", "model"),
    (Trainer, "_load_best_model"): ("self",),
    (Seq2SeqTrainer, "_pad_tensors_to_max_len"): ("self", "tensor", "max_length"),
}
# our classes whose private methods may override Transformers' (the model's mixins are in its MRO)
OURS = (MMAVSRForConditionalGeneration, AVSRSeq2SeqTrainer)


@pytest.mark.parametrize("base, name", list(OVERRIDES), ids=[f"{b.__name__}.{n}" for b, n in OVERRIDES])
def test_the_overridden_method_is_still_the_one_the_override_was_written_for(base, name):
    method = getattr(base, name, None)
    assert method is not None, f"{base.__name__}.{name} is gone: the override in mmavsr is dead, or needs a new home"
    assert tuple(inspect.signature(method).parameters) == OVERRIDES[base, name], (
        f"{base.__name__}.{name} changed its parameters: read the new code and adapt mmavsr's override"
    )


def test_every_override_of_a_private_transformers_method_is_listed():
    found = set()
    for cls in OURS:
        theirs = [base for base in cls.__mro__ if base.__module__.startswith("transformers")]
        ours = [base for base in cls.__mro__ if not base.__module__.startswith(("transformers", "torch", "builtins"))]
        for owner in ours:
            for name, value in vars(owner).items():
                if not (name.startswith("_") and not name.startswith("__") and callable(value)):
                    continue
                base = next((base for base in theirs if name in vars(base)), None)
                if base is not None and base.__module__.startswith(("transformers.generation", "transformers.trainer")):
                    found.add((base.__name__, name))
    listed = {(base.__name__, name) for base, name in OVERRIDES}
    assert found == listed


def test_beam_search_still_asks_the_model_for_its_cache_reordering():
    # `MMAVSRGenerationMixin._reorder_cache` reorders only the self-attention cache across beams; Transformers calls
    # it by name (`hasattr(self, "_reorder_cache")`) in its beam search: if that call goes, the cross-attention
    # cache would be reordered too (slower, same result) or not at all
    assert "_reorder_cache" in inspect.getsource(GenerationMixin._beam_search)
    assert "_reorder_cache" in vars(MMAVSRGenerationMixin)
    assert issubclass(MMAVSRForConditionalGeneration, MMAVSRGenerationMixin)


def test_each_override_is_documented_with_its_reason():
    text = ARCHITECTURE.read_text()
    section = text[text.index("## Private methods of Transformers that mmavsr overrides") :]
    for base, name in [*OVERRIDES, (GenerationMixin, "_reorder_cache")]:
        assert f"`{base.__name__}.{name}`" in section, f"{base.__name__}.{name} is not in docs/architecture.md"
