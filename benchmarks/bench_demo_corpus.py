"""How fast the demo corpus is made: speech synthesis, mouth rendering and H.264 encoding of N clips.

    python benchmarks/bench_demo_corpus.py                    # 1,000 clips, one process per core (goal: <= 180 s)
    python benchmarks/bench_demo_corpus.py --num-clips 200 --num-workers 1
    python benchmarks/bench_demo_corpus.py --num-clips 200 --variant espeak-contour   # a variant (see demo_corpus)

Prints the wall time, clips per second and the corpus size on disk; the corpus goes to a temporary folder that is
removed afterwards unless --output-dir is given.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from mmavsr_processing.demo_corpus import MOUTH_MODELS, TTS_ENGINES, VARIANTS, generate_demo_corpus


GOAL_SECONDS_PER_1000 = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-clips", type=int, default=1000)
    parser.add_argument("--num-workers", type=int, default=None, help="default: one process per CPU core")
    parser.add_argument("--output-dir", default=None, help="keep the corpus here (default: a removed temp folder)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default", help="corpus variant (default)")
    parser.add_argument("--tts", choices=TTS_ENGINES, default=None, help="speech synthesiser (overrides --variant's)")
    parser.add_argument("--mouth-model", choices=MOUTH_MODELS, default=None, help="mouth model (overrides --variant's)")
    args = parser.parse_args()
    tts, mouth_model = VARIANTS[args.variant]
    tts, mouth_model = args.tts or tts, args.mouth_model or mouth_model

    with tempfile.TemporaryDirectory() as tmp:
        output_dir = Path(args.output_dir or tmp)
        start = time.perf_counter()
        label_files = generate_demo_corpus(
            output_dir, args.num_clips, num_workers=args.num_workers, progress=False, tts=tts, mouth_model=mouth_model
        )
        seconds = time.perf_counter() - start
        size = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file())
        frames = sum(int(line.split(",")[2]) for path in label_files.values() for line in path.read_text().splitlines())

    workers = args.num_workers or os.cpu_count()
    scaled = seconds * 1000 / args.num_clips
    print(
        f"demo corpus ({tts} speech, {mouth_model} mouth): {args.num_clips} clips "
        f"({frames / 25 / 60:.1f} min of audio-visual speech) in {seconds:.1f} s "
        f"with {workers} worker(s), {args.num_clips / seconds:.2f} clips/s, {size / 2**20:.1f} MiB on disk"
    )
    print(
        f"per 1,000 clips: {scaled:.0f} s (goal <= {GOAL_SECONDS_PER_1000:.0f} s: "
        f"{'met' if scaled <= GOAL_SECONDS_PER_1000 else 'NOT met'}); load average at the end: "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
