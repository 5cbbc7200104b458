"""Decoding real-time factor of `generate()`: greedy and beam search, with and without joint CTC prefix scoring.

RTF = decoding wall time / duration of the speech decoded (below 1: faster than real time). Each model decodes one
utterance of `--seconds` seconds (batch 1, random input) with each setting; the models have random weights, so the
hypothesis length is fixed to `--tokens` tokens (`min_new_tokens = max_new_tokens`: a trained model stops at its
own eos) and every setting decodes the same number of steps. The encoder runs inside each timing.

    python benchmarks/bench_decoding_rtf.py
    python benchmarks/bench_decoding_rtf.py --models demo-avsr-resnet auto_avsr-vsr --beams 1 5 40 --ctc-weights 0 0.1

Models as in bench_training_throughput.py: the demo presets and auto_avsr's released sizes (`auto_avsr-vsr`, ...).
The peak resident memory of the whole run is printed at the end (and the peak GPU memory on CUDA).
"""

import argparse
import os
import resource
import statistics
import time

import torch
from bench_training_throughput import DEMO_MODELS, FRAME_RATE, build, make_batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*DEMO_MODELS, "auto_avsr-vsr"])
    parser.add_argument("--seconds", type=float, default=3.0, help="utterance length")
    parser.add_argument("--tokens", type=int, default=30, help="hypothesis length in tokens (about 10 a second)")
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--ctc-weights", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the median is printed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def decode_seconds(model, inputs: dict, beams: int, ctc_weight: float, tokens: int, repeats: int) -> float:
    """Median wall time of `generate` over `repeats` runs (after one untimed run)."""
    times = []
    for run in range(repeats + 1):
        start = time.perf_counter()
        with torch.no_grad():
            ids = model.generate(
                **inputs, num_beams=beams, ctc_weight=ctc_weight, min_new_tokens=tokens, max_new_tokens=tokens
            )
        if inputs[next(iter(inputs))].is_cuda:
            torch.cuda.synchronize()
        if run:
            times.append(time.perf_counter() - start)
    assert ids.shape[-1] >= tokens, f"decoded {ids.shape[-1]} tokens, expected {tokens}"
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"decoding real-time factor on {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); one "
        f"{args.seconds:g} s utterance, {args.tokens} tokens, median of {args.repeats}; load average before: "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'model':<20} {'beams':>5} {'ctc_weight':>10} {'seconds':>8} {'RTF':>7}")
    for name in args.models:
        torch.manual_seed(0)
        model, crop = build(name)
        model.to(args.device).eval()
        inputs = make_batch(model.config, crop, 1, args.seconds, torch.Generator().manual_seed(0))
        inputs = {k: v.to(args.device) for k, v in inputs.items() if k != "labels"}
        # the encoder's frames cap a hypothesis' length (auto_avsr's maxlen); keep --tokens below them
        tokens = min(args.tokens, int(args.seconds * FRAME_RATE) - 1)
        for beams in args.beams:
            for ctc_weight in args.ctc_weights:
                seconds = decode_seconds(model, inputs, beams, ctc_weight, tokens, args.repeats)
                print(f"{name:<20} {beams:>5} {ctc_weight:>10g} {seconds:>8.3f} {seconds / args.seconds:>7.3f}")
        del model
    peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if args.device.startswith("cuda"):
        peak += f", peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    print(f"{peak}; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
