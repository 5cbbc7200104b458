"""Training throughput (video frames per second, forward + backward + AdamW step) and peak memory per model.

Models: the demo presets of `hub_configs/demo-*.json` and auto_avsr's released sizes (`auto_avsr-vsr`,
`auto_avsr-asr`, `auto_avsr-avsr`: ResNet frontends, 12-layer Conformer of width 768, 6-layer decoder), all with
random weights. Each model trains on random batches of `--batch-size` clips of `--seconds` seconds (25 fps video at
the preset's crop size, 16 kHz audio, 15 label tokens a second) in a process of its own, so that its peak resident
memory (`resource.getrusage`) is its own; on CUDA the peak allocated GPU memory is printed too.

    python benchmarks/bench_training_throughput.py
    python benchmarks/bench_training_throughput.py --models demo-vsr-resnet auto_avsr-vsr --batch-size 2 --steps 3

frames/s counts video frames (25 a second of speech; for audio-only models the 25 fps frames the audio encoder
outputs), so it compares across modalities; "speech s/s" is the same figure in seconds of speech per second.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from mmavsr_processing.media_constants import SAMPLING_RATE
from mmavsr_processing.media_constants import VIDEO_FPS as FRAME_RATE


DEMO_MODELS = ("demo-vsr-resnet", "demo-asr-resnet1d", "demo-avsr-resnet")
RELEASED_MODELS = {"auto_avsr-vsr": "video", "auto_avsr-asr": "audio", "auto_avsr-avsr": "audiovisual"}
TOKENS_PER_SECOND = 15


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*DEMO_MODELS, "auto_avsr-vsr", "auto_avsr-asr"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # measure one model (the child process)
    return parser.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build(name: str):
    """`(model, (crop height, crop width))` of a preset name or a released size."""
    from mmavsr_training.presets import build_model_from_preset, load_preset
    from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

    if name in RELEASED_MODELS:
        return MMAVSRForConditionalGeneration(MMAVSRConfig(modality=RELEASED_MODELS[name])), (88, 88)
    crop = load_preset(name)[1].get("video_processor", {}).get("crop_size", {"height": 88, "width": 88})
    return build_model_from_preset(name, pretrained=False), (crop["height"], crop["width"])


def make_batch(config, crop, batch_size: int, seconds: float, generator) -> dict:
    import torch

    frames = int(seconds * FRAME_RATE)
    batch = {}
    if config.vision_encoder:
        batch["pixel_values_videos"] = torch.randn(batch_size, frames, 1, *crop, generator=generator)
        batch["video_attention_mask"] = torch.ones(batch_size, frames, dtype=torch.long)
    if config.audio_encoder:
        samples = frames * SAMPLING_RATE // FRAME_RATE
        batch["input_features"] = torch.randn(batch_size, samples, generator=generator)
        batch["attention_mask"] = torch.ones(batch_size, samples, dtype=torch.long)
    tokens = max(2, int(seconds * TOKENS_PER_SECOND))
    vocab, eos = config.text_config.vocab_size, config.text_config.eos_token_id
    labels = torch.randint(1, vocab - 1, (batch_size, tokens), generator=generator)
    labels[:, -1] = eos
    batch["labels"] = labels
    return batch


def median_step_seconds(step, steps: int, warmup: int, cuda: bool) -> float:
    """Run `step()` `warmup` untimed times, then `steps` timed times (CUDA synchronised); the median step time."""
    import torch

    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(args) -> dict:
    """Train `args.one` for warmup + steps steps; returns its figures."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, crop = build(args.one)
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = {
        k: v.to(args.device)
        for k, v in make_batch(model.config, crop, args.batch_size, args.seconds, generator).items()
    }
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    step_seconds = median_step_seconds(step, args.steps, args.warmup, args.device.startswith("cuda"))
    loss = losses[-1]
    frames = args.batch_size * int(args.seconds * FRAME_RATE)
    result = {
        "model": args.one,
        "parameters": model.num_parameters(),
        "step_s": step_seconds,
        "frames_per_s": frames / step_seconds,
        "speech_s_per_s": frames / FRAME_RATE / step_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "loss": float(loss),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args)))
        return
    import torch

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"training throughput on {device}, torch {torch.__version__}, {args.threads or torch.get_num_threads()} "
        f"thread(s); batch {args.batch_size} x {args.seconds:g} s clips, median of {args.steps} steps after "
        f"{args.warmup} warm-up; load average before: {os.getloadavg()[0]:.1f}"
    )
    header = f"{'model':<20} {'params':>12} {'step s':>8} {'frames/s':>9} {'speech s/s':>10} {'peak RSS MiB':>12}"
    print(header + (f" {'peak CUDA MiB':>13}" if args.device.startswith("cuda") else ""))
    for name in args.models:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--one",
            name,
            "--batch-size",
            str(args.batch_size),
            "--seconds",
            str(args.seconds),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
        ] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(
                f"{name:<20} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            )
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        line = (
            f"{name:<20} {r['parameters']:>12,} {r['step_s']:>8.3f} {r['frames_per_s']:>9.1f} "
            f"{r['speech_s_per_s']:>10.2f} {r['peak_rss_mib']:>12.0f}"
        )
        print(line + (f" {r['peak_cuda_mib']:>13.0f}" if "peak_cuda_mib" in r else ""))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
