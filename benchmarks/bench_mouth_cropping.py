"""Frames per second of mouth cropping and of `prepare`, for the mediapipe (auto_avsr's preparation) and the Haar
detectors.

1. Cropping alone: `MouthCropper(detector=..., detection_stride=...)` on decoded frames of a real face video
   (`tests/face_video.moving_face_clip`: the astronaut photograph moved, turned and zoomed, 60 frames at 25 fps) at
   each `--sizes` resolution, the face as large in the picture at each; one process.
2. Preparation end to end (`prepare_dataset`: decode, 25 fps, crop, write the mp4 and wav): `--num-clips` such clips
   at the first size, with each `--workers` count, after a warm-up run that starts the workers' server process (it
   imports mmavsr once per process).

    python benchmarks/bench_mouth_cropping.py
    python benchmarks/bench_mouth_cropping.py --sizes 256x256 720x1280 --strides 1 4 --workers 1 2 --num-clips 8

Prints frames/s per setting and the load average (a busy machine slows every row alike). Needs the `crop` extra.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmavsr_processing import MouthCropper, write_video
from mmavsr_processing.prepare import prepare_dataset


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from face_video import moving_face_clip  # noqa: E402 - the tests' real face video


DETECTORS = ("mediapipe", "haar")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x256", "720x1280"], help="frame sizes HEIGHTxWIDTH")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 4], help="detection strides to time")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="prepare --num-workers to time")
    parser.add_argument("--num-clips", type=int, default=8, help="clips prepared per setting")
    parser.add_argument("--repeats", type=int, default=2, help="cropping runs per setting (the fastest counts)")
    return parser.parse_args(argv)


def clip_at(size: tuple[int, int]) -> np.ndarray:
    return moving_face_clip(size=size, zoom=size[0] / 256)[0]


def time_cropping(sizes, strides, repeats) -> None:
    print(f"\n{'cropping only (1 process)':<28} {'size':>10} {'stride':>6} {'frames':>6} {'s':>7} {'frames/s':>9}")
    for size in sizes:
        frames = clip_at(size)
        for detector in DETECTORS:
            for stride in strides:
                cropper = MouthCropper(detector=detector, detection_stride=stride)
                cropper(frames[:2])  # warm up: models loaded
                best = min(_seconds(cropper, frames) for _ in range(repeats))
                print(
                    f"{detector:<28} {size[0]:>4}x{size[1]:<5} {stride:>6} {len(frames):>6} {best:>7.2f} "
                    f"{len(frames) / best:>9.1f}"
                )


def _seconds(cropper, frames) -> float:
    start = time.perf_counter()
    cropper(frames)
    return time.perf_counter() - start


def time_preparation(size, workers, num_clips, root: Path) -> None:
    frames = clip_at(size)
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(len(frames) * 640) / 16000)).astype(np.float32)
    raw = root / "raw"
    for index in range(num_clips):
        write_video(raw / f"spk/clip{index:03d}.mp4", frames, fps=25, audio=tone)
        (raw / f"spk/clip{index:03d}.txt").write_text("Text:  WE WENT TO THE MOON\n")
    total = num_clips * len(frames)
    # workers are forked from a server process that imports mmavsr once per process (seconds): started here first
    start = time.perf_counter()
    prepare_dataset(raw, root / "warm-up", "bench", split="test", num_workers=2, detector="haar")
    print(f"\nworker server started and {num_clips} clips prepared in {time.perf_counter() - start:.1f} s (warm-up)")
    print(f"\n{'prepare (decode, crop, write)':<28} {'size':>10} {'workers':>7} {'frames':>6} {'s':>7} {'frames/s':>9}")
    for detector in DETECTORS:
        for count in workers:
            out = root / f"out-{detector}-{count}"
            start = time.perf_counter()
            summary = prepare_dataset(raw, out, "bench", split="test", num_workers=count, detector=detector)
            seconds = time.perf_counter() - start
            assert summary.written == num_clips, summary.skipped
            print(
                f"{detector:<28} {size[0]:>4}x{size[1]:<5} {count:>7} {total:>6} {seconds:>7.2f} "
                f"{total / seconds:>9.1f}"
            )


def main(argv=None):
    args = parse_args(argv)
    sizes = [tuple(int(side) for side in size.split("x")) for size in args.sizes]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        time_preparation(sizes[0], args.workers, args.num_clips, Path(folder))
    time_cropping(sizes, args.strides, args.repeats)
    print(f"\nload average after: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
