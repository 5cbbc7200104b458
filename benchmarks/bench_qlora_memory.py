"""Peak GPU memory and training-step time of a 7B Llama-shaped LLM decoder, with and without QLoRA.

The model: ResNet1D audio encoder + Conformer (auto_avsr's sizes) + a Llama-2-7B-shaped decoder (random weights),
batch 2 x 2 s clips with 20-token transcripts. "bf16" trains every weight in bf16 (AdamW states included); "qlora"
holds the LLM in 4-bit NF4 and trains LoRA adapters (r=16) plus the encoder, projector and CTC head. The model is built
on the meta device and materialised part by part on the GPU (the LLM straight into 4-bit for QLoRA), so no
full-precision 7B copy ever exists.

    python benchmarks/bench_qlora_memory.py [--mode qlora|bf16|both] [--steps 3]

Needs CUDA (and bitsandbytes for QLoRA); exits with a message otherwise.

Measured (NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2,
--steps 10): qlora peak 8.27 GiB (8.88 GB) allocated, 771 ms/step, 238.5 M trainable; bf16 peak 64.73 GiB (69.50 GB),
495 ms/step, 6936.9 M trainable. The goal of QLoRA at or under 12 GB is met.
"""

import argparse
import gc
import sys
import time

import torch


LLAMA_7B = dict(
    model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    tie_word_embeddings=False,
)


def build(mode: str):
    from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration
    from modeling_mmavsr.modeling_mmavsr_lora import quantize_llm_4bit

    config = MMAVSRConfig(modality="audio", decoder_type="llm", text_config=LLAMA_7B, ctc_weight=0.1,
                          instruction_ids=list(range(3, 23)), decoder_prompt_ids=[1], use_qlora=mode == "qlora")
    with torch.device("meta"):
        model = MMAVSRForConditionalGeneration(config)
    device = torch.device("cuda")
    if mode == "qlora":
        # the LLM's Linear layers go from meta straight to NF4 on the GPU, one at a time (random bf16 weights)
        quantize_llm_4bit(model, device)
    # everything still on meta gets random weights on the GPU
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


def batch(model):
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 2 * 16000, generator=generator).cuda()
    labels = torch.randint(3, 32000, (2, 20), generator=generator).cuda()
    ctc_labels = torch.randint(1, 5048, (2, 15), generator=generator).cuda()
    dtype = next(p for p in model.model.encoder.parameters()).dtype
    return dict(input_features=wave.to(dtype), attention_mask=torch.ones_like(wave, dtype=torch.long),
                labels=labels, ctc_labels=ctc_labels)


def run(mode: str, steps: int) -> dict:
    gc.collect()  # the previous mode's model must not count towards this one's peak
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build(mode)
    inputs = batch(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    figures = {
        "mode": mode,
        "trainable_params_M": sum(p.numel() for p in trainable) / 1e6,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_GiB": torch.cuda.max_memory_reserved() / 2**30,
        "step_times_s": times[1:],
        "step_s": sum(times[1:]) / steps,
        "loss": loss.item(),
    }
    del model, optimizer, inputs, trainable, loss
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("qlora", "bf16", "both"), default="both")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_qlora_memory: no CUDA device here; this benchmark measures GPU memory and needs one.")
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
