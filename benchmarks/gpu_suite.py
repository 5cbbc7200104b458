"""The GPU suite: one table of the speed and memory goals, each row measured in a process of its own.

    bash benchmarks/gpu_suite.sh [--tiny] [--auto-avsr PATH] [--rows training decoding qlora llm] [...]

Rows (random weights everywhere; nothing is downloaded):
- training: speech seconds trained on per second (forward + backward + AdamW step), MMAVSR against auto_avsr's own
  code at the released VSR size (auto_avsr's `E2E`, imported at run time from the checkout given by `--auto-avsr` or
  the environment variable AUTO_AVSR, never copied; its random weights are converted into the MMAVSR model, so both
  start from the same weights). Batch `--train-batch` x `--train-seconds` (default 16 x 4 s = 1600 frames, auto_avsr's
  default `--max-frames`), median of `--train-steps` steps after `--train-warmup`. On CUDA both sides run under bf16
  autocast (`--precision`); MMAVSR's attention is SDPA (`attn_implementation="sdpa"`), auto_avsr's attention is its
  own matmul + softmax (its code has no SDPA path; nothing of it is patched); both use AdamW with auto_avsr's betas
  and weight decay, neither auto_avsr's Lightning gradient clipping. Goal: MMAVSR at least 1.5x auto_avsr.
  Without a checkout the row says that auto_avsr was not run and gives MMAVSR's figure alone.
- decoding: beam search (`--beam`, default 40) with joint CTC scoring (`--ctc-weight` 0.1) of `--utterances` (1,321,
  the size of LRS3's test set) video utterances at the released VSR size, batches of `--decode-batch-size` (longest
  first), total seconds of `generate()` (one untimed warm-up batch before). Lengths follow LRS3's test set as assumed
  here, not measured from it: seeded log-normal durations, median 2.3 s, clipped to 1-6 s (mean about 2.5 s); every
  hypothesis is `--tokens-per-second` (5) x its batch's longest duration tokens long (random weights never stop on
  their own). Goal: at most 60 s.
- qlora: peak GPU memory of QLoRA training (batch 2 x 2 s, 20 tokens, AdamW, bf16 autocast) of auto_avsr's audio
  encoder + a Llama-2-7B-shaped LLM built on the meta device and quantized to NF4 layer by layer
  (`bench_qlora_memory.run`). Goal: at most 10 GB (1e9 bytes).
- llm: one row per LLM compression rate (`--rates`, default 1 2 4 5): LLM input tokens per second of media (counted
  at the projector's output), QLoRA training speed (speech s/s) and greedy generation speed (new tokens/s, the
  prefill over the media tokens included) of the same 7B QLoRA model. No goal (informative).

`--tiny` (the default without CUDA; what CI runs) shrinks every row to CPU sizes, so that the whole suite is known to
run: a tiny MMAVSR (training, decoding: 16 utterances, beam 2, batch 8) and a tiny Llama-shaped LLM built on meta and
quantized to NF4 the same way (bitsandbytes runs NF4 on the CPU); the qlora row then reports the child process' peak
resident memory (VmHWM), labelled as such, instead of GPU memory. With `--tiny` and a checkout, the training row runs
both sides at the released size (auto_avsr's `E2E` has no other), batch 1 x 1 s. Tiny figures check nothing: their
status is "n/a on CPU" (or "n/a (tiny)" on a GPU).

Status: ok / MISSED (a goal checked on a GPU at full size), n/a on CPU, not run (auto_avsr without a checkout), failed
(the row's error follows). Exit status: 1 when a row failed, 3 with `--fail-on-missed` when a goal was missed, else 0.
"""

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark scripts, imported by the rows

ROWS = ("training", "decoding", "qlora", "llm")
RESULT = "GPU_SUITE_ROW "  # the prefix of a child's result line
VOCAB_SIZE = 5049  # auto_avsr's unigram vocabulary; eos = sos = 5048
LRS3_TEST_UTTERANCES = 1321
GOALS = {"training": 1.5, "decoding": 60.0, "qlora": 10.0}

# tiny sizes of the CPU run (the released architecture's shape, every size shrunk)
TINY_MMAVSR = dict(
    modality="video",
    frontend_channels=4,
    frontend_layers=[1, 1, 1, 1],
    hidden_size=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    conv_kernel_size=5,
    text_config=dict(
        vocab_size=VOCAB_SIZE,
        d_model=32,
        num_hidden_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        bos_token_id=VOCAB_SIZE - 1,
        eos_token_id=VOCAB_SIZE - 1,
        decoder_start_token_id=VOCAB_SIZE - 1,
    ),
)
TINY_LLAMA = dict(
    model_type="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)


def compression_config(rate: int) -> dict:
    """The config fields that set the LLM decoder's compression rate (encoder frames per LLM input embedding) of the
    rows' audio model: `rate` adjacent frames stacked into one embedding (`llm_compression="stack"`)."""
    return {"llm_compression": "stack", "llm_compression_rates": {"audio": rate}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU sizes (the default when CUDA is not available)")
    parser.add_argument(
        "--auto-avsr",
        default=os.environ.get("AUTO_AVSR") or None,
        help="an mpc001/auto_avsr checkout for the training row (default: $AUTO_AVSR; without it auto_avsr is not run)",
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="the rows to run (default all)")
    parser.add_argument(
        "--precision", choices=("bf16", "fp32"), help="training and decoding rows (default: bf16 on CUDA)"
    )
    parser.add_argument("--train-batch", type=int, help="utterances per training batch (16; tiny 2, 1 with auto_avsr)")
    parser.add_argument("--train-seconds", type=float, help="seconds per training utterance (4; tiny 1)")
    parser.add_argument("--train-steps", type=int, help="timed training steps per side (10; tiny 2)")
    parser.add_argument("--train-warmup", type=int, help="untimed training steps first (3; tiny 1)")
    parser.add_argument("--utterances", type=int, help=f"utterances decoded ({LRS3_TEST_UTTERANCES}; tiny 16)")
    parser.add_argument("--beam", type=int, help="beam width (40; tiny 2)")
    parser.add_argument("--ctc-weight", type=float, default=0.1, help="joint CTC weight of decoding (0.1)")
    parser.add_argument("--decode-batch-size", type=int, help="utterances per generate() call (32; tiny 8)")
    parser.add_argument("--tokens-per-second", type=float, default=5.0, help="label and hypothesis tokens a second")
    parser.add_argument("--qlora-steps", type=int, help="timed QLoRA steps after one warm-up (3; tiny 1)")
    parser.add_argument("--rates", nargs="+", type=int, default=[1, 2, 4, 5], help="LLM compression rates")
    parser.add_argument("--llm-seconds", type=float, help="seconds per utterance of the LLM rows (2; tiny 1)")
    parser.add_argument("--llm-steps", type=int, help="timed LLM training steps per rate (3; tiny 1)")
    parser.add_argument("--llm-new-tokens", type=int, help="tokens generated per utterance (20; tiny 4)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each row (default: torch's)")
    parser.add_argument("--row-timeout", type=int, help="seconds a row may run (1800; tiny 300)")
    parser.add_argument("--fail-on-missed", action="store_true", help="exit 3 when a goal is missed")
    parser.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # a child: measure one row
    args = parser.parse_args(argv)
    import torch

    args.cuda = torch.cuda.is_available()
    args.tiny = args.tiny or not args.cuda
    tiny, full = args.tiny, not args.tiny
    defaults = dict(
        precision="bf16" if args.cuda else "fp32",
        train_batch=16 if full else (1 if args.auto_avsr else 2),
        train_seconds=4.0 if full else 1.0,
        train_steps=10 if full else 2 - bool(args.auto_avsr),
        train_warmup=3 if full else 1,
        utterances=LRS3_TEST_UTTERANCES if full else 16,
        beam=40 if full else 2,
        decode_batch_size=32 if full else 8,
        qlora_steps=3 if full else 1,
        llm_seconds=2.0 if full else 1.0,
        llm_steps=3 if full else 1,
        llm_new_tokens=20 if full else 4,
        row_timeout=300 if tiny else 1800,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def device_of(args) -> str:
    return "cuda" if args.cuda else "cpu"


def autocast(args):
    import torch

    device = device_of(args)
    return torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def synchronize(args) -> None:
    import torch

    if args.cuda:
        torch.cuda.synchronize()


def release(args) -> None:
    import torch

    gc.collect()
    if args.cuda:
        torch.cuda.empty_cache()


def status(args, met: bool | None) -> str:
    if met is None:
        return "no goal"
    if not args.cuda:
        return "n/a on CPU"
    if args.tiny:
        return "n/a (tiny)"
    return "ok" if met else "MISSED"


def peak_rss_mib() -> float:
    from bench_qlora_memory import rss_mib

    return rss_mib()[1]


# --- training: MMAVSR against auto_avsr ---


def row_training(args) -> list[dict]:
    import torch
    from bench_auto_avsr_speed import build_models, ours_loss, reference_loss
    from bench_training_throughput import median_step_seconds

    from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

    device = device_of(args)
    torch.manual_seed(0)
    if args.auto_avsr:  # auto_avsr's E2E has one size, the released one: so has MMAVSR here, even with --tiny
        model, reference = build_models("video", str(Path(args.auto_avsr).resolve()))
        size = "released VSR size"
    elif args.tiny:
        model, reference = MMAVSRForConditionalGeneration(MMAVSRConfig(**TINY_MMAVSR)), None
        size = "tiny VSR"
    else:
        model, reference = MMAVSRForConditionalGeneration(MMAVSRConfig(modality="video")), None
        size = "released VSR size"
    model.config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(0)
    frames = int(args.train_seconds * 25)
    x = torch.randn(args.train_batch, frames, 1, 88, 88, generator=generator).to(device)
    tokens = max(2, math.ceil(args.train_seconds * args.tokens_per_second))
    labels = torch.randint(1, VOCAB_SIZE - 1, (args.train_batch, tokens), generator=generator).to(device)

    def speech_per_second(network, loss_fn) -> tuple[float, float]:
        network.to(device).train()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.03)

        def step():
            with autocast(args):
                loss = loss_fn(network, "video", x, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if args.cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = median_step_seconds(step, args.train_steps, args.train_warmup, args.cuda)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.cuda else peak_rss_mib() / 1024
        return args.train_batch * args.train_seconds / seconds, peak

    def measure(network, loss_fn) -> tuple[float, float]:
        figures = speech_per_second(network, loss_fn)  # its optimizer's states are freed on return
        if reference is not None:
            network.cpu()  # one side on the device at a time
        release(args)
        return figures

    def memory(*peaks: float) -> str:
        if args.cuda:
            return f"peak CUDA {' / '.join(f'{p:.1f}' for p in peaks)} GiB"
        return f"process peak RSS {peaks[-1]:.1f} GiB"  # the process' high-water mark, not one side's

    ours, ours_peak = measure(model, ours_loss)
    settings = (
        f"{size}, batch {args.train_batch} x {args.train_seconds:g} s, {args.precision}, attention "
        f"{model.config._attn_implementation}, median of {args.train_steps} steps"
    )
    name = "training vs auto_avsr (speech s/s)"
    goal = f">= {GOALS['training']:g}x auto_avsr"
    if reference is None:
        measured = (
            f"auto_avsr not run: no checkout (set AUTO_AVSR or --auto-avsr PATH); MMAVSR alone {ours:.2f} speech s/s "
            f"({settings}; {memory(ours_peak)})"
        )
        return [dict(row=name, measured=measured, goal=goal, status="not run")]
    theirs, theirs_peak = measure(reference, reference_loss)
    ratio = ours / theirs
    measured = (
        f"{ratio:.2f}x: MMAVSR {ours:.2f} / auto_avsr {theirs:.2f} speech s/s ({settings}; auto_avsr's own "
        f"attention; {memory(ours_peak, theirs_peak)})"
    )
    return [dict(row=name, measured=measured, goal=goal, status=status(args, ratio >= GOALS["training"]))]


# --- decoding: LRS3's test set, batched beam search + CTC ---


def lrs3_test_frames(count: int, seed: int = 0) -> list[int]:
    """`count` utterance lengths in 25 fps frames, drawn like LRS3's test set as assumed here: log-normal durations of
    median 2.3 s (sigma 0.4), clipped to 1-6 s; mean about 2.5 s, 1,321 of them about 3,300 s."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    seconds = torch.empty(count, dtype=torch.float64).log_normal_(math.log(2.3), 0.4, generator=generator)
    return [int(round(s * 25)) for s in seconds.clamp(1.0, 6.0).tolist()]


def row_decoding(args) -> list[dict]:
    import torch

    from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

    device = device_of(args)
    torch.manual_seed(0)
    config = MMAVSRConfig(**TINY_MMAVSR) if args.tiny else MMAVSRConfig(modality="video")
    config._attn_implementation = "sdpa"
    model = MMAVSRForConditionalGeneration(config).to(device).eval()
    frames = sorted(lrs3_test_frames(args.utterances), reverse=True)  # longest first: the least padding
    batches = [frames[i : i + args.decode_batch_size] for i in range(0, len(frames), args.decode_batch_size)]
    generator = torch.Generator().manual_seed(0)

    def decode(lengths: list[int]) -> float:
        longest = max(lengths)
        video = torch.randn(len(lengths), longest, 1, 88, 88, generator=generator)
        mask = torch.arange(longest)[None] < torch.tensor(lengths)[:, None]
        video = (video * mask[..., None, None, None]).to(device)
        # random weights never stop by themselves: every hypothesis is as long as the batch's longest transcript
        tokens = min(math.ceil(longest / 25 * args.tokens_per_second), min(lengths) - 1)
        synchronize(args)
        start = time.perf_counter()
        with torch.inference_mode(), autocast(args):
            ids = model.generate(
                pixel_values_videos=video,
                video_attention_mask=mask.long().to(device),
                num_beams=args.beam,
                ctc_weight=args.ctc_weight,
                min_new_tokens=tokens,
                max_new_tokens=tokens,
            )
        synchronize(args)
        assert ids.shape == (len(lengths), tokens + 1), f"decoded {tuple(ids.shape)}, expected {tokens} new tokens"
        return time.perf_counter() - start

    decode(batches[0])  # warm-up (kernels, allocator), untimed
    if args.cuda:
        torch.cuda.reset_peak_memory_stats()
    total = sum(decode(lengths) for lengths in batches)
    speech = sum(frames) / 25
    peak = (
        f"peak CUDA {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        if args.cuda
        else f"peak RSS {peak_rss_mib():.0f} MiB"
    )
    measured = (
        f"{total:.2f} s for {len(frames)} utterances ({speech:.0f} s of speech, {min(frames) / 25:.2f}-"
        f"{max(frames) / 25:.2f} s, mean {speech / len(frames):.2f} s; {'tiny' if args.tiny else 'released'} VSR, "
        f"beam {args.beam}, CTC {args.ctc_weight:g}, batch {args.decode_batch_size}, {args.precision}; RTF "
        f"{total / speech:.4f}; {peak})"
    )
    name = f"decoding {len(frames)} utterances, beam {args.beam} + CTC (total s)"
    goal = f"<= {GOALS['decoding']:g} s for {LRS3_TEST_UTTERANCES}"
    met = total <= GOALS["decoding"] and len(frames) >= LRS3_TEST_UTTERANCES
    return [dict(row=name, measured=measured, goal=goal, status=status(args, met))]


# --- QLoRA: peak memory of a 4-bit Llama-2-7B-shaped decoder in training ---


def tiny_llm_overrides() -> dict:
    """The tiny audio encoder of bench_qlora_memory's CPU run, with the 7B run's CTC weight (its CTC head trains)."""
    from bench_qlora_memory import TINY_AUDIO_ENCODER

    return {**TINY_AUDIO_ENCODER, "ctc_weight": 0.1}


def row_qlora(args) -> list[dict]:
    import torch

    name = "7B QLoRA training peak GPU memory"
    goal = f"<= {GOALS['qlora']:g} GB"
    if args.tiny:
        from bench_qlora_memory import batch, build, train_steps

        model = build("qlora", device_of(args), text_config=TINY_LLAMA, **tiny_llm_overrides())
        if args.cuda:
            torch.cuda.reset_peak_memory_stats()
        times, _ = train_steps(model, batch(model, seconds=1.0, tokens=10), args.qlora_steps)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        figure = (
            f"peak CUDA {torch.cuda.max_memory_allocated() / 1e9:.3f} GB"
            if args.cuda
            else f"peak RSS {peak_rss_mib():.0f} MiB (CPU process, imports included; not GPU memory)"
        )
        measured = (
            f"tiny Llama-shaped LLM (4-bit: {model.is_llm_quantized}), {figure}; {statistics.median(times):.2f} s/step, "
            f"{trainable:.2f} M trainable"
        )
        return [dict(row=name, measured=measured, goal=goal, status=status(args, False))]
    from bench_qlora_memory import run

    figures = run("qlora", args.qlora_steps)
    peak_gb = figures["peak_memory_GiB"] * 2**30 / 1e9
    measured = (
        f"{peak_gb:.2f} GB ({figures['peak_memory_GiB']:.2f} GiB) allocated, {figures['peak_reserved_GiB']:.2f} GiB "
        f"reserved; {figures['step_s'] * 1000:.0f} ms/step, {figures['trainable_params_M']:.1f} M trainable (batch "
        f"2 x 2 s, auto_avsr-size audio encoder + Llama-2-7B shape)"
    )
    return [dict(row=name, measured=measured, goal=goal, status=status(args, peak_gb <= GOALS["qlora"]))]


# --- the LLM decoder at each compression rate ---


def row_llm(args) -> list[dict]:
    import torch
    from bench_qlora_memory import LLAMA_7B, batch, build, train_steps

    device = device_of(args)
    rows = []
    for rate in args.rates:
        release(args)
        torch.manual_seed(0)
        overrides = tiny_llm_overrides() if args.tiny else {}
        text_config = TINY_LLAMA if args.tiny else LLAMA_7B
        model = build("qlora", device, text_config=text_config, **overrides, **compression_config(rate))
        size = 2
        tokens = max(2, math.ceil(args.llm_seconds * args.tokens_per_second))
        inputs = batch(model, seconds=args.llm_seconds, tokens=tokens, size=size)
        positions = []
        hook = model.model.decoder.projector.register_forward_hook(lambda m, i, out: positions.append(out.shape[1]))
        times, _ = train_steps(model, inputs, args.llm_steps)
        hook.remove()
        media_tokens = positions[-1] / args.llm_seconds  # LLM input tokens a second of media
        training = size * args.llm_seconds / statistics.median(times)
        model.eval()
        new = args.llm_new_tokens
        audio = dict(input_features=inputs["input_features"], attention_mask=inputs["attention_mask"])
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.cuda):
            model.generate(**audio, max_new_tokens=2, min_new_tokens=2, num_beams=1, ctc_weight=0.0)  # warm-up
            synchronize(args)
            start = time.perf_counter()
            ids = model.generate(**audio, max_new_tokens=new, min_new_tokens=new, num_beams=1, ctc_weight=0.0)
            synchronize(args)
            generation = time.perf_counter() - start
        # the LLM decoder returns the new tokens without a start token
        assert ids.shape == (size, new), f"generated {tuple(ids.shape)}, expected {new} tokens each"
        measured = (
            f"{media_tokens:.1f} LLM input tokens/s of media; training {training:.2f} speech s/s (QLoRA, batch {size} x "
            f"{args.llm_seconds:g} s); generation {size * new / generation:.1f} tokens/s (greedy, batch {size}, {new} "
            f"new tokens, prefill included)"
        )
        llm = "tiny Llama-shaped" if args.tiny else "Llama-2-7B-shaped 4-bit"
        rows.append(
            dict(row=f"LLM decoder ({llm}), compression rate {rate}", measured=measured, goal="-", status="no goal")
        )
        del model, inputs
    return rows


# --- the parent: one child process per row, one table ---


def run_row(name: str, argv: list[str], timeout: int) -> list[dict]:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--row", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [dict(row=name, measured=f"failed: ran over {timeout} s (--row-timeout)", goal="", status="failed")]
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    error = done.stderr.strip().splitlines()
    return [dict(row=name, measured=f"failed: {error[-1] if error else done.returncode}", goal="", status="failed")]


def machine(args) -> str:
    import torch
    import transformers

    device = torch.cuda.get_device_name() if args.cuda else f"CPU ({os.cpu_count()} cores)"
    return (
        f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads or torch.get_num_threads()} thread(s), {'tiny' if args.tiny else 'full'} sizes, "
        f"{args.precision}; load average {os.getloadavg()[0]:.1f}"
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.row:
        rows = globals()[f"row_{args.row}"](args)
        print(RESULT + json.dumps(rows), flush=True)
        return 0
    print(f"GPU suite on {machine(args)}", flush=True)
    start = time.perf_counter()
    rows = []
    for name in args.rows:
        row_start = time.perf_counter()
        measured = run_row(name, argv, args.row_timeout)
        for row in measured:
            row["seconds"] = time.perf_counter() - row_start
        rows.extend(measured)
        print(f"  {name}: done in {time.perf_counter() - row_start:.0f} s", flush=True)
    print()
    print("| row | measured | goal | status |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['row']} | {row['measured']} | {row['goal']} | {row['status']} |")
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}")
    if any(row["status"] == "failed" for row in rows):
        return 1
    if args.fail_on_missed and any(row["status"] == "MISSED" for row in rows):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
