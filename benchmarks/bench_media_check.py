"""The up-front media check's cost: `load_auto_avsr_dataset` with `check_media=False` (files present and not empty)
against `check_media=True` (every mp4's header and first frame, every wav's header and first samples, and the layout's
format) with 1, 2 and 8 threads.

`--num-clips` clips of 2 s (50 frames of 96x96 noise at 25 fps, H.264, and a 16 kHz wav: the auto_avsr layout's
sizes) are written into a temporary folder, or read from `--corpus-dir` (any auto_avsr-layout folder with
`labels/--label-file`).

    python benchmarks/bench_media_check.py                   # 300 clips
    python benchmarks/bench_media_check.py --corpus-dir DATA --label-file lrs3_train.csv --workers 1 8 16

Prints seconds and clips/s per setting and the load average (a busy machine slows every row alike).
"""

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from mmavsr_processing import MMAVSRTokenizer, load_auto_avsr_dataset, write_audio, write_video


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-clips", type=int, default=300, help="clips to write (without --corpus-dir)")
    parser.add_argument("--corpus-dir", default=None, help="an existing auto_avsr-layout folder")
    parser.add_argument("--label-file", default="bench.csv", help="label CSV in CORPUS/labels/")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8], help="thread counts to time")
    return parser.parse_args(argv)


def write_clips(root: Path, count: int, label_file: str) -> None:
    tokenizer = MMAVSRTokenizer.from_auto_avsr()
    ids = " ".join(map(str, tokenizer("BIN BLUE AT F TWO NOW", add_special_tokens=False)["input_ids"]))
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        relative = f"bench/clip{index:05d}.mp4"
        write_video(root / "demo" / relative, (rng.random((50, 96, 96)) * 255).astype(np.uint8))
        write_audio((root / "demo" / relative).with_suffix(".wav"), 0.1 * rng.standard_normal(32000))
        lines.append(f"demo,{relative},50,{ids}")
    (root / "labels").mkdir(exist_ok=True)
    (root / "labels" / label_file).write_text("\n".join(lines) + "\n")


def timed(label: str, run) -> None:
    start = time.perf_counter()
    clips = len(run())
    seconds = time.perf_counter() - start
    print(f"{label:<32} {clips:>7} {seconds:>8.2f} {clips / seconds:>9.1f}")


def main(argv=None):
    args = parse_args(argv)
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.corpus_dir or tmp)
        label_file = root / "labels" / args.label_file
        if not label_file.is_file():
            start = time.perf_counter()
            write_clips(root, args.num_clips, args.label_file)
            print(f"wrote {args.num_clips} clips in {time.perf_counter() - start:.1f} s")
        tokenizer = MMAVSRTokenizer.from_auto_avsr()
        print(f"{label_file}; {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}")
        print(f"{'setting':<32} {'clips':>7} {'seconds':>8} {'clips/s':>9}")
        timed("check_media=False", lambda: load_auto_avsr_dataset(root, label_file, tokenizer, check_media=False))
        for workers in args.workers:
            timed(
                f"check_media=True, {workers} thread(s)",
                lambda: load_auto_avsr_dataset(root, label_file, tokenizer, num_workers=workers),
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
