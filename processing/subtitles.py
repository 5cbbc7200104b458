"""Transcripts with segment times as files: plain text, SubRip (`.srt`), WebVTT (`.vtt`) and JSON.

`chunks` are what the speech recognition pipeline returns with `return_timestamps=True`:
`[{"text": str, "timestamp": (start s, end s)}, ...]`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


__all__ = ["OUTPUT_FORMATS", "format_timestamp", "format_transcript", "write_transcript"]

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """`HH:MM:SS,mmm` (SubRip) or, with `decimal_marker="."`, `HH:MM:SS.mmm` (WebVTT)."""
    milliseconds = int(round(max(0.0, seconds) * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{decimal_marker}{milliseconds:03d}"


def format_transcript(result: dict, output_format: str) -> str:
    """The pipeline's `result` (`{"text", "chunks"}`) as a file's text in `output_format` (one of `OUTPUT_FORMATS`).
    Subtitles list each segment that holds words, with its times."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if output_format == "txt":
        return result["text"].strip() + "\n"
    chunks = [chunk for chunk in result.get("chunks", []) if chunk["text"].strip()]
    if output_format == "json":
        segments = [{"start": c["timestamp"][0], "end": c["timestamp"][1], "text": c["text"]} for c in chunks]
        return json.dumps({"text": result["text"], "segments": segments}, indent=2) + "\n"
    marker = "," if output_format == "srt" else "."
    cues = []
    for number, chunk in enumerate(chunks, start=1):
        start, end = (format_timestamp(t, marker) for t in chunk["timestamp"])
        cue = f"{start} --> {end}\n{chunk['text'].strip()}\n"
        cues.append(f"{number}\n{cue}" if output_format == "srt" else cue)
    header = "WEBVTT\n\n" if output_format == "vtt" else ""
    return header + "\n".join(cues)


def write_transcript(
    result: dict,
    media_path: str | os.PathLike,
    output_format: str,
    output_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> Path:
    """Write `result` as `<name>.<format>` (`name` defaults to the media file's stem) beside the media file (or in
    `output_dir`); returns the path."""
    media_path = Path(media_path)
    folder = Path(output_dir) if output_dir is not None else media_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or media_path.stem}.{output_format}"
    path.write_text(format_transcript(result, output_format), encoding="utf-8")
    return path
