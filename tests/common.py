"""A tester in the spirit of transformers' ModelTesterMixin: tiny configs and real inputs for every modality."""

import subprocess

import torch
from transformers import TrainerCallback

from modeling_mmavsr import MMAVSRConfig


MODALITIES = ("video", "audio", "audiovisual")
VOCAB_SIZE = 24
EOS = VOCAB_SIZE - 1
SAMPLES_PER_FRAME = 640


def tiny_config(modality: str = "video", **overrides) -> MMAVSRConfig:
    """A config of the released architecture's shape with every size shrunk (two layers, width 32)."""
    text_config = dict(
        vocab_size=VOCAB_SIZE,
        d_model=32,
        num_hidden_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        bos_token_id=EOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
    )
    text_config.update(overrides.pop("text_config", {}))
    values = dict(
        modality=modality,
        frontend_channels=4,
        frontend_layers=[1, 1, 1, 1],
        fusion_hidden_size=48,
        hidden_size=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        conv_kernel_size=5,
        text_config=text_config,
    )
    values.update(overrides)
    return MMAVSRConfig(**values)


def make_inputs(modality: str, frames: list[int], size: int = 24, seed: int = 0) -> dict:
    """Zero-padded random video (B, T, 1, size, size) and/or wave (B, T*640) with their masks, one row per length."""
    generator = torch.Generator().manual_seed(seed)
    batch, longest = len(frames), max(frames)
    inputs = {}
    if modality in ("video", "audiovisual"):
        video = torch.randn(batch, longest, 1, size, size, generator=generator)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for row, length in enumerate(frames):
            video[row, length:] = 0
            mask[row, :length] = 1
        inputs.update(pixel_values_videos=video, video_attention_mask=mask)
    if modality in ("audio", "audiovisual"):
        # a few extra samples per utterance: the frontend drops what does not fill a whole frame
        wave = torch.randn(batch, longest * SAMPLES_PER_FRAME + 100, generator=generator)
        mask = torch.zeros(wave.shape, dtype=torch.long)
        for row, length in enumerate(frames):
            real = length * SAMPLES_PER_FRAME + 37
            wave[row, real:] = 0
            mask[row, :real] = 1
        inputs.update(input_features=wave, attention_mask=mask)
    return inputs


def make_labels(sequences: list[list[int]]) -> torch.Tensor:
    """Token sequences -> labels ending with eos, padded with -100."""
    longest = max(len(s) for s in sequences) + 1
    labels = torch.full((len(sequences), longest), -100, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        labels[row, : len(tokens) + 1] = torch.tensor(tokens + [EOS])
    return labels


def select_row(inputs: dict, row: int, frames: int) -> dict:
    """One sample of a padded batch, cut to its own length, as if it had been processed alone."""
    single = {}
    for key, value in inputs.items():
        value = value[row : row + 1]
        if key in ("pixel_values_videos", "video_attention_mask"):
            value = value[:, :frames]
        else:
            real = int(inputs["attention_mask"][row].sum())
            value = value[:, :real]
        single[key] = value
    return single


class StopAt(TrainerCallback):
    """Stops training once `step` optimizer steps are done (an interrupted run, for resume tests)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def word_tokenizer(words):
    """A word-level fast tokenizer (split at whitespace) of `words`, with <unk>, <s> and </s> as ids 0-2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = ["<unk>", "<s>", "</s>", *words]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_rotated_copy(source, target, degrees: int = 90) -> None:
    """Copy the mp4 `source` to `target` with a display matrix that turns it by `degrees` (as a phone stores a video:
    the frames as recorded, the rotation in the container), with Debian's ffmpeg and no re-encoding."""
    command = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-c", "copy"]
    subprocess.run([*command, "-metadata:s:v:0", f"rotate={degrees}", str(target)], check=True)
