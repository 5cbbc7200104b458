"""Long-form WER of the demo models: the demo test clips in a row (0.3-1 s pauses) against the same clips one by one,
and int8 against fp32.

    python benchmarks/long_form_wer.py --models-dir main_job/exp --corpus main_job/corpus [--minutes 10] [--int8]
        [--split val|test] [--speech-pad-s S]

For each model folder of `--models-dir` (`asr`, `vsr`, `avsr`: the main job's trained models, `scripts/main_job.sh`):
- clips: the `audio-visual-speech-recognition` pipeline on each test clip alone (its mp4, and its wav for the models
  with an audio encoder), one piece each; WER against the label files' transcripts;
- long form: the test clips concatenated by `demo_corpus.long_recording` (repeated to `--minutes`), written as one
  mp4 with its sound (a wav for the audio model) and transcribed in one call (`segmentation="auto"`: cut at pauses);
  WER against the clips' transcripts in order, and the share of clips whose start and end lie within 0.5 s of a
  segment's.
The issue's bars: long form within 2 points of clips; with `--int8`, int8 within 0.5 points of fp32 on the clips.
Settings (`--speech-pad-s`, a training recipe) are chosen with `--split val`, the validation clips; `--split test`
(the default) reports.
"""

import argparse
import time
from pathlib import Path

import jiwer


MODELS = {"asr": "audio", "vsr": "video", "avsr": "audiovisual"}
LONG_FORM_BAR, INT8_BAR, TIME_TOLERANCE = 2.0, 0.5, 0.5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", required=True, help="folder with the asr, vsr, avsr model folders")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["asr", "vsr", "avsr"])
    parser.add_argument("--corpus", required=True, help="the demo corpus folder (its labels/SPLIT.csv)")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="the clips: val chooses, test reports")
    parser.add_argument(
        "--speech-pad-s", type=float, help="sound kept around each speech region (default: the pipeline's)"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long recording (default 10)")
    parser.add_argument("--int8", action="store_true", help="also decode with int8 linear layers")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, help="tokens per piece at most (default: the model's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default="long_form_wer")
    return parser.parse_args()


def clip_inputs(corpus: Path, labels: Path, reads_video: bool, reads_audio: bool) -> list:
    inputs = []
    for line in labels.read_text().splitlines():
        video = corpus / "demo" / line.split(",")[1]
        if reads_video:
            inputs.append({"video": str(video), "audio": str(video.with_suffix(".wav"))} if reads_audio else str(video))
        else:
            inputs.append(str(video.with_suffix(".wav")))
    return inputs


def matched_clips(chunks: list[dict], clips: list[tuple[float, float, str]]) -> float:
    """The share of clips whose start and end are within TIME_TOLERANCE of some segment's."""
    times = [chunk["timestamp"] for chunk in chunks]
    hits = sum(
        any(abs(s - start) <= TIME_TOLERANCE and abs(e - end) <= TIME_TOLERANCE for s, e in times)
        for start, end, _ in clips
    )
    return hits / len(clips)


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from transformers import pipeline

    import modeling_mmavsr  # noqa: F401 - registers the pipeline
    from mmavsr_processing import write_audio, write_video
    from mmavsr_processing.demo_corpus import long_recording

    corpus, work = Path(args.corpus), Path(args.work_dir)
    labels = corpus / "labels" / f"{args.split}.csv"
    recording = long_recording(corpus, labels, seed=0, min_duration_s=60 * args.minutes)
    work.mkdir(parents=True, exist_ok=True)
    wav, mp4 = work / "long.wav", work / "long.mp4"
    write_audio(wav, recording.wave)
    write_video(mp4, recording.frames, audio=recording.wave)
    reference_long = " ".join(text for _, _, text in recording.clips)
    clip_texts = [text for _, _, text in long_recording(corpus, labels, seed=0).clips]
    print(
        f"long recording: {recording.duration / 60:.1f} min, {len(recording.clips)} clips; "
        f"{len(clip_texts)} {args.split} clips"
    )
    segmenting = {} if args.speech_pad_s is None else {"speech_pad_s": args.speech_pad_s}
    del recording.frames
    print(
        f"{'model':6} {'precision':9} {'clips WER':>9} {'long WER':>8} {'diff':>6} {'clips timed':>11} {'RTF long':>8}"
    )
    for name in args.models:
        folder = Path(args.models_dir) / name
        clip_wer = {}
        for precision in ("fp32", "int8") if args.int8 else ("fp32",):
            generate = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
            transcriber = pipeline(
                "audio-visual-speech-recognition", model=str(folder), int8=precision == "int8", **generate
            )
            config = transcriber.model.config
            reads_video, reads_audio = config.vision_encoder is not None, config.audio_encoder is not None
            clips = clip_inputs(corpus, labels, reads_video, reads_audio)
            hypotheses = [out["text"] for out in transcriber(clips, batch_size=args.batch_size)]
            clip_wer[precision] = 100 * jiwer.wer(clip_texts, hypotheses)
            start = time.perf_counter()
            result = transcriber(
                {"video": str(mp4)} if reads_video else str(wav),
                return_timestamps=True,
                batch_size=args.batch_size,
                **segmenting,
            )
            rtf = (time.perf_counter() - start) / (60 * args.minutes)
            long_wer = 100 * jiwer.wer(reference_long, result["text"])
            diff = long_wer - clip_wer[precision]
            timed = matched_clips(result["chunks"], recording.clips)
            verdict = "ok" if abs(diff) <= LONG_FORM_BAR else "OVER"
            print(
                f"{name:6} {precision:9} {clip_wer[precision]:9.2f} {long_wer:8.2f} {diff:+6.2f} {timed:11.1%} "
                f"{rtf:8.3f}  long form vs clips: {verdict}"
            )
        if args.int8:
            gap = clip_wer["int8"] - clip_wer["fp32"]
            print(f"{name:6} int8 - fp32 on the clips: {gap:+.2f} points ({'ok' if gap <= INT8_BAR else 'OVER'})")


if __name__ == "__main__":
    main()
