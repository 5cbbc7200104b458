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

import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq
from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

from mmavsr_processing.media_constants import SAMPLING_RATE, VIDEO_FPS
from mmavsr_processing.media_io import (
    VIDEO_SUFFIXES,
    MediaError,
    fit_audio_to_video,
    read_audio,
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
MODEL_INPUT_NAMES = ("input_features", "attention_mask", "pixel_values_videos", "video_attention_mask")


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
    mouth ROIs already. `crop_mouth=True` / `False` (at construction or per call)
    forces either way. Long audio is transcribed in chunks with `chunk_length_s` (and `stride_length_s`, default a
    sixth of a chunk on each side); overlapping chunks are merged on their longest common token run. Videos are
    transcribed whole.

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

    def _sanitize_parameters(self, crop_mouth=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if crop_mouth is not None:
            if crop_mouth not in (True, False):
                raise ValueError(f"crop_mouth must be True, False or None (decide by frame size), got {crop_mouth!r}.")
            preprocess_params["crop_mouth"] = crop_mouth
        return preprocess_params, forward_params, postprocess_params

    # -- inputs -------------------------------------------------------------------------------------------------

    @property
    def _config(self):
        return self.model.config

    @property
    def _sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate if self.feature_extractor is not None else SAMPLING_RATE

    def _read_audio_input(self, inputs):
        """Audio files and dicts at another rate become waves at the feature extractor's rate; the rest is left to
        the ASR pipeline (arrays, bytes, URLs, torchcodec decoders)."""
        if isinstance(inputs, os.PathLike) or (isinstance(inputs, str) and not inputs.startswith(("http://", "https://"))):
            wave = read_audio(inputs, sampling_rate=self._sampling_rate, resample=True, mono=True)
            if wave.size == 0:
                raise MediaError(f"{inputs}: the audio file holds no sample")
            return wave
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
            return {**inputs, "raw": resample_audio(wave, rate, self._sampling_rate), "sampling_rate": self._sampling_rate}
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
            track = read_audio_track(inputs, self._sampling_rate)
            if track is None:
                raise ValueError(f"{inputs}: this audio-only model needs sound, but the video has no audio track.")
            return track
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

    def preprocess(self, inputs, chunk_length_s=0, stride_length_s=None, crop_mouth=None):
        config = self._config
        if is_video_input(inputs) and config.vision_encoder is None:
            inputs = self._audio_of_video(inputs)  # an audio-only model reads the sound of a video
        elif is_video_input(inputs):
            if chunk_length_s:
                raise ValueError("chunk_length_s splits audio; videos are transcribed whole.")
            yield self._preprocess_video(inputs, crop_mouth)
            return
        elif config.vision_encoder is not None:
            raise ValueError(
                f"This {config.modality} model reads the lips: give a video (a file such as clip.mp4, frames "
                "(T, H, W, 3), or {'video': ..., 'audio': ...}), not audio alone."
            )
        yield from super().preprocess(self._read_audio_input(inputs), chunk_length_s, stride_length_s)

    def _preprocess_video(self, inputs, crop_mouth: bool | None) -> dict:
        from mmavsr_processing.processing_mmavsr import AV_DURATION_TOLERANCE, check_av_durations

        config = self._config
        source, frames, fps, audio = self._read_video_input(inputs)
        frames = resample_frames(frames, fps, source=source)
        if self.video_processor is None:
            raise ValueError(
                f"{source}: the pipeline has no video processor; save the MMAVSRProcessor with the model, or pass "
                "video_processor= (or processor=)."
            )
        frames = self._crop_mouth(source, frames, crop_mouth)
        model_inputs = dict(self.video_processor(frames, return_tensors="pt"))
        if config.audio_encoder is not None:
            if audio is None:
                raise ValueError(
                    f"{source}: this {config.modality} model needs the audio track, but the video has none "
                    "(give {'video': ..., 'audio': wave, 'sampling_rate': rate})."
                )
            check_av_durations(
                len(frames) / VIDEO_FPS, len(audio) / self._sampling_rate, source, AV_DURATION_TOLERANCE
            )
            audio = fit_audio_to_video(audio, len(frames), self._sampling_rate)
            model_inputs.update(
                self.feature_extractor(
                    audio, sampling_rate=self._sampling_rate, return_tensors="pt", return_attention_mask=True
                )
            )
        if self.dtype is not None:
            model_inputs = {
                key: value.to(self.dtype) if value.is_floating_point() else value for key, value in model_inputs.items()
            }
        return {"is_last": True, **model_inputs}

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
        return {**output, **model_inputs}


__all__ = [
    "AUDIO_VISUAL_TASK",
    "MMAVSRSpeechRecognitionPipeline",
    "register_speech_seq2seq",
    "register_pipelines",
    "custom_pipelines_entry",
]
