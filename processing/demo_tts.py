"""Speech synthesisers of the demo corpus: Debian's `flite`, `espeak-ng` and `festival`, each giving a 16 kHz wave and
the time of every phone in it (the mouth video is drawn from those phones, so it stays in step with the speech).

Phones come back as (phone, start s, end s), contiguous from 0 to the wave's end, in the lower-case ARPAbet that flite
and festival use ("pau", "p", "ey", ...); espeak-ng's own phoneme names are mapped onto it.

- flite: `flite -psdur` prints each phone's end time (voices slt, rms, awb, kal16).
- espeak-ng: a formant synthesiser, a voice family unlike flite's diphone and statistical voices; libespeak-ng is
  driven through ctypes with phoneme events, which give each phone's start sample (the command line prints no phone
  times without MBROLA voices, and Debian 12 has no MBROLA package). Voices: English accents with espeak-ng's voice
  variants (+m1, +f2, ...).
- festival: residual-LPC diphone voices kal and ked; `utt.save.segs` writes each segment's end time. About 1 s of
  start-up per clip, so it is the slow engine.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .media_constants import SAMPLING_RATE
from .media_io import resample_audio


TTS_VOICES = {
    "flite": ("slt", "rms", "awb", "kal16"),
    "espeak": (
        "en-us+m1",
        "en-us+f2",
        "en-us+m3",
        "en-us+f4",
        "en-gb-x-rp+m7",
        "en-gb-x-rp+f1",
        "en-029+m2",
        "en-gb-scotland+f3",
    ),
    "festival": ("kal_diphone", "ked_diphone"),
}
TTS_ENGINES = tuple(TTS_VOICES)
# the Debian package that brings each engine
TTS_PACKAGES = {"flite": "flite", "espeak": "espeak-ng", "festival": "festival festvox-kallpc16k festvox-kdlpc16k"}
ESPEAK_LIBRARY = "libespeak-ng.so.1"
# what each engine is given for a word whose written form it would read otherwise ("A" alone is read as the article;
# espeak-ng reads "ay" as "eye")
SPOKEN_FORMS = {"flite": {"A": "ay"}, "espeak": {"A": "eh"}, "festival": {"A": "ay"}}


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be made here (a speech synthesiser missing or failing); the message says why and what
    to do."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker's voice: engine, voice name, duration stretch (> 1 is slower) and pitch.

    `pitch` is the mean F0 in Hz for flite and festival, espeak-ng's 0-100 pitch setting for espeak."""

    engine: str
    name: str
    duration_stretch: float
    pitch: float


def is_low_voice(engine: str, name: str) -> bool:
    """Whether the voice is a male one (its pitch is drawn from a lower range)."""
    if engine == "flite":
        return name in ("rms", "awb", "kal16")
    if engine == "festival":
        return True
    return "+m" in name


def draw_pitch(engine: str, name: str, rng: np.random.Generator) -> float:
    """A random pitch for the voice, in the unit `Voice.pitch` uses for its engine."""
    if engine == "espeak":
        return float(rng.uniform(25, 60) if is_low_voice(engine, name) else rng.uniform(40, 75))
    return float(rng.uniform(85, 125) if is_low_voice(engine, name) else rng.uniform(150, 200))


def check_tts(engine: str) -> str:
    """The engine's executable or library, or a `DemoCorpusError` naming the Debian package to install."""
    if engine not in TTS_VOICES:
        raise ValueError(f"unknown speech synthesiser {engine!r}; choose from {', '.join(TTS_ENGINES)}.")
    install = f"`apt-get install {TTS_PACKAGES[engine]}` (scripts/install.sh does it)"
    if engine == "espeak":
        try:
            ctypes.CDLL(ESPEAK_LIBRARY)
        except OSError as error:
            raise DemoCorpusError(
                f"--tts espeak needs Debian's `espeak-ng` speech synthesiser (its library "
                f"{ESPEAK_LIBRARY} cannot be loaded: {error}): {install}."
            ) from None
        return ESPEAK_LIBRARY
    path = shutil.which(engine)
    if path is None:
        raise DemoCorpusError(
            f"--tts {engine} needs Debian's `{engine}` speech synthesiser, which is not on PATH: {install}."
        )
    if engine == "festival":
        for name in TTS_VOICES["festival"]:
            if not _festival_voice_dir(path, name):
                raise DemoCorpusError(f"festival's voice {name} is not installed: {install}.")
    return path


def _festival_voice_dir(festival: str, name: str) -> str | None:
    """Where festival keeps the voice (Debian: /usr/share/festival/voices/english/NAME), or None."""
    roots = {
        os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(festival))), "share", "festival"),
        "/usr/share/festival",
    }
    for root in roots:
        path = os.path.join(root, "voices", "english", name)
        if os.path.isdir(path):
            return path
    return None


def spoken_text(words: tuple[str, ...], engine: str = "flite") -> str:
    return " ".join(SPOKEN_FORMS[engine].get(word, word.lower()) for word in words)


def synthesize_words(
    words: tuple[str, ...], voice: Voice, executable: str | None = None
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Speech of `words` in `voice` (16 kHz float32 wave) and its phones as (phone, start s, end s)."""
    executable = executable or check_tts(voice.engine)
    text = spoken_text(words, voice.engine)
    if voice.engine == "flite":
        return _flite(text, voice, executable)
    if voice.engine == "espeak":
        return _espeak(text, voice)
    return _festival(text, voice, executable)


def _read_wave(path: str, engine: str, command: str) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32")
    if wave.ndim != 1 or len(wave) == 0:
        raise DemoCorpusError(f"{engine} wrote no mono speech ({command}).")
    return resample_audio(wave, rate, SAMPLING_RATE)


def _flite(text: str, voice: Voice, flite: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "speech.wav")
        command = [
            flite,
            "-voice",
            voice.name,
            "--setf",
            f"duration_stretch={voice.duration_stretch:.3f}",
            "--setf",
            f"int_f0_target_mean={voice.pitch:.1f}",
            "-psdur",
            "-t",
            text,
            "-o",
            wav_path,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(wav_path):
            raise DemoCorpusError(f"flite failed ({' '.join(command)}): {result.stderr.strip()}")
        wave, rate = sf.read(wav_path, dtype="float32")
    if rate != SAMPLING_RATE:
        raise DemoCorpusError(
            f"flite voice {voice.name} wrote {rate} Hz audio; the demo corpus needs {SAMPLING_RATE} Hz voices."
        )
    return wave, _phone_segments(result.stdout, len(wave) / rate)


def _phone_segments(psdur: str, duration: float) -> list[tuple[str, float, float]]:
    """Parse `phone:end phone:end ...`; the end times are rescaled to the wave's duration (flite's diphone voices
    print times a few per cent longer than the audio they write)."""
    phones, ends = [], []
    for item in psdur.split():
        phone, _, end = item.rpartition(":")
        if phone:
            phones.append(phone)
            ends.append(float(end))
    if not phones:
        raise DemoCorpusError(f"flite printed no phone timings (got {psdur[:80]!r}).")
    return _segments_from_ends(phones, ends, duration)


def _segments_from_ends(phones: list[str], ends: list[float], duration: float) -> list[tuple[str, float, float]]:
    scale = duration / ends[-1] if ends[-1] > 0 else 1.0
    starts = [0.0] + ends[:-1]
    return [(phone, start * scale, end * scale) for phone, start, end in zip(phones, starts, ends)]


# festival: select the voice, set rate and pitch (an assoc list's first entry wins, so consing overrides the voice's
# target F0), synthesise, write the wave and the segments
_FESTIVAL_SCRIPT = """(voice_{name})
(Parameter.set 'Duration_Stretch {stretch:.3f})
(set! int_lr_params (cons (list 'target_f0_mean {pitch:.1f}) int_lr_params))
(set! utt (Utterance Text "{text}"))
(utt.synth utt)
(utt.save.wave utt "{wav}" 'riff)
(utt.save.segs utt "{segs}")
"""


def _festival(text: str, voice: Voice, festival: str) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        wav_path, segs_path, script_path = (os.path.join(tmp, name) for name in ("speech.wav", "speech.segs", "s.scm"))
        with open(script_path, "w") as script:
            script.write(
                _FESTIVAL_SCRIPT.format(
                    name=voice.name,
                    stretch=voice.duration_stretch,
                    pitch=voice.pitch,
                    text=text,
                    wav=wav_path,
                    segs=segs_path,
                )
            )
        command = [festival, "-b", script_path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not os.path.exists(wav_path) or not os.path.exists(segs_path):
            raise DemoCorpusError(
                f"festival failed for {text!r} with voice {voice.name}: "
                f"{(result.stderr or result.stdout).strip()[-300:]}"
            )
        wave = _read_wave(wav_path, "festival", " ".join(command))
        phones, ends = [], []
        with open(segs_path) as segs:
            for line in segs:
                fields = line.split()
                if len(fields) == 3 and not line.startswith("#"):
                    ends.append(float(fields[0]))
                    phones.append(fields[2])
    if not phones:
        raise DemoCorpusError(f"festival wrote no segments for {text!r} with voice {voice.name}.")
    return wave, _segments_from_ends(phones, ends, len(wave) / SAMPLING_RATE)


# espeak-ng's English phoneme names -> the ARPAbet phones of the mouth models (unlisted ones: see `_espeak_phone`)
ESPEAK_PHONES = {
    "p": "p",
    "b": "b",
    "t": "t",
    "t#": "t",
    "t2": "t",
    "d": "d",
    "d#": "d",
    "k": "k",
    "g": "g",
    "m": "m",
    "n": "n",
    "N": "ng",
    "f": "f",
    "v": "v",
    "T": "th",
    "D": "dh",
    "s": "s",
    "z": "z",
    "S": "sh",
    "Z": "zh",
    "tS": "ch",
    "dZ": "jh",
    "h": "hh",
    "l": "l",
    "r": "r",
    "r-": "r",
    "w": "w",
    "j": "y",
    "?": "pau",
    "@": "ax",
    "@-": "ax",
    "@2": "ax",
    "@5": "ax",
    "3": "er",
    "3:": "er",
    "a": "ae",
    "a#": "ax",
    "aa": "ae",
    "A:": "aa",
    "A@": "aa",
    "A": "aa",
    "aI": "ay",
    "aI@": "ay",
    "aI3": "ay",
    "aU": "aw",
    "aU@": "aw",
    "E": "eh",
    "e@": "eh",
    "eI": "ey",
    "i": "iy",
    "i:": "iy",
    "i@": "ih",
    "i@3": "ih",
    "I": "ih",
    "I#": "ih",
    "I2": "ih",
    "0": "aa",
    "O": "ao",
    "O:": "ao",
    "O@": "ao",
    "o@": "ao",
    "OI": "oy",
    "oU": "ow",
    "@U": "ow",
    "U": "uh",
    "u:": "uw",
    "U@": "uh",
    "V": "ah",
    "@L": "l",
    "n-": "n",
    "m-": "m",
}
_ESPEAK_EVENT_END, _ESPEAK_EVENT_PHONEME = 0, 7
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_ESPEAK_AUDIO_OUTPUT_RETRIEVAL, _ESPEAK_INITIALIZE_PHONEME_EVENTS = 1, 1


def _espeak_phone(name: str) -> str:
    if name in ESPEAK_PHONES:
        return ESPEAK_PHONES[name]
    if name.startswith("_") or not name.strip():
        return "pau"
    stripped = name.rstrip("0123456789#-:;/'")
    return ESPEAK_PHONES.get(stripped, ESPEAK_PHONES.get(stripped[:1], "ax"))


class _EspeakEventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EspeakEventId),
    ]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


class _Espeak:
    """libespeak-ng in retrieval mode, one per process: audio chunks and phoneme events come to a callback."""

    _instance: "_Espeak | None" = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> "_Espeak":
        if cls._instance is None or cls._pid != os.getpid():
            cls._instance, cls._pid = cls(), os.getpid()
        return cls._instance

    def __init__(self):
        check_tts("espeak")
        self.lib = ctypes.CDLL(ESPEAK_LIBRARY)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.rate = self.lib.espeak_Initialize(
            _ESPEAK_AUDIO_OUTPUT_RETRIEVAL, 0, None, _ESPEAK_INITIALIZE_PHONEME_EVENTS
        )
        if self.rate <= 0:
            raise DemoCorpusError(f"espeak-ng failed to start (espeak_Initialize returned {self.rate}).")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []
        self.callback = _ESPEAK_CALLBACK(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).astype(np.float32) / 32768.0)
        index = 0
        while events[index].type != _ESPEAK_EVENT_END:
            event = events[index]
            if event.type == _ESPEAK_EVENT_PHONEME:
                self.events.append((event.id.string.decode("ascii", "replace"), event.sample))
            index += 1
        return 0

    def speak(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise DemoCorpusError(f"espeak-ng has no voice {voice.name!r} (see `espeak-ng --voices=en`).")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(round(165 / voice.duration_stretch)), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(round(voice.pitch)), 0)
        self.chunks, self.events = [], []
        data = text.encode()
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if status != 0 or not self.chunks:
            raise DemoCorpusError(f"espeak-ng failed for {text!r} with voice {voice.name} (status {status}).")
        wave = np.concatenate(self.chunks)
        duration = len(wave) / self.rate
        # phoneme events mark where each phone starts; a phone lasts until the next one, the first is preceded by
        # silence
        phones, starts = ["pau"], [0.0]
        for name, sample in self.events:
            start = min(sample / self.rate, duration)
            if start <= starts[-1] + 1e-4:
                phones[-1] = _espeak_phone(name)  # the phone before had no duration
            else:
                phones.append(_espeak_phone(name))
                starts.append(start)
        segments = [
            (phone, start, end) for phone, start, end in zip(phones, starts, starts[1:] + [duration]) if end > start
        ]
        if len(segments) < 2:
            raise DemoCorpusError(f"espeak-ng reported no phones for {text!r} with voice {voice.name}.")
        wave = resample_audio(wave, self.rate, SAMPLING_RATE)
        scale = (len(wave) / SAMPLING_RATE) / duration
        return wave, [(phone, start * scale, end * scale) for phone, start, end in segments]


def _espeak(text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    return _Espeak.get().speak(text, voice)
