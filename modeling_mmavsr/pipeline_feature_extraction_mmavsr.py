"""Feature extraction pipeline for MMAVSR models: per-frame encoder features of video files, audio files or arrays.

`pipeline("audio-visual-feature-extraction", model=FOLDER)` (registered when `modeling_mmavsr` is imported) reads its
inputs exactly as the `audio-visual-speech-recognition` pipeline does ([`MMAVSRSpeechRecognitionPipeline`]: video frames
and audio track, 25 fps resampling, mouth cropping of full-face frames, audio at the feature extractor's rate) and
returns, for each input, `{"features": (T, D) float tensor, "frame_rate": fps}` from `model.get_encoder_features` at the
chosen `feature_layer` (`conformer` by default; `fused`, `video_frontend`, `audio_frontend`). A list of inputs with
`batch_size=N` runs N at a time as one padded batch; each result is cut to its own length, and equals what the input
gives alone.
"""

from transformers import AutoModelForSpeechSeq2Seq
from transformers.pipelines import PIPELINE_REGISTRY

from mmavsr_processing.media_constants import VIDEO_FPS

from .modeling_mmavsr_features import FEATURE_LAYERS
from .pipeline_mmavsr import MODEL_INPUT_NAMES, MMAVSRSpeechRecognitionPipeline


FEATURE_EXTRACTION_TASK = "audio-visual-feature-extraction"


class MMAVSRFeatureExtractionPipeline(MMAVSRSpeechRecognitionPipeline):
    """Per-frame encoder features of an MMAVSR model (lip reading, speech recognition or both) for videos and audio.

    Inputs are those of [`MMAVSRSpeechRecognitionPipeline`] (it shares its media reading): a video file, frames
    `(T, H, W[, 3])` uint8 at 25 fps, `{"video": ..., "audio": ..., "sampling_rate": ...}`, or, for audio-only models,
    an audio file, a wave at the feature extractor's rate or `{"array"/"raw": wave, "sampling_rate": rate}`. Audio is
    never chunked: each input gives the features of its whole length.

    Call arguments (also accepted at construction):
        feature_layer (`str`, defaults to `"conformer"`): `conformer`, `fused`, `video_frontend` or
            `audio_frontend` (see `MMAVSRForConditionalGeneration.get_encoder_features`).
        crop_mouth (`bool`, optional): as for the speech recognition pipeline (default: crop frames larger than
            128x128).

    Returns, per input, `{"features": torch.FloatTensor (num_frames, dim), "frame_rate": float}`; `frame_rate` is 25
    (50 for audio-only models with `audio_frame_rate=50`, except for their `video_frontend`, which they lack).
    """

    def _sanitize_parameters(self, feature_layer=None, crop_mouth=None, **kwargs):
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}; it takes feature_layer= and "
                "crop_mouth= (and batch_size=, num_workers=)."
            )
        preprocess_params, forward_params = {}, {}
        if crop_mouth is not None:
            if crop_mouth not in (True, False):
                raise ValueError(f"crop_mouth must be True, False or None (decide by frame size), got {crop_mouth!r}.")
            preprocess_params["crop_mouth"] = crop_mouth
        if feature_layer is not None:
            if feature_layer not in FEATURE_LAYERS:
                raise ValueError(
                    f"Unknown feature_layer {feature_layer!r}; valid choices are "
                    f"{', '.join(map(repr, FEATURE_LAYERS))}."
                )
            forward_params["feature_layer"] = feature_layer
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs, crop_mouth=None):
        for item in super().preprocess(inputs, crop_mouth=crop_mouth):
            features = item.get("input_features")
            if features is not None and features.ndim == 3:
                # log-mel (1, n_mels, F) -> (1, F, n_mels): batching pads the second dimension, which must be time
                item["input_features"] = features.transpose(1, 2)
            yield item

    def _forward(self, model_inputs, feature_layer="conformer"):
        is_last = model_inputs.pop("is_last")
        inputs = {name: model_inputs.pop(name) for name in MODEL_INPUT_NAMES if name in model_inputs}
        if inputs.get("input_features") is not None and inputs["input_features"].ndim == 3:
            inputs["input_features"] = inputs["input_features"].transpose(1, 2)  # back to (B, n_mels, F)
        output = self.model.get_encoder_features(**inputs, feature_layer=feature_layer)
        return {"is_last": is_last, "features": output.features, "lengths": output.lengths}

    def postprocess(self, model_outputs):
        (output,) = model_outputs  # one item per input: audio is not chunked here
        length = int(output["lengths"][0])
        features = output["features"][0, :length].float()
        config = self.model.config
        frame_rate = float(config.audio_frame_rate if config.vision_encoder is None else VIDEO_FPS)
        return {"features": features, "frame_rate": frame_rate}


def register_feature_extraction_pipeline() -> None:
    """Register the `audio-visual-feature-extraction` task (`modeling_mmavsr.register_auto_classes` does it)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(FEATURE_EXTRACTION_TASK, {}).get("impl")
    if registered is not MMAVSRFeatureExtractionPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            FEATURE_EXTRACTION_TASK,
            pipeline_class=MMAVSRFeatureExtractionPipeline,
            pt_model=AutoModelForSpeechSeq2Seq,
            type="multimodal",
        )


__all__ = ["FEATURE_EXTRACTION_TASK", "MMAVSRFeatureExtractionPipeline", "register_feature_extraction_pipeline"]
