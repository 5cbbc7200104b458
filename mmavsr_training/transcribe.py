"""`mmavsr-transcribe`: transcribe recordings of any length with an MMAVSR model and write subtitles beside them.

```bash
mmavsr-transcribe talk.mp4 interview.wav [--model PATH_OR_ID] [--output-format txt|srt|vtt|json] [--output-dir DIR]
    [--batch-size 4] [--num-beams N] [--device cpu|cuda] [--int8] [--segmentation auto|vad|windows|off]
```

Each input (any container FFmpeg reads: mp4, mkv, webm, mov, wav, flac, mp3, m4a, ...) goes through the
`audio-visual-speech-recognition` pipeline with segment timestamps: recordings longer than `--max-segment-s` are cut at
pauses (or in windows when silent) and decoded `--batch-size` segments at a time. `<stem>.<format>` is written next to
the input (or into `--output-dir`). An input that cannot be read or transcribed gets one line on stderr naming it and
the problem; the others go on, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmavsr_processing.long_form import DEFAULT_MAX_SEGMENT_S, DEFAULT_MIN_PAUSE_S, DEFAULT_SPEECH_PAD_S
from mmavsr_processing.media_io import MediaError, probe_media
from mmavsr_processing.subtitles import OUTPUT_FORMATS, write_transcript


PROG = "mmavsr-transcribe"
MODEL_ENV = "MMAVSR_MODEL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio or video files")
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"a save_pretrained folder or Hub id of an MMAVSR model (default: ${MODEL_ENV})",
    )
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default="srt", help="default: srt")
    parser.add_argument("--output-dir", help="where to write the transcripts (default: beside each input)")
    parser.add_argument("--batch-size", type=int, default=4, help="segments decoded at once (default 4)")
    parser.add_argument("--num-beams", type=int, help="beam size (default: the model's generation config)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per segment at most (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 dynamic quantization of the linear layers (CPU only): faster, nearly the same WER",
    )
    parser.add_argument(
        "--segmentation",
        choices=("auto", "vad", "windows", "off"),
        default="auto",
        help="auto (default): recordings longer than --max-segment-s are cut at pauses, or in windows when silent",
    )
    parser.add_argument(
        "--max-segment-s",
        type=float,
        default=DEFAULT_MAX_SEGMENT_S,
        help=f"longest segment in seconds (default {DEFAULT_MAX_SEGMENT_S:g})",
    )
    parser.add_argument(
        "--min-pause-s",
        type=float,
        default=DEFAULT_MIN_PAUSE_S,
        help=f"the shortest pause that ends a segment, in seconds (default {DEFAULT_MIN_PAUSE_S:g})",
    )
    parser.add_argument(
        "--speech-pad-s",
        type=float,
        default=DEFAULT_SPEECH_PAD_S,
        help=f"sound kept on each side of a speech region, in seconds (default {DEFAULT_SPEECH_PAD_S:g})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.min_pause_s > 0:
        parser.error(f"--min-pause-s must be more than 0 seconds, got {args.min_pause_s:g}")
    if not args.speech_pad_s >= 0:
        parser.error(f"--speech-pad-s must be 0 seconds or more, got {args.speech_pad_s:g}")
    if not args.model:
        parser.error(f"give --model (a model folder or Hub id) or set ${MODEL_ENV}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.int8 and args.device != "cpu":
        parser.error("--int8 runs on the CPU: leave out --device or give --device cpu")
    return args


def pipeline_input(path: str, reads_video: bool):
    """What the pipeline gets for a file: `{"video": path}` when the model reads lips and the file has a video
    stream (whatever its extension), else the path (its sound is read)."""
    if reads_video and probe_media(path).fps is not None:
        return {"video": path}
    return path


def output_names(inputs: list[str], output_dir: str | None) -> dict[str, str]:
    """The name each input's transcript takes (before the format's suffix): the input's stem, or its whole file name
    where two inputs would write the same file (`talk.wav`, `talk.mp4` -> `talk.wav.srt`, `talk.mp4.srt`)."""

    def target(path):
        return (Path(output_dir) if output_dir else Path(path).parent).resolve() / Path(path).stem

    targets = [target(path) for path in inputs]
    return {path: Path(path).stem if targets.count(target(path)) == 1 else Path(path).name for path in inputs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm
    from transformers import pipeline

    from modeling_mmavsr.pipeline_mmavsr import AUDIO_VISUAL_TASK  # importing modeling_mmavsr registers the task

    try:
        transcriber = pipeline(AUDIO_VISUAL_TASK, model=args.model, device=torch.device(args.device), int8=args.int8)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"{PROG}: {args.model}: cannot load the model ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    generate = {
        key: value
        for key, value in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens))
        if value is not None
    }
    reads_video = transcriber.model.config.vision_encoder is not None
    names = output_names(args.inputs, args.output_dir)
    failures = 0
    for path in tqdm(args.inputs, desc=PROG, unit="file", disable=args.no_progress or len(args.inputs) == 1):
        try:
            result = transcriber(
                pipeline_input(path, reads_video),
                return_timestamps=True,
                batch_size=args.batch_size,
                segmentation=args.segmentation,
                max_segment_s=args.max_segment_s,
                min_pause_s=args.min_pause_s,
                speech_pad_s=args.speech_pad_s,
                progress=not args.no_progress,
                **generate,
            )
            written = write_transcript(result, path, args.output_format, args.output_dir, name=names[path])
        except (MediaError, ValueError, OSError, RuntimeError) as error:
            failures += 1
            message = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
            print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)
            continue
        tqdm.write(f"{path} -> {written}", file=sys.stderr)
    return 1 if failures else 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
