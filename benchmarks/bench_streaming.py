"""Streaming at scale: time to the first training batch and resident memory against the number of rows.

A few small real clips (noise video, 96x96 at 25 fps, and its 16 kHz wav, `--clip-frames` frames) are written to a
temporary folder, then a parquet dataset of N rows that name them by path (`video`, `audio`, `text`, `num_frames`,
`id`; files of 10,000 rows, row groups of 1,000) for each N of `--sizes`. Each measurement runs in a fresh Python
process, reading the dataset as `run_speech_recognition_avsr.py --dataset_name DIR` does:

- `streaming`: `load_avsr_dataset(DIR, streaming=True)` -> `shard_stream` (seeded shard order + 1,000-row shuffle
  buffer) -> `MaxFramesStreamBatcher(max_frames)` -> `streaming_dataloader` -> `MMAVSRDataCollator` (auto_avsr's
  processor: grayscale, 88x88 crop, raw audio): seconds to the first batch (after the imports and the processor),
  to `--batches` more batches, and the process's peak resident memory (VmHWM) before the dataset is opened and
  after the batches.
- `map-style` (for contrast, `--map-style`): `load_avsr_dataset(DIR)` without streaming, which converts the
  parquet files into datasets' arrow cache (a fresh cache folder each run) before the first batch.

    python benchmarks/bench_streaming.py                               # 1,000 and 150,000 rows, streaming
    python benchmarks/bench_streaming.py --sizes 1000 150000 --map-style --repeats 3

Prints one line per size and path: the medians over `--repeats` rounds (the sizes alternate within a round), and
each round's time to the first batch.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


ROWS_PER_FILE = 10_000
ROW_GROUP = 1_000
WORDS = ["BIN", "BLUE", "AT", "NOW", "PLACE", "RED", "WITH", "GREEN"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 150_000], help="rows of each dataset")
    parser.add_argument("--num-media", type=int, default=8, help="distinct clips the rows name")
    parser.add_argument("--clip-frames", type=int, default=50, help="frames a clip (25 fps)")
    parser.add_argument("--max-frames", type=int, default=400, help="frames a batch (--max-frames)")
    parser.add_argument("--batches", type=int, default=10, help="batches read after the first")
    parser.add_argument("--map-style", action="store_true", help="also measure the non-streaming load")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the sizes (alternating); medians printed")
    parser.add_argument("--work-dir", default=None, help="where to write the media and datasets (default: a temp dir)")
    parser.add_argument("--measure", nargs=3, metavar=("MODE", "DIR", "CACHE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_media(folder: Path, count: int, frames: int) -> list[tuple[str, str]]:
    from mmavsr_processing import write_audio, write_video

    generator = np.random.default_rng(0)
    files = []
    for index in range(count):
        video, audio = folder / f"clip{index}.mp4", folder / f"clip{index}.wav"
        write_video(video, (generator.random((frames, 96, 96)) * 255).astype(np.uint8))
        write_audio(audio, (0.1 * generator.standard_normal(frames * 640)).astype(np.float32))
        files.append((str(video), str(audio)))
    return files


def write_rows(folder: Path, size: int, files: list[tuple[str, str]], frames: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    generator = np.random.default_rng(size)
    for start in range(0, size, ROWS_PER_FILE):
        count = min(ROWS_PER_FILE, size - start)
        picks = generator.integers(0, len(files), count)
        table = pa.table(
            {
                "id": [f"row{start + i}" for i in range(count)],
                "video": [files[p][0] for p in picks],
                "audio": [files[p][1] for p in picks],
                "text": [" ".join(generator.choice(WORDS, 4)) for _ in range(count)],
                "num_frames": np.full(count, frames, dtype=np.int32),
            }
        )
        pq.write_table(table, folder / f"train-{start // ROWS_PER_FILE:05d}.parquet", row_group_size=ROW_GROUP)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(mode: str, folder: str, cache: str, max_frames: int, batches: int) -> dict:
    """One measurement, in this (fresh) process."""
    start = time.perf_counter()
    import torch
    from transformers import TrainingArguments

    from mmavsr_processing import MMAVSRDataCollator, MMAVSRProcessor
    from mmavsr_processing.hf_datasets import (
        MaxFramesStreamBatcher,
        load_avsr_dataset,
        shard_stream,
        streaming_dataloader,
    )

    torch.set_num_threads(1)
    collator = MMAVSRDataCollator(MMAVSRProcessor.from_auto_avsr(), training=True)
    imported, base_rss = time.perf_counter(), peak_rss_mb()
    if mode == "streaming":
        stream = shard_stream(load_avsr_dataset(folder, streaming=True, cache_dir=cache), seed=0)
        batcher = MaxFramesStreamBatcher(stream, max_frames=max_frames, buffer_size=256)
        args = TrainingArguments(output_dir=cache, dataloader_num_workers=0, report_to="none", use_cpu=True)
        loader = iter(streaming_dataloader(batcher, collator, args))
    else:
        dataset = load_avsr_dataset(folder, cache_dir=cache)
        order = np.random.default_rng(0).permutation(len(dataset))
        per_batch = max(1, max_frames // int(dataset[0]["num_frames"]))
        loader = (
            collator([dataset[int(i)] for i in order[k : k + per_batch]]) for k in range(0, len(order), per_batch)
        )
    first = next(loader)
    first_batch = time.perf_counter()
    for _ in range(batches):
        next(loader)
    done = time.perf_counter()
    return {
        "import_s": imported - start,
        "first_batch_s": first_batch - imported,
        "batches_s": done - first_batch,
        "clips_in_first_batch": int(first["pixel_values_videos"].shape[0]),
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        mode, folder, cache = args.measure
        print(json.dumps(measure(mode, folder, cache, args.max_frames, args.batches)))
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work_dir or temporary)
        (work / "media").mkdir(parents=True, exist_ok=True)
        files = write_media(work / "media", args.num_media, args.clip_frames)
        modes = ["streaming"] + (["map-style"] if args.map_style else [])
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; clips of {args.clip_frames} frames, "
            f"--max-frames {args.max_frames}, first batch then {args.batches} more"
        )
        print(
            f"{'rows':>9} {'path':>10} {'parquet MB':>10} {'first batch s':>13} {'+batches s':>10} "
            f"{'clips/batch':>11} {'RSS before MB':>13} {'peak RSS MB':>11}"
        )
        folders = {}
        for size in args.sizes:
            folders[size] = work / f"rows{size}"
            write_rows(folders[size], size, files, args.clip_frames)
        runs = {(size, mode): [] for size in args.sizes for mode in modes}
        for _ in range(args.repeats):  # sizes alternate, so that a change in the machine's load hits all of them
            for size in args.sizes:
                for mode in modes:
                    cache = tempfile.mkdtemp(dir=work)
                    command = [
                        sys.executable,
                        __file__,
                        "--measure",
                        mode,
                        str(folders[size]),
                        cache,
                        "--max-frames",
                        str(args.max_frames),
                        "--batches",
                        str(args.batches),
                    ]
                    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                    runs[size, mode].append(json.loads(output.strip().splitlines()[-1]))
        for (size, mode), results in runs.items():
            megabytes = sum(f.stat().st_size for f in folders[size].iterdir()) / 2**20
            median = {key: float(np.median([r[key] for r in results])) for key in results[0]}
            first = "/".join(f"{r['first_batch_s']:.1f}" for r in results)
            print(
                f"{size:>9,} {mode:>10} {megabytes:>10.1f} {median['first_batch_s']:>13.2f} "
                f"{median['batches_s']:>10.2f} {median['clips_in_first_batch']:>11.0f} "
                f"{median['base_rss_mb']:>13.0f} {median['peak_rss_mb']:>11.0f}   runs: {first}",
                flush=True,
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
