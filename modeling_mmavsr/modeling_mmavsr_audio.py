"""Audio encoders: auto_avsr's ResNet18-1D frontend for raw 16 kHz waves; pretrained Whisper encoder and WavLM.

Each maps its input (`AUDIO_INPUTS`) with its `attention_mask` to features (B, T, output_size) at
`config.audio_frame_rate` (25 fps, the video rate, by default; Whisper and WavLM can keep their own 50 Hz), and
`output_lengths` maps a sample's real input length to its number of output frames.
"""

import torch
from torch import nn
from transformers import WavLMModel, WhisperModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmavsr_processing.media_constants import VIDEO_FPS

from .configuration_mmavsr import MMAVSRConfig
from .modeling_mmavsr_fusion import lengths_to_mask, pool_pairs
from .modeling_mmavsr_pretrained import MMAVSRPretrainedEncoder
from .modeling_mmavsr_resnet import MMAVSRResNetTrunk, make_activation, mask_steps


class MMAVSRAudioResNet(nn.Module):
    """Raw 16 kHz wave (B, S) -> features (B, S // 640, 8 * frontend_channels) at 25 fps.

    As in auto_avsr, the trailing `S % audio_samples_per_frame` samples of each utterance are dropped.
    """

    def __init__(self, config: MMAVSRConfig):
        super().__init__()
        channels = config.frontend_channels
        self.samples_per_frame = config.audio_samples_per_frame
        # the first conv (stride 4) and three stride-2 stages give 32x; the average pool does the rest
        self.pool_size = self.samples_per_frame // 32
        self.conv1 = nn.Conv1d(1, channels, kernel_size=80, stride=4, padding=38, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu = make_activation(config.frontend_activation, channels)
        self.trunk = MMAVSRResNetTrunk(1, config)
        self.output_size = config.frontend_output_size

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.samples_per_frame, rounding_mode="floor")

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None):
        num_frames = input_values.shape[1] // self.samples_per_frame
        x = input_values[:, : num_frames * self.samples_per_frame].unsqueeze(1)  # (B, 1, S)
        mask = None
        if attention_mask is not None:
            frames = self.output_lengths(attention_mask.sum(-1))
            samples = frames * self.samples_per_frame
            # keep only each utterance's whole frames, exactly what it keeps alone
            x = mask_steps(x, torch.arange(x.shape[-1], device=x.device)[None] < samples[:, None])
            mask = torch.arange(x.shape[-1] // 4, device=x.device)[None] < (samples // 4)[:, None]  # after stride 4
        x = mask_steps(self.relu(self.bn1(self.conv1(x))), mask)
        x, _ = self.trunk(x, mask)
        x = nn.functional.avg_pool1d(x, kernel_size=self.pool_size, stride=self.pool_size)
        return x.transpose(1, 2)  # (B, T, C)


class MMAVSRWhisperEncoder(MMAVSRPretrainedEncoder):
    """Whisper's encoder on a log-mel spectrogram (B, n_mels, F) at 100 frames/s -> (B, ceil(F / 4), d_model) at 25 fps,
    or (B, ceil(F / 2), d_model) at 50 Hz with `audio_frame_rate=50`.

    Whisper was trained on 30 s windows (F = 3000, 1500 positions). Here it runs on the real length instead: the conv
    stem sees zeros beyond each sample's last frame, the position embeddings are the first ceil(F / 2), and attention
    is masked to the real frames, so a short clip costs what its length costs and a padded batch gives each sample the
    features it gets alone. This is Whisper's encoder cut to the clip (as `WhisperEncoder` with `embed_positions` cut
    to ceil(F / 2)), not the first frames of its 30 s-padded output: attention there also sees the padding's frames.
    For exactly those features, pass log-mels padded to 3000 frames with an all-ones mask (then this is
    `WhisperEncoder` itself) and cut the result. At 25 fps the 50 Hz output is averaged in pairs (`pool_pairs`); at
    50 Hz it is returned as it is.
    """

    model_class = WhisperEncoder

    def __init__(self, config: MMAVSRConfig):
        super().__init__(config.audio_config, frozen=config.freeze_audio_encoder)
        self.output_size = config.audio_config.d_model
        self.num_mel_bins = config.audio_config.num_mel_bins
        self.max_frames = 2 * config.audio_config.max_source_positions
        self.pool = config.audio_frame_rate == VIDEO_FPS

    @classmethod
    def load_pretrained(cls, name_or_path: str, **kwargs):
        # checkpoints hold the whole encoder-decoder (`model.encoder.*` keys): take the encoder of the WhisperModel
        return WhisperModel.from_pretrained(name_or_path, **kwargs).get_encoder()

    def output_lengths(self, mel_frames: torch.Tensor) -> torch.Tensor:
        positions = torch.div(mel_frames - 1, 2, rounding_mode="floor") + 1  # stride-2 conv, 50 Hz
        return torch.div(positions + 1, 2, rounding_mode="floor") if self.pool else positions  # pairs, 25 fps

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch_size, num_mel_bins, num_frames = input_features.shape
        if num_mel_bins != self.num_mel_bins or num_frames > self.max_frames:
            raise ValueError(
                f"audio_encoder='whisper' takes log-mel spectrograms (batch, {self.num_mel_bins} mel bins, at most "
                f"{self.max_frames} frames = 30 s), got `input_features` of shape {tuple(input_features.shape)}."
            )
        encoder = self.encoder
        if attention_mask is None:
            lengths = torch.full((batch_size,), num_frames, device=input_features.device)
        else:
            lengths = attention_mask.sum(-1)
        mel_mask = lengths_to_mask(lengths, num_frames)[:, None].to(input_features.dtype)  # (B, 1, F)
        position_lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        with self.maybe_no_grad():
            # zeros beyond the real frames, as the convolutions' own padding of a lone clip
            hidden_states = nn.functional.gelu(encoder.conv1(input_features * mel_mask)) * mel_mask
            hidden_states = nn.functional.gelu(encoder.conv2(hidden_states)).transpose(1, 2)  # (B, ceil(F / 2), D)
            num_positions = hidden_states.shape[1]
            hidden_states = hidden_states + encoder.embed_positions.weight[:num_positions]
            hidden_states = nn.functional.dropout(hidden_states, p=encoder.dropout, training=encoder.training)
            frame_mask = lengths_to_mask(position_lengths, num_positions)
            attention = create_bidirectional_mask(
                config=encoder.config, inputs_embeds=hidden_states, attention_mask=frame_mask
            )
            for layer in encoder.layers:
                if encoder.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop:
                    continue
                hidden_states = layer(hidden_states, attention)
            hidden_states = encoder.layer_norm(hidden_states)
        return pool_pairs(hidden_states, position_lengths)[0] if self.pool else hidden_states


class MMAVSRWavLMEncoder(MMAVSRPretrainedEncoder):
    """WavLM on a raw 16 kHz wave (B, S) -> (B, T, hidden_size) at 25 fps (its 50 Hz output averaged in pairs), or
    its own 50 Hz frames with `audio_frame_rate=50`.

    Configs whose convolutional feature encoder normalises with GroupNorm over time (`feat_extract_norm="group"`,
    e.g. wavlm-base-plus) would mix padding into the statistics of a batched sample: their feature encoder runs on
    each sample's real samples alone, the Transformer on the padded batch. `feat_extract_norm="layer"` configs run
    batched throughout. SpecAugment (`mask_time_prob`) applies when the encoder trains (`freeze_audio_encoder=False`).
    """

    model_class = WavLMModel

    def __init__(self, config: MMAVSRConfig):
        if config.audio_config.add_adapter:
            raise ValueError("audio_encoder='wavlm' takes configs without an adapter (`add_adapter=False`).")
        super().__init__(config.audio_config, frozen=config.freeze_audio_encoder)
        self.output_size = config.audio_config.hidden_size
        self.per_sample_feature_encoder = config.audio_config.feat_extract_norm == "group"
        self.pool = config.audio_frame_rate == VIDEO_FPS

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        frames = self.encoder._get_feat_extract_output_lengths(num_samples)  # 50 Hz
        return torch.div(frames + 1, 2, rounding_mode="floor") if self.pool else frames

    def extract_features(self, input_values: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """The convolutional feature encoder: (B, S) -> (B, C, S') at 50 Hz."""
        feature_encoder = self.encoder.feature_extractor
        if lengths is None or not self.per_sample_feature_encoder:
            return feature_encoder(input_values)
        num_frames = int(self.encoder._get_feat_extract_output_lengths(input_values.shape[1]))
        features = [feature_encoder(input_values[row : row + 1, : int(length)]) for row, length in enumerate(lengths)]
        return torch.cat([nn.functional.pad(f, (0, num_frames - f.shape[-1])) for f in features])

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        model = self.encoder
        lengths = None if attention_mask is None else attention_mask.sum(-1)
        with self.maybe_no_grad():
            features = self.extract_features(input_values, lengths).transpose(1, 2)  # (B, S', C)
            frame_lengths = frame_mask = None
            if lengths is not None:
                frame_lengths = model._get_feat_extract_output_lengths(lengths)
                frame_mask = lengths_to_mask(frame_lengths, features.shape[1])
            hidden_states, _ = model.feature_projection(features)
            hidden_states = model._mask_hidden_states(hidden_states, attention_mask=frame_mask)
            hidden_states = model.encoder(hidden_states, attention_mask=frame_mask).last_hidden_state
        return pool_pairs(hidden_states, frame_lengths)[0] if self.pool else hidden_states


# what `input_features` holds for each audio encoder: (number of dimensions, description)
AUDIO_INPUTS = {
    "resnet1d": (2, "raw 16 kHz waves of shape (batch, samples)"),
    "wavlm": (2, "raw 16 kHz waves of shape (batch, samples)"),
    "whisper": (3, "log-mel spectrograms of shape (batch, n_mels, frames)"),
}
AUDIO_ENCODER_CLASSES = {
    "resnet1d": MMAVSRAudioResNet,
    "whisper": MMAVSRWhisperEncoder,
    "wavlm": MMAVSRWavLMEncoder,
}
