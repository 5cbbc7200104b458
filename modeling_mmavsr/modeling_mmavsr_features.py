"""Per-frame features of an MMAVSR encoder, from any of its stages, for a padded batch of video, audio or both.

`feature_layer` picks the stage (see `MMAVSREncoder` for the data flow):
- `video_frontend`: the vision encoder's features (ResNet3D, ViT, CLIP-ViT, ViViT or timm), one per video frame at
  25 fps, (B, T, D_video);
- `audio_frontend`: the audio encoder's features (ResNet1D, Whisper or WavLM), (B, T, D_audio) at 25 fps (50 Hz for
  Whisper/WavLM with `audio_frame_rate=50`);
- `fused`: the Conformer's input, (B, T, hidden_size): both streams cut to their common length and fused
  (`fusion_type`), or the one stream projected to `hidden_size`;
- `conformer`: the Conformer's output, (B, T, hidden_size): the encoder's `last_hidden_state`, what the decoder and
  the CTC head read.

Every result carries its frame mask and lengths: frames past a sample's length are padding (their values are not
defined), and the frames within it are those the sample gets alone.
"""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


FEATURE_LAYERS = ("video_frontend", "audio_frontend", "fused", "conformer")


@dataclass
class MMAVSREncoderFeatures(ModelOutput):
    """
    features (`torch.FloatTensor` of shape `(batch_size, num_frames, dim)`):
        Per-frame features of the chosen `feature_layer`, zero-padded or undefined past each sample's length.
    attention_mask (`torch.BoolTensor` of shape `(batch_size, num_frames)`):
        True on each sample's real frames.
    lengths (`torch.LongTensor` of shape `(batch_size,)`):
        Real frames per sample (`attention_mask.sum(-1)`).
    """

    features: torch.FloatTensor | None = None
    attention_mask: torch.BoolTensor | None = None
    lengths: torch.LongTensor | None = None


def _stream_output(features: torch.Tensor, mask: torch.Tensor | None) -> MMAVSREncoderFeatures:
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return MMAVSREncoderFeatures(features=features, attention_mask=mask, lengths=mask.sum(-1))


class MMAVSREncoderFeaturesMixin:
    """`get_encoder_features()` for the models that hold an `MMAVSREncoder` (`get_encoder()`)."""

    def get_encoder_features(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        feature_layer: str = "conformer",
    ) -> MMAVSREncoderFeatures:
        r"""
        Per-frame encoder features of a padded batch, with each sample's frame mask and length.

        Args:
            input_features, attention_mask, pixel_values_videos, video_attention_mask:
                The model's inputs, as `MMAVSRProcessor` makes them (audio, video or both, as the model reads).
            feature_layer (`str`, defaults to `"conformer"`):
                `video_frontend` or `audio_frontend` (one encoder's own features; only that input is needed),
                `fused` (the Conformer's input: the fused streams, or the one stream projected) or `conformer`
                (the encoder's output).

        Returns:
            [`MMAVSREncoderFeatures`]: `features` (B, T, D), `attention_mask` (B, T) and `lengths` (B,). Frames are
            at 25 fps (Whisper/WavLM at 50 Hz with `audio_frame_rate=50`). A sample's frames within its length equal
            those it gets alone; past it they are padding. Gradients flow unless called under `torch.no_grad()`.

        Example:

        ```python
        >>> features = model.get_encoder_features(**processor(videos=["clip.mp4"]), feature_layer="fused")
        >>> clip = features.features[0, : features.lengths[0]]  # (frames, hidden_size)
        ```
        """
        if feature_layer not in FEATURE_LAYERS:
            raise ValueError(
                f"Unknown feature_layer {feature_layer!r}; valid choices are {', '.join(map(repr, FEATURE_LAYERS))}."
            )
        encoder = self.get_encoder()
        config = encoder.config
        for layer, frontend, option in (
            ("video_frontend", encoder.vision_frontend, "vision_encoder"),
            ("audio_frontend", encoder.audio_frontend, "audio_encoder"),
        ):
            if feature_layer == layer and frontend is None:
                raise ValueError(f"feature_layer={layer!r}: this {config.modality} model has no {option}.")
        if feature_layer == "video_frontend":
            return _stream_output(*encoder.video_features(pixel_values_videos, video_attention_mask))
        if feature_layer == "audio_frontend":
            return _stream_output(*encoder.audio_features(input_features, attention_mask))
        hidden_states, frame_mask = encoder.fused_features(
            input_features, attention_mask, pixel_values_videos, video_attention_mask
        )
        output = _stream_output(hidden_states, frame_mask)
        if feature_layer == "conformer":
            output.features = encoder.conformer(hidden_states, output.attention_mask).last_hidden_state
        return output


__all__ = ["FEATURE_LAYERS", "MMAVSREncoderFeatures", "MMAVSREncoderFeaturesMixin"]
