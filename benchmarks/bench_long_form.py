"""Long-form transcription speed and memory: real-time factor and peak RSS for 1 and 10 minutes of audio, video and
audio-visual input, fp32 and int8, on `--threads` CPU threads.

    python benchmarks/bench_long_form.py [--minutes 1 10] [--models-dir main_job/exp] [--threads 2]

The recordings are demo corpus test clips in a row with 0.3-1 s pauses (`demo_corpus.long_recording`), repeated to
the length asked: a wav for the audio model, an mp4 with its sound for the video and audio-visual models (the video
model's segments are found on the sound, as `segmentation="auto"` does). Each (modality, precision, length) runs in a
fresh process: the `audio-visual-speech-recognition` pipeline loads the model, transcribes the file once
(`batch_size` segments at a time) and reports the wall time of that call (the real-time factor is it divided by the
recording's duration), the process' peak resident memory (`VmHWM`: libraries and model included, mostly what
importing torch and Transformers takes; not `ru_maxrss`, which a child inherits from its parent on Linux), and the
peak while transcribing (the kernel's peak reset just before the call, Linux `clear_refs`, next to the RSS then).

Models: `--models-dir` holds the main job's trained `asr`, `vsr`, `avsr` folders (`scripts/main_job.sh`); without it the
demo presets (`hub_configs/demo-*.json`) are built with random weights, whose hypotheses are cut at
`--max-new-tokens` (a demo sentence is 6 words). The last lines compare the peak memory at the longest and shortest
lengths: long-form transcription must not grow with the recording (within 10%).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


MODELS = {
    "audio": ("asr", "demo-asr-logmel"),
    "video": ("vsr", "demo-vsr-resnet"),
    "audiovisual": ("avsr", "demo-avsr-resnet-logmel"),
}
MEMORY_TOLERANCE = 0.10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--modalities", nargs="+", choices=sorted(MODELS), default=["audio", "video", "audiovisual"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "int8"), default=["fp32", "int8"])
    parser.add_argument("--models-dir", help="a folder with the trained asr, vsr, avsr model folders (main job)")
    parser.add_argument("--work-dir", default="bench_long_form", help="corpus, recordings and models (kept)")
    parser.add_argument("--num-clips", type=int, default=60, help="demo test clips the recordings repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "MEDIA", "PRECISION", "SECONDS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> float | None:
    """Reset the kernel's peak RSS of this process to its current RSS (Linux `clear_refs` 5); that RSS, or None
    where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mib("VmRSS")


def child(args) -> None:
    """One measurement, in its own process: load, transcribe once, print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from transformers import pipeline

    import modeling_mmavsr  # noqa: F401 - registers the pipeline

    model, media, precision, seconds = args.child
    transcriber = pipeline("audio-visual-speech-recognition", model=model, int8=precision == "int8")
    reads_video = transcriber.model.config.vision_encoder is not None
    loading_peak = _status_mib("VmHWM")  # this process' peak so far (imports, model); `ru_maxrss` would include the
    reset = _reset_peak_rss()  # parent's, which survives fork and exec
    start = time.perf_counter()
    result = transcriber(
        {"video": media} if reads_video else media,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        return_timestamps=True,
    )
    elapsed = time.perf_counter() - start
    during = _status_mib("VmHWM") if reset else float("nan")
    peak = max(loading_peak, _status_mib("VmHWM"))
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "rtf": elapsed / float(seconds),
                "peak_rss_mib": peak,
                "peak_rss_during_mib": during,
                "rss_before_mib": reset or float("nan"),
                "segments": len(result["chunks"]),
                "words": len(result["text"].split()),
            }
        )
    )


def prepare(args) -> tuple[dict, dict]:
    """The model folders and, for each length, the recording files and their duration."""
    from mmavsr_processing import write_audio, write_video
    from mmavsr_processing.demo_corpus import generate_demo_corpus, long_recording
    from mmavsr_training.presets import build_model_from_preset, build_processor_from_preset

    work = Path(args.work_dir)
    labels = generate_demo_corpus(
        work / "corpus", num_clips=args.num_clips, split_fractions=(0, 0, 1), splits=("test",), progress=False
    )
    recordings = {}
    for minutes in args.minutes:
        wav, mp4 = work / f"long_{minutes:g}min.wav", work / f"long_{minutes:g}min.mp4"
        recording = long_recording(work / "corpus", labels["test"], seed=0, min_duration_s=60 * minutes)
        count = int(round(60 * minutes * 25))  # cut to the length asked, at a frame
        if not (wav.is_file() and mp4.is_file()):
            write_audio(wav, recording.wave[: count * 640])
            write_video(mp4, recording.frames[:count], audio=recording.wave[: count * 640])
        recordings[minutes] = {"wav": str(wav), "mp4": str(mp4), "seconds": count / 25}
        del recording
    models = {}
    for modality in args.modalities:
        folder_name, preset = MODELS[modality]
        if args.models_dir:
            models[modality] = str(Path(args.models_dir) / folder_name)
            continue
        folder = work / "models" / folder_name
        if not (folder / "config.json").is_file():
            build_model_from_preset(preset, pretrained=False).save_pretrained(folder)
            build_processor_from_preset(preset).save_pretrained(folder)
        models[modality] = str(folder)
    return models, recordings


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    models, recordings = prepare(args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    print(
        f"{'input':12} {'precision':9} {'minutes':>7} {'RTF':>6} {'peak RSS MiB':>12} {'RSS before':>10} "
        f"{'peak during':>11} {'segments':>8} {'words':>6}"
    )
    for modality in args.modalities:
        for precision in args.precisions:
            for minutes in args.minutes:
                recording = recordings[minutes]
                media = recording["wav"] if modality == "audio" else recording["mp4"]
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    models[modality],
                    media,
                    precision,
                    str(recording["seconds"]),
                    "--threads",
                    str(args.threads),
                    "--batch-size",
                    str(args.batch_size),
                    "--num-beams",
                    str(args.num_beams),
                    "--max-new-tokens",
                    str(args.max_new_tokens),
                ]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{modality} {precision} {minutes:g} min failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"input": modality, "precision": precision, "minutes": minutes, **result})
                print(
                    f"{modality:12} {precision:9} {minutes:7g} {result['rtf']:6.3f} {result['peak_rss_mib']:12.0f} "
                    f"{result['rss_before_mib']:10.0f} {result['peak_rss_during_mib']:11.0f} "
                    f"{result['segments']:8d} {result['words']:6d}",
                    flush=True,
                )
    shortest, longest = min(args.minutes), max(args.minutes)
    for modality in args.modalities:
        for precision in args.precisions:
            for key, what in (("peak_rss_mib", "peak RSS"), ("peak_rss_during_mib", "peak RSS while transcribing")):
                peak = {
                    row["minutes"]: row[key]
                    for row in rows
                    if row["input"] == modality and row["precision"] == precision
                }
                ratio = peak[longest] / peak[shortest]
                verdict = "ok" if abs(ratio - 1) <= MEMORY_TOLERANCE else "GROWS"
                print(f"{what} {modality} {precision}: {longest:g} min / {shortest:g} min = {ratio:.3f} ({verdict})")
    with open(Path(args.work_dir) / "bench_long_form.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
