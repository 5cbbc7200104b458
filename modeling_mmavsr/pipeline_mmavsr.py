"""Speech recognition pipelines for MMAVSR models: audio (files, arrays) and talking-face videos (lip reading, AVSR).

- `pipeline("automatic-speech-recognition", model=...)` runs an audio-only MMAVSR model as a sequence-to-sequence
  model once `register_speech_seq2seq()` has run (importing `modeling_mmavsr` does it): Transformers' own
  [`AutomaticSpeechRecognitionPipeline`], chunking included.
- [`MMAVSRSpeechRecognitionPipeline`] (task `audio-visual-speech-recognition`, and the `automatic-speech-recognition`
  pipeline of an exported model folder through its config's `custom_pipelines`) also takes videos: it decodes the
  frames and the audio track, crops the mouth when the frames are not already a mouth ROI, and runs every modality
  the model has. Audio alone goes through the same steps as in the Transformers pipeline, with overlapping chunks
  merged on their common tokens.

Media are read and brought to 25 fps by `mmavsr_processing.media_io`, as in `prepare` and the training data; other
processing modules are imported inside the functions that need them (an exported folder rewrites these imports into
relative ones); `mmavsr_processing` never imports this package.
"""

import logging
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq
from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

from mmavsr_processing.long_form import (
    DEFAULT_MAX_SEGMENT_S,
    DEFAULT_MIN_PAUSE_S,
    DEFAULT_SPEECH_PAD_S,
    Recording,
    SpeechDetector,
    cut_ranges,
    fixed_windows,
    frame_aligned,
    overlap_start,
    speech_segments,
)
from mmavsr_processing.media_constants import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS
from mmavsr_processing.media_io import (
    VIDEO_SUFFIXES,
    MediaError,
    fit_audio_to_video,
    read_audio,
    read_audio_can_read,
    read_audio_track,
    read_video,
    resample_audio,
    resample_frames,
)


AUDIO_VISUAL_TASK = "audio-visual-speech-recognition"
SPEECH_RECOGNITION_TASK = "automatic-speech-recognition"
MODEL_TYPE = "mmavsr"
MODEL_CLASS_NAME = "MMAVSRForConditionalGeneration"
# frames no larger than this on both sides are taken as mouth ROIs already (auto_avsr's are 96x96)
MOUTH_ROI_MAX_SIZE = 128
logger = logging.getLogger(__name__)
MODEL_INPUT_NAMES = ("input_features", "attention_mask", "pixel_values_videos", "video_attention_mask")
SEGMENTATION_MODES = ("auto", "vad", "windows", "off")


def collate_segments(items: list[dict]) -> dict:
    """A batch of the pipeline's segments: tensors zero-padded along time, whichever axis it is (videos `(1, T, C, H,
    W)`, waves and masks `(1, S)`, log-mels `(1, T, mels)`: every axis after the first is padded to the longest) and
    stacked; other values listed."""
    keys = set(items[0])
    if any(set(item) != keys for item in items):
        raise ValueError(f"segments with different inputs cannot be batched: {[sorted(item) for item in items]}")
    batch = {}
    for key in keys:
        values = [item[key] for item in items]
        if not isinstance(values[0], torch.Tensor):
            batch[key] = values
            continue
        longest = [max(value.shape[axis] for value in values) for axis in range(values[0].dim())]
        padded = []
        for value in values:
            widths = [w for axis in reversed(range(1, value.dim())) for w in (0, longest[axis] - value.shape[axis])]
            padded.append(torch.nn.functional.pad(value, widths))
        batch[key] = torch.cat(padded, dim=0)
    return batch


def register_speech_seq2seq() -> None:
    """Let Transformers' ASR pipeline treat MMAVSR models as sequence-to-sequence models (it reads the class name
    from `MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES`, which `AutoModelForSpeechSeq2Seq.register` does not fill)."""
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.setdefault(MODEL_TYPE, MODEL_CLASS_NAME)


def register_pipelines() -> None:
    """`register_speech_seq2seq()`, and the `audio-visual-speech-recognition` task for [`MMAVSRSpeechRecognitionPipeline`]."""
    register_speech_seq2seq()
    if PIPELINE_REGISTRY.supported_tasks.get(AUDIO_VISUAL_TASK, {}).get("impl") is not MMAVSRSpeechRecognitionPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            AUDIO_VISUAL_TASK,
            pipeline_class=MMAVSRSpeechRecognitionPipeline,
            pt_model=AutoModelForSpeechSeq2Seq,
            type="multimodal",
        )


def custom_pipelines_entry() -> dict:
    """The `custom_pipelines` of an exported config: `pipeline("automatic-speech-recognition", model=FOLDER,
    trust_remote_code=True)` runs [`MMAVSRSpeechRecognitionPipeline`] from the folder's `pipeline_mmavsr.py`.

    Only that task is listed: Transformers asks for `trust_remote_code` for every task a config lists, and
    `audio-visual-speech-recognition` stays usable without it where this package is installed."""
    entry = {
        "impl": f"{Path(__file__).stem}.{MMAVSRSpeechRecognitionPipeline.__name__}",
        "pt": [AutoModelForSpeechSeq2Seq.__name__],
        "type": "multimodal",
    }
    return {SPEECH_RECOGNITION_TASK: entry}


def is_video_input(inputs) -> bool:
    """A video file path (by extension), frames `(T, H, W[, C])`, or a dict with a `video` key."""
    if isinstance(inputs, (str, os.PathLike)):
        return Path(str(inputs)).suffix.lower() in VIDEO_SUFFIXES
    if isinstance(inputs, dict):
        return "video" in inputs
    return isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim >= 3


class MMAVSRSpeechRecognitionPipeline(AutomaticSpeechRecognitionPipeline):
    """Transcribes audio or video with an MMAVSR model (lip reading, speech recognition or both), returning
    `{"text": ...}`.

    Inputs:
        - a video file (`.mp4`, `.mov`, `.avi`, `.mkv`, `.webm`, ...): its frames, and its audio track when the model
          has an audio encoder (a video-only model takes silent videos; an audio-only model reads the track);
        - `{"video": frames or path, "fps": 25, "audio": wave, "sampling_rate": 16000}` (audio optional);
        - frames `(T, H, W, 3)` RGB or `(T, H, W)` grayscale uint8 at 25 fps;
        - audio, as for [`AutomaticSpeechRecognitionPipeline`]: a file path (read with soundfile, resampled), an array
          at the feature extractor's rate, or `{"array"/"raw": wave, "sampling_rate": rate}` (resampled here).

    Videos at another frame rate, constant or variable, are brought to 25 fps by nearest timestamp
    (`media_io.resample_frames`, the rule `prepare` applies too: frames repeated or dropped, never blended) and turned
    upright as their container's rotation says; the audio track is cut or zero-padded to the
    video's duration (640 samples a frame, `media_io.fit_audio_to_video`), unless the two differ by more than
    `processing_mmavsr.AV_DURATION_TOLERANCE` (0.5 s): then a ValueError names the video. Audio files at another
    sampling rate are resampled and several channels averaged. Missing, empty, corrupt or truncated files raise a
    `MediaError` naming the file. Frames larger than 128x128 pixels are taken as full faces and the mouth is
    cropped by `mouth_cropper` (default: `mmavsr_processing.mouth_cropping.MouthCropper(detector=mouth_detector)`,
    built on first use: `mouth_detector="mediapipe"` crops as auto_avsr's preparation, the default when the `crop`
    extra is installed; `"haar"` uses OpenCV's Haar cascades, the fallback); frames of at most 128x128 are taken as
    mouth ROIs already. `crop_mouth=True` / `False` (at construction or per call) forces either way.

    Recordings of any length (audio, video, both) are transcribed whole, never cut; `segmentation` says how:
        - `"auto"` (default): a recording of at most `max_segment_s` (20 s) goes to the model in one piece; a longer
          one is cut at pauses when it has sound (`"vad"`), in overlapping windows when it has none (`"windows"`);
        - `"vad"`: speech regions found by silero-vad on the sound (also for a lip-reading model, when the video has
          sound), split at pauses of at least `min_pause_s` (0.2 s) and again at their longest pause when longer
          than `max_segment_s`, each widened by `speech_pad_s` of the sound around it (0.2 s: the lead-in a
          model trained on clips expects; chosen on validation data, docs/transcribe.md); silence between them is
          not transcribed;
        - `"windows"`: windows of `chunk_length_s` (default `max_segment_s`) overlapping by `stride_length_s` on each
          side (default a sixth of a window); the transcripts of neighbouring windows are joined where they repeat
          each other (`long_form.overlap_start`). Giving `chunk_length_s` chooses this mode;
        - `"off"`: one piece; a recording longer than the model takes (a log-mel model's 30 s window) raises.
    Files are read in pieces (`long_form.Recording`), segments are featurised one by one and decoded `batch_size` at a
    time, so memory does not grow with the recording. `return_timestamps=True` adds `chunks`:
    `[{"text", "timestamp": (start, end)}]` in seconds, one per segment (neighbouring windows' overlap split in the
    middle). `progress=True` shows a bar over the recording's seconds.

    `int8=True` (at construction) quantizes the model's linear layers to int8 in place (dynamic quantization, on a
    CPU; `model.quantize_int8()`): faster decoding, with transcripts that may differ slightly from fp32.

    Generation follows the model's generation config (e.g. `num_beams`, `ctc_weight`); what it leaves unset gets the
    ASR pipeline's defaults (`num_beams=5`, `max_new_tokens=256`); every `generate` argument may be passed at
    construction or per call.
    """

    _load_video_processor = None  # loaded when the model folder has one (audio-only models need none)

    def __init__(
        self,
        model,
        feature_extractor=None,
        tokenizer=None,
        video_processor=None,
        mouth_cropper=None,
        mouth_detector=None,
        int8: bool = False,
        **kwargs,
    ):
        register_speech_seq2seq()
        processor = kwargs.get("processor")
        if processor is not None:
            feature_extractor = feature_extractor or getattr(processor, "feature_extractor", None)
            tokenizer = tokenizer or getattr(processor, "tokenizer", None)
            video_processor = video_processor or getattr(processor, "video_processor", None)
        super().__init__(
            model, feature_extractor=feature_extractor, tokenizer=tokenizer, video_processor=video_processor, **kwargs
        )
        if self.type != "seq2seq":
            raise ValueError(f"{type(self).__name__} runs MMAVSR models; got {type(self.model).__name__}.")
        if mouth_cropper is not None and mouth_detector is not None:
            raise ValueError("give mouth_cropper or mouth_detector, not both (the cropper has its own detector).")
        if mouth_detector not in (None, "mediapipe", "haar"):
            raise ValueError(f"mouth_detector must be 'mediapipe', 'haar' or None, got {mouth_detector!r}.")
        self.mouth_cropper = mouth_cropper
        self.mouth_detector = mouth_detector
        if int8 not in (True, False):
            raise ValueError(f"int8 must be True or False, got {int8!r}.")
        if int8 and not getattr(self.model, "is_int8_quantized", False):
            self.model.quantize_int8()  # in place: the pipeline's model decodes with int8 linear layers
        self._speech_detector = None  # silero-vad, loaded on first use

    def _sanitize_parameters(
        self,
        crop_mouth=None,
        segmentation=None,
        max_segment_s=None,
        min_pause_s=None,
        speech_pad_s=None,
        progress=None,
        return_timestamps=None,
        **kwargs,
    ):
        if kwargs.get("chunk_length_s"):
            kwargs.setdefault("ignore_warning", True)  # windows are joined here, not as the ASR pipeline warns of
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if crop_mouth is not None:
            if crop_mouth not in (True, False):
                raise ValueError(f"crop_mouth must be True, False or None (decide by frame size), got {crop_mouth!r}.")
            preprocess_params["crop_mouth"] = crop_mouth
        if segmentation is not None:
            if segmentation not in SEGMENTATION_MODES:
                raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {segmentation!r}.")
            preprocess_params["segmentation"] = segmentation
        for name, value in (("max_segment_s", max_segment_s), ("min_pause_s", min_pause_s)):
            if value is not None:
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
                preprocess_params[name] = float(value)
        if speech_pad_s is not None:
            if not isinstance(speech_pad_s, (int, float)) or speech_pad_s < 0:
                raise ValueError(f"speech_pad_s must be a number of seconds >= 0, got {speech_pad_s!r}.")
            preprocess_params["speech_pad_s"] = float(speech_pad_s)
        if progress is not None:
            preprocess_params["progress"] = bool(progress)
        if return_timestamps is not None:
            if return_timestamps not in (True, False):
                raise ValueError(
                    "return_timestamps=True gives the (start, end) of each segment in seconds; MMAVSR models have no "
                    f"word or character timestamps (got {return_timestamps!r})."
                )
            postprocess_params["return_timestamps"] = return_timestamps
        return preprocess_params, forward_params, postprocess_params

    # -- inputs -------------------------------------------------------------------------------------------------

    @property
    def _config(self):
        return self.model.config

    @property
    def _sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate if self.feature_extractor is not None else SAMPLING_RATE

    def _read_audio_input(self, inputs):
        """Dicts at another rate become waves at the feature extractor's rate; the rest is left as it is (arrays, and
        bytes, URLs, torchcodec decoders for the ASR pipeline; files are read through `Recording`)."""
        if isinstance(inputs, dict) and inputs.get("sampling_rate") not in (None, self._sampling_rate):
            inputs = dict(inputs)
            wave = inputs.pop("raw", None)
            wave = inputs.pop("array", None) if wave is None else wave
            if isinstance(wave, torch.Tensor):
                wave = wave.cpu().numpy()
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim == 2:
                wave = wave.mean(axis=0)  # (channels, samples), as the ASR pipeline reads it
            rate = inputs.pop("sampling_rate")
            if "stride" in inputs:
                inputs["stride"] = tuple(int(round(s * self._sampling_rate / rate)) for s in inputs["stride"])
            inputs.pop("path", None)
            return {
                **inputs,
                "raw": resample_audio(wave, rate, self._sampling_rate),
                "sampling_rate": self._sampling_rate,
            }
        return inputs

    def _read_video_input(self, inputs) -> tuple[str, np.ndarray, float, np.ndarray | None]:
        """`(source, frames (T, H, W[, C]) uint8, fps, audio wave or None)` of a video input."""
        audio = None
        if isinstance(inputs, dict):
            video, fps = inputs["video"], inputs.get("fps")
            audio = inputs.get("audio", inputs.get("array", inputs.get("raw")))
            if audio is not None:
                if isinstance(audio, (str, os.PathLike)):
                    audio = read_audio(audio, sampling_rate=self._sampling_rate, resample=True, mono=True)
                else:
                    audio = np.asarray(audio.cpu().numpy() if isinstance(audio, torch.Tensor) else audio, np.float32)
                    rate = inputs.get("sampling_rate", self._sampling_rate)
                    audio = resample_audio(audio, rate, self._sampling_rate)
        else:
            video, fps = inputs, None
        if isinstance(video, (str, os.PathLike)):
            source = str(video)
            if fps:  # the caller's rate overrides the file's
                frames, _ = read_video(video)
            else:  # by the frames' own timestamps: variable frame rates too (0 fps: `read_video` names the file)
                frames, fps = read_video(video, target_fps=VIDEO_FPS)
            if audio is None and self._config.audio_encoder is not None:
                audio = read_audio_track(video, self._sampling_rate)
        else:
            source = "video input"
            frames = video.cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
            if frames.ndim not in (3, 4) or len(frames) == 0:
                raise ValueError(
                    f"{source}: expected frames (T, H, W, 3) or (T, H, W) with T > 0, got shape {frames.shape}."
                )
            if frames.dtype != np.uint8:
                raise ValueError(f"{source}: expected uint8 frames, got {frames.dtype}.")
            fps = fps or VIDEO_FPS
        return source, frames, float(fps), audio

    def _audio_of_video(self, inputs):
        """The audio of a video input, for an audio-only model: a file's audio track, or a dict's `audio`."""
        if isinstance(inputs, (str, os.PathLike)):
            if Recording.from_file(inputs, self._sampling_rate, video=False).audio is None:
                raise ValueError(f"{inputs}: this audio-only model needs sound, but the video has no audio track.")
            return str(inputs)  # read in pieces, or whole for a short video (`read_audio` reads the track)
        if isinstance(inputs, dict) and inputs.get("audio") is not None:
            audio = inputs["audio"]
            if isinstance(audio, (str, os.PathLike)):
                return audio
            return {"raw": audio, "sampling_rate": inputs.get("sampling_rate", self._sampling_rate)}
        raise ValueError("This audio-only model needs sound: give a video file with an audio track, or audio.")

    def _crop_mouth(self, source: str, frames: np.ndarray, crop_mouth: bool | None) -> np.ndarray:
        """Mouth ROIs `(T, 96, 96)` of full-face frames; frames already cropped are returned unchanged."""
        height, width = frames.shape[1:3]
        if crop_mouth is None:
            crop_mouth = max(height, width) > MOUTH_ROI_MAX_SIZE
        if not crop_mouth:
            return frames
        if frames.ndim == 3 or frames.shape[-1] == 1:  # grayscale: the cropper reads RGB
            frames = np.repeat(frames.reshape(*frames.shape[:3], 1), 3, axis=-1)
        if self.mouth_cropper is None:
            try:
                from mmavsr_processing.mouth_cropping import MouthCropper
            except ImportError as error:
                raise ImportError(
                    f"{source}: the frames ({height}x{width}) are taken as full faces, and cropping the mouth needs "
                    f"mmavsr_processing.mouth_cropping ({error}); pass crop_mouth=False for mouth ROIs, or a "
                    "mouth_cropper."
                ) from error
            self.mouth_cropper = MouthCropper(detector=self.mouth_detector)
        try:
            return self.mouth_cropper(frames)
        except ValueError as error:  # NoFaceError included
            raise type(error)(f"{source}: {error} (pass crop_mouth=False if the frames are mouth ROIs)") from error

    def preprocess(
        self,
        inputs,
        chunk_length_s=0,
        stride_length_s=None,
        crop_mouth=None,
        segmentation="auto",
        max_segment_s=DEFAULT_MAX_SEGMENT_S,
        min_pause_s=DEFAULT_MIN_PAUSE_S,
        speech_pad_s=DEFAULT_SPEECH_PAD_S,
        progress=False,
    ):
        config = self._config
        reads_video = config.vision_encoder is not None
        if is_video_input(inputs) and not reads_video:
            inputs = self._audio_of_video(inputs)  # an audio-only model reads the sound of a video
        elif not is_video_input(inputs) and reads_video:
            raise ValueError(
                f"This {config.modality} model reads the lips: give a video (a file such as clip.mp4, frames "
                "(T, H, W, 3), or {'video': ..., 'audio': ...}), not audio alone."
            )
        recording = self._recording(inputs, reads_video)
        if recording is None:  # bytes, URLs, decoders: read by the ASR pipeline, in one piece
            yield from super().preprocess(inputs, chunk_length_s, stride_length_s)
            return
        limit = self._max_piece_seconds()
        if limit is not None:
            max_segment_s = min(max_segment_s, limit)
        mode = self._segmentation_mode(recording, segmentation, chunk_length_s, max_segment_s, limit)
        meta = {"segment": (0.0, round(recording.duration, 3)), "overlap": False, "skip": False}
        if mode == "off" and reads_video:
            yield {**self._preprocess_video(inputs, crop_mouth), **meta}
        elif mode == "off":
            wave = recording.audio
            if isinstance(wave, str) and read_audio_can_read(wave):
                wave = read_audio(wave, sampling_rate=self._sampling_rate, resample=True, mono=True)
            elif isinstance(wave, str):  # a container libsndfile does not read (mp3, m4a, a video's track): FFmpeg
                wave = np.concatenate(list(recording.audio_blocks()))
            yield {"is_last": True, **self._features(recording.name, None, wave, crop_mouth), **meta}
        else:
            window_s = chunk_length_s or max_segment_s
            stride_s = window_s / 6 if stride_length_s is None else stride_length_s
            if isinstance(stride_s, (list, tuple)):
                if len(set(stride_s)) != 1:
                    raise ValueError(f"windows overlap by the same stride on both sides, got {stride_s}.")
                stride_s = stride_s[0]
            if limit is not None and window_s > limit:
                raise ValueError(
                    f"chunk_length_s={window_s:g} is longer than this model takes in one piece ({limit:g} s)."
                )
            yield from self._segments(
                recording, mode, window_s, stride_s, (max_segment_s, min_pause_s, speech_pad_s), crop_mouth, progress
            )

    def _max_piece_seconds(self) -> float | None:
        """The longest input the model takes in one piece: the log-mel window of a Whisper-style audio encoder;
        None when the model takes any length."""
        extractor = self.feature_extractor
        if self._config.audio_encoder is not None and getattr(extractor, "feature_type", None) == "log-mel":
            return float(extractor.chunk_length)
        return None

    def _recording(self, inputs, reads_video: bool) -> Recording | None:
        """The recording of an input (its video when `reads_video`, else its sound), with its duration; files are
        only probed. None for inputs the ASR pipeline reads itself (bytes, URLs, decoders)."""
        rate = self._sampling_rate
        if not reads_video:
            if isinstance(inputs, (str, os.PathLike)) and not str(inputs).startswith(("http://", "https://")):
                return Recording.from_file(inputs, rate, video=False)
            wave = self._read_audio_input(inputs)
            if isinstance(wave, dict) and set(wave) <= {"raw", "array", "sampling_rate", "path"}:
                wave = wave.get("raw", wave.get("array"))
            if isinstance(wave, torch.Tensor):
                wave = wave.cpu().numpy()
            if not isinstance(wave, np.ndarray) or wave.ndim != 1:
                return None
            wave = wave.astype(np.float32, copy=False)
            return Recording("audio input", len(wave) / rate, audio=wave, sampling_rate=rate)
        audio = None
        video, fps = (inputs["video"], inputs.get("fps")) if isinstance(inputs, dict) else (inputs, None)
        if isinstance(inputs, dict):
            audio = inputs.get("audio", inputs.get("array", inputs.get("raw")))
            if isinstance(audio, (str, os.PathLike)):
                audio = str(audio)
            elif audio is not None:
                audio = np.asarray(audio.cpu().numpy() if isinstance(audio, torch.Tensor) else audio, np.float32)
                audio = resample_audio(audio, inputs.get("sampling_rate", rate), rate)
        if isinstance(video, (str, os.PathLike)):
            recording = Recording.from_file(video, rate, audio=audio is None)
            if recording.video is None:
                raise MediaError(f"{video}: no video stream")
        else:
            frames = video.cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
            if frames.ndim not in (3, 4) or len(frames) == 0 or frames.dtype != np.uint8:
                return Recording("video input", 0.0)  # the one-piece path names what is wrong
            frames = resample_frames(frames, fps or VIDEO_FPS, source="video input")
            recording = Recording("video input", len(frames) / VIDEO_FPS, video=frames, sampling_rate=rate)
        if audio is not None:
            recording.audio = audio
            recording.audio_duration = (
                Recording.from_file(audio, rate, video=False).duration if isinstance(audio, str) else len(audio) / rate
            )
        return recording

    def _segmentation_mode(self, recording, segmentation, chunk_length_s, max_segment_s, limit) -> str:
        if chunk_length_s:
            if segmentation not in ("auto", "windows"):
                raise ValueError(
                    f"chunk_length_s cuts fixed windows; it does not go with segmentation={segmentation!r}."
                )
            return "windows"
        if segmentation == "auto":
            if recording.duration <= max_segment_s:
                return "off"
            return "vad" if recording.has_audio else "windows"
        if segmentation == "vad" and not recording.has_audio:
            raise ValueError(
                f"{recording.name}: segmentation='vad' finds the pauses in the sound, and there is none; use "
                "segmentation='windows'."
            )
        if segmentation == "off" and limit is not None and recording.duration > limit:
            raise ValueError(
                f"{recording.name}: lasts {recording.duration:.1f} s, longer than this model takes in one piece "
                f"({limit:g} s, its log-mel window); it is never truncated: leave segmentation='auto', or choose "
                "'vad' or 'windows', to transcribe it in segments."
            )
        return segmentation

    def _segments(self, recording, mode, window_s, stride_s, vad_settings, crop_mouth, progress):
        """The model inputs of each segment of a long recording, read in pieces (see the class docstring).
        `vad_settings`: (max_segment_s, min_pause_s, speech_pad_s) of `long_form.speech_segments`."""
        from tqdm.auto import tqdm

        from mmavsr_processing.processing_mmavsr import AV_DURATION_TOLERANCE, check_av_durations

        config, rate = self._config, self._sampling_rate
        needs_audio = config.audio_encoder is not None
        if needs_audio and not recording.has_audio:
            raise ValueError(
                f"{recording.name}: this {config.modality} model needs the audio track, but the video has none "
                "(give {'video': ..., 'audio': wave, 'sampling_rate': rate})."
            )
        if needs_audio and recording.has_video:
            check_av_durations(recording.duration, recording.audio_duration, recording.name, AV_DURATION_TOLERANCE)
        per_second = VIDEO_FPS if recording.has_video else rate  # the timeline: video frames, or audio samples
        total = int(round(recording.duration * per_second))
        if mode == "vad":
            counted = [0]

            def counting(blocks):
                for block in blocks:
                    counted[0] += len(block)
                    yield block

            if self._speech_detector is None:
                self._speech_detector = SpeechDetector()
            probabilities = self._speech_detector.probabilities(counting(recording.audio_blocks()), rate)
            max_segment_s, min_pause_s, pad_s = vad_settings
            speech = speech_segments(
                probabilities, counted[0], max_segment_s, min_pause_s, pad_s=pad_s, sampling_rate=rate
            )
            ranges = frame_aligned(speech, total) if recording.has_video else speech
            overlap = 0
        else:
            overlap = int(round(stride_s * per_second))
            ranges = fixed_windows(total, int(round(window_s * per_second)), overlap)
        skip = not ranges  # no speech: one short piece is decoded, its text dropped (an empty transcript)
        if skip:
            logger.warning("%s: the speech detector found no speech; the transcript is empty", recording.name)
            ranges = [(0, min(total, per_second))]
        frames = cut_ranges(recording.video_blocks(), ranges) if recording.has_video else None
        unit = SAMPLES_PER_FRAME if recording.has_video else 1
        audio = cut_ranges(recording.audio_blocks(), [(a * unit, b * unit) for a, b in ranges]) if needs_audio else None
        bar = tqdm(
            total=round(recording.duration, 1),
            desc=recording.name,
            disable=not progress,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",  # 47.9, not 47.900000000000006
        )
        done = 0.0
        try:
            for index, (start, stop) in enumerate(ranges):
                piece = next(frames) if frames is not None else None
                wave = next(audio) if audio is not None else None
                if piece is not None and len(piece) == 0:
                    raise MediaError(f"{recording.name}: no frame from {start / per_second:.2f} s on")
                if wave is not None and piece is not None:
                    wave = fit_audio_to_video(wave, len(piece), rate)
                first, last = index == 0, index == len(ranges) - 1
                # neighbouring windows share 2 * overlap: each takes the half on its side
                begin = start + (overlap if not first else 0)
                end = stop - (overlap if not last else 0)
                meta = {
                    "segment": (round(begin / per_second, 3), round(end / per_second, 3)),
                    "overlap": bool(overlap) and not first,
                    "skip": skip,
                }
                features = self._features(recording.name, piece, wave, crop_mouth)
                # counted when handed to the model (a consumer may not resume the generator after the last piece);
                # the silence after the last segment is done with it
                reached = round(recording.duration if last else min(end / per_second, recording.duration), 1)
                bar.update(reached - done)
                done = reached
                yield {"is_last": last, **features, **meta}
        finally:
            bar.close()

    def _features(self, source: str, frames: np.ndarray | None, audio: np.ndarray | None, crop_mouth) -> dict:
        """The model inputs of frames at 25 fps (mouth cropped when needed) and/or a wave at the extractor's rate."""
        model_inputs = {}
        if frames is not None:
            if self.video_processor is None:
                raise ValueError(
                    f"{source}: the pipeline has no video processor; save the MMAVSRProcessor with the model, or pass "
                    "video_processor= (or processor=)."
                )
            frames = self._crop_mouth(source, frames, crop_mouth)
            model_inputs.update(self.video_processor(frames, return_tensors="pt"))
        if audio is not None:
            if len(audio) == 0:
                what = "the audio file" if os.path.isfile(source) else "the audio"
                raise MediaError(f"{source}: {what} holds no sample")
            model_inputs.update(
                self.feature_extractor(
                    audio, sampling_rate=self._sampling_rate, return_tensors="pt", return_attention_mask=True
                )
            )
        if self.dtype is not None:
            model_inputs = {
                key: value.to(self.dtype) if value.is_floating_point() else value for key, value in model_inputs.items()
            }
        return model_inputs

    def _preprocess_video(self, inputs, crop_mouth: bool | None) -> dict:
        from mmavsr_processing.processing_mmavsr import AV_DURATION_TOLERANCE, check_av_durations

        config = self._config
        source, frames, fps, audio = self._read_video_input(inputs)
        frames = resample_frames(frames, fps, source=source)
        if config.audio_encoder is None:
            audio = None
        elif audio is None:
            raise ValueError(
                f"{source}: this {config.modality} model needs the audio track, but the video has none "
                "(give {'video': ..., 'audio': wave, 'sampling_rate': rate})."
            )
        else:
            check_av_durations(len(frames) / VIDEO_FPS, len(audio) / self._sampling_rate, source, AV_DURATION_TOLERANCE)
            audio = fit_audio_to_video(audio, len(frames), self._sampling_rate)
        return {"is_last": True, **self._features(source, frames, audio, crop_mouth)}

    # -- model and outputs --------------------------------------------------------------------------------------

    def _forward(self, model_inputs, return_timestamps=False, return_language=None, **generate_kwargs):
        is_last = model_inputs.pop("is_last")
        stride = model_inputs.pop("stride", None)
        inputs = {name: model_inputs.pop(name) for name in MODEL_INPUT_NAMES if name in model_inputs}
        tokens = self.model.generate(**inputs, **self._prepare_generate_kwargs(generate_kwargs))
        if not isinstance(tokens, torch.Tensor):
            tokens = tokens.sequences
        output = {"is_last": is_last, "tokens": tokens}
        if stride is not None:
            output["stride"] = stride  # kept for `postprocess` to merge overlapping chunks
        return {**output, **model_inputs}  # the segment's times, overlap and skip flags included

    def postprocess(self, model_outputs, decoder_kwargs=None, return_timestamps=None, return_language=None):
        if not any("segment" in output for output in model_outputs):
            if return_timestamps:
                raise ValueError("return_timestamps needs an input the pipeline reads itself (a file, an array).")
            return super().postprocess(model_outputs, decoder_kwargs, None, return_language)
        special = set(self.tokenizer.all_special_ids)
        merged, chunks = [], []
        for output in model_outputs:
            if output["skip"]:
                continue
            ids = [token for token in output["tokens"][0].tolist() if token not in special]
            if output["overlap"]:
                ids = ids[overlap_start(merged, ids) :]  # what the previous window already said
            merged.extend(ids)
            start, end = output["segment"]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            chunks.append({"text": text, "timestamp": (start, end)})
        result = {"text": self.tokenizer.decode(merged, skip_special_tokens=True)}
        if return_timestamps:
            result["chunks"] = chunks
        return result

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """As `ChunkPipeline.get_iterator`, with segments of different lengths padded into a batch
        ([`collate_segments`]: Transformers' collation pads waves only)."""
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        from torch.utils.data import DataLoader
        from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator

        dataset = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(
            dataset, num_workers=min(num_workers, 1), batch_size=batch_size, collate_fn=collate_segments
        )
        model_iterator = PipelinePackIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


__all__ = [
    "AUDIO_VISUAL_TASK",
    "MMAVSRSpeechRecognitionPipeline",
    "register_speech_seq2seq",
    "register_pipelines",
    "custom_pipelines_entry",
    "collate_segments",
]
