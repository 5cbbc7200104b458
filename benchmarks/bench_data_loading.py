"""Data loading speed (clips/s): the training data path against raw torchcodec decoding of the same files.

A demo corpus of `--num-clips` clips (auto_avsr layout: 96x96 mouth mp4 at 25 fps + 16 kHz wav, GRID sentences of
about 2 s) is generated into a temporary folder, or read from `--corpus-dir`. Each path reads every clip of its
training split once:

- `torchcodec decode`: `VideoDecoder(mp4)` all frames + `AudioDecoder(wav)` all samples; no processing.
- `PyAV + soundfile decode`: `media_io.read_video` + `read_audio`, which the training path reads with; no processing.
- `datasets columns + collator`: the loader's decoded `Video`/`Audio` columns (torchcodec) into
  `MMAVSRDataCollator` (processing included: grayscale, crop, normalisation, padding, labels).
- `ClipReader + collator`: what `run_speech_recognition_avsr.py` trains with: undecoded columns read by
  `ClipReader` (with the bad-input checks) and batched by the collator in a DataLoader with `--num-workers`.

    python benchmarks/bench_data_loading.py                       # 64 clips, batch 8, no workers
    python benchmarks/bench_data_loading.py --num-clips 200 --num-workers 2 --corpus-dir /tmp/demo

Prints clips/s and seconds of speech per second for each path, and the load average.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import datasets
import torch

from mmavsr_processing import MMAVSRProcessor, load_auto_avsr_dataset, read_audio, read_video
from mmavsr_processing.collation import ClipReader, MMAVSRDataCollator
from mmavsr_processing.demo_corpus import generate_demo_corpus
from mmavsr_processing.media_constants import SAMPLING_RATE, VIDEO_FPS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-clips", type=int, default=64, help="clips to generate (without --corpus-dir)")
    parser.add_argument("--corpus-dir", default=None, help="an existing demo corpus (or generate into it)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the collator paths")
    return parser.parse_args(argv)


def timed(label: str, clips: int, speech_seconds: float, run) -> None:
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(f"{label:<28} {clips:>6} {seconds:>8.2f} {clips / seconds:>8.1f} {speech_seconds / seconds:>10.1f}")


def torchcodec_decode(dataset) -> None:
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    for video, audio in zip(dataset["video"], dataset["audio"]):
        decoder = VideoDecoder(video["path"])
        decoder.get_frames_in_range(0, len(decoder))
        AudioDecoder(audio["path"]).get_all_samples()


def media_io_decode(dataset) -> None:
    for video, audio in zip(dataset["video"], dataset["audio"]):
        read_video(video["path"])
        read_audio(audio["path"])


def collate_all(dataset, processor, batch_size: int, num_workers: int) -> None:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=MMAVSRDataCollator(processor)
    )
    for batch in loader:
        assert batch["pixel_values_videos"].shape[0] <= batch_size


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.corpus_dir or tmp)
        if not (root / "labels" / f"{args.split}.csv").is_file():
            start = time.perf_counter()
            generate_demo_corpus(root, args.num_clips, progress=False)
            print(f"generated {args.num_clips} demo clips in {time.perf_counter() - start:.1f} s")
        dataset = load_auto_avsr_dataset(root, root / "labels" / f"{args.split}.csv")
        undecoded = dataset.cast_column("video", datasets.Video(decode=False)).cast_column(
            "audio", datasets.Audio(sampling_rate=SAMPLING_RATE, decode=False)
        )
        processor = MMAVSRProcessor.from_auto_avsr()
        clips, speech = len(dataset), sum(dataset["num_frames"]) / VIDEO_FPS
        print(
            f"data loading: {clips} clips ({speech:.0f} s of speech) of {root}, batch {args.batch_size}, "
            f"{args.num_workers} worker(s), {torch.get_num_threads()} torch thread(s); load average before: "
            f"{os.getloadavg()[0]:.1f}"
        )
        print(f"{'path':<28} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'speech s/s':>10}")
        timed("torchcodec decode", clips, speech, lambda: torchcodec_decode(undecoded))
        timed("PyAV + soundfile decode", clips, speech, lambda: media_io_decode(undecoded))
        timed(
            "datasets columns + collator",
            clips,
            speech,
            lambda: collate_all(dataset, processor, args.batch_size, args.num_workers),
        )
        timed(
            "ClipReader + collator",
            clips,
            speech,
            lambda: collate_all(ClipReader(undecoded, processor), processor, args.batch_size, args.num_workers),
        )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
