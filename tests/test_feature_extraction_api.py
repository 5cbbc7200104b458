"""Feature extraction: `get_encoder_features` (frontend, fused and Conformer features with lengths) on models loaded with
`from_pretrained`, and the `audio-visual-feature-extraction` pipeline on real mp4/wav files, one by one and batched.

The central property: the features of a padded batch, cut to each sample's length, equal those of each clip alone.
"""

import numpy as np
import pytest
import torch
from transformers import AutoModel, WhisperConfig, pipeline

from mmavsr_processing import (
    MMAVSRFeatureExtractor,
    MMAVSRProcessor,
    MMAVSRTokenizer,
    MMAVSRVideoProcessor,
    write_audio,
    write_video,
)
from modeling_mmavsr import MMAVSRForConditionalGeneration, MMAVSRModel
from modeling_mmavsr.modeling_mmavsr_features import FEATURE_LAYERS
from modeling_mmavsr.pipeline_feature_extraction_mmavsr import MMAVSRFeatureExtractionPipeline

from .common import make_inputs, select_row, tiny_config


AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)
LENGTHS = [9, 6, 4]
MEL_BINS = 16
# the layers each modality has: its frontends, the fused (or projected) stream, the Conformer
LAYERS = {
    "video": ("video_frontend", "fused", "conformer"),
    "audio": ("audio_frontend", "fused", "conformer"),
    "audiovisual": FEATURE_LAYERS,
}
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def whisper_config():
    return WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=37, decoder_layers=1,
        decoder_attention_heads=4, decoder_ffn_dim=37, num_mel_bins=MEL_BINS, max_source_positions=200,
        max_target_positions=32, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3, begin_suppress_tokens=None,
    )  # fmt: skip


def save_model(folder, modality, seed=0, **overrides):
    """A tiny random model and auto_avsr's processor, saved as a `save_pretrained` folder."""
    torch.manual_seed(seed)
    config = tiny_config(modality, text_config=AUTO_AVSR_TEXT, **overrides)
    MMAVSRForConditionalGeneration(config).save_pretrained(folder)
    feature_type = "log-mel" if config.audio_encoder == "whisper" else "raw"
    MMAVSRProcessor(
        MMAVSRFeatureExtractor(feature_type=feature_type, num_mel_bins=MEL_BINS),
        MMAVSRVideoProcessor(vision_encoder="resnet"),
        MMAVSRTokenizer.from_auto_avsr(),
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    saved = {m: save_model(root / m, m, seed) for seed, m in enumerate(("video", "audio", "audiovisual"))}
    saved["whisper50"] = save_model(
        root / "whisper50",
        None,
        vision_encoder=None,
        audio_encoder="whisper",
        audio_config=whisper_config(),
        audio_frame_rate=50,
    )
    return saved


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two talking-mouth-sized clips (96x96, 25 fps, 30 and 18 frames) with sound, one silent, and a wav."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    files = {}
    for name, frames in (("long", 30), ("short", 18)):
        video = rng.integers(0, 256, (frames, 96, 96, 3), dtype=np.uint8)
        wave = (0.1 * rng.standard_normal(frames * 640)).astype(np.float32)
        write_video(root / f"{name}.mp4", video, audio=wave)
        write_video(root / f"{name}_silent.mp4", video)
        write_audio(root / f"{name}.wav", wave)
        files.update({name: str(root / f"{name}.mp4"), f"{name}_silent": str(root / f"{name}_silent.mp4")})
        files[f"{name}_wav"] = str(root / f"{name}.wav")
    return files


def load(folder):
    return MMAVSRForConditionalGeneration.from_pretrained(folder).eval()


@pytest.mark.parametrize("modality", ["video", "audio", "audiovisual"])
def test_padded_batch_gives_each_clip_its_own_features(folders, modality):
    model = load(folders[modality])
    inputs = make_inputs(modality, LENGTHS, size=24)
    with torch.no_grad():
        encoder_output = model.get_encoder()(**inputs)
        for layer in LAYERS[modality]:
            batch = model.get_encoder_features(**inputs, feature_layer=layer)
            assert batch.lengths.tolist() == LENGTHS, layer
            assert batch.attention_mask.sum(-1).tolist() == LENGTHS, layer
            for row, frames in enumerate(LENGTHS):
                alone = model.get_encoder_features(**select_row(inputs, row, frames), feature_layer=layer)
                assert alone.lengths.tolist() == [frames] and alone.features.shape[1] == frames
                torch.testing.assert_close(batch.features[row, :frames], alone.features[0], **TOLERANCE, msg=layer)
    # the Conformer layer is the encoder's output
    conformer = model.get_encoder_features(**inputs)
    torch.testing.assert_close(conformer.features, encoder_output.last_hidden_state, **TOLERANCE)
    assert torch.equal(conformer.attention_mask, encoder_output.attention_mask)
    width = model.config.hidden_size
    assert conformer.features.shape == (len(LENGTHS), max(LENGTHS), width)


def test_frontend_layers_need_only_their_own_stream(folders):
    model = load(folders["audiovisual"])
    inputs = make_inputs("audiovisual", LENGTHS, size=24)
    video_only = {k: inputs[k] for k in ("pixel_values_videos", "video_attention_mask")}
    audio_only = {k: inputs[k] for k in ("input_features", "attention_mask")}
    with torch.no_grad():
        video = model.get_encoder_features(**video_only, feature_layer="video_frontend")
        audio = model.get_encoder_features(**audio_only, feature_layer="audio_frontend")
        both = model.get_encoder_features(**inputs, feature_layer="video_frontend")
    assert video.features.shape[-1] == model.config.frontend_output_size
    assert audio.lengths.tolist() == LENGTHS  # 640 samples per 25 fps frame
    torch.testing.assert_close(video.features, both.features)
    with pytest.raises(ValueError, match="needs `input_features`"):
        model.get_encoder_features(**video_only, feature_layer="fused")


def test_audio_visual_streams_are_cut_to_their_common_length(folders):
    model = load(folders["audiovisual"])
    video = make_inputs("video", [8], size=24)
    audio = make_inputs("audio", [7])
    with torch.no_grad():
        fused = model.get_encoder_features(**video, **audio, feature_layer="fused")
    assert fused.lengths.tolist() == [7] and fused.features.shape[1] == 7
    with pytest.raises(ValueError, match="more than `max_stream_length_difference`"):
        model.get_encoder_features(**make_inputs("video", [20], size=24), **audio)


def test_base_model_from_auto_model_has_the_same_features(folders):
    base = AutoModel.from_pretrained(folders["video"]).eval()
    assert isinstance(base, MMAVSRModel)
    inputs = make_inputs("video", LENGTHS, size=24)
    with torch.no_grad():
        torch.testing.assert_close(
            base.get_encoder_features(**inputs, feature_layer="fused").features,
            load(folders["video"]).get_encoder_features(**inputs, feature_layer="fused").features,
        )


def test_bad_requests_are_named(folders):
    model = load(folders["video"])
    inputs = make_inputs("video", [4], size=24)
    with pytest.raises(ValueError, match="Unknown feature_layer 'decoder'; valid choices are 'video_frontend'"):
        model.get_encoder_features(**inputs, feature_layer="decoder")
    with pytest.raises(ValueError, match="this video model has no audio_encoder"):
        model.get_encoder_features(**inputs, feature_layer="audio_frontend")
    with pytest.raises(ValueError, match=r"must be \(batch, frames, channels, height, width\)"):
        model.get_encoder_features(pixel_values_videos=inputs["pixel_values_videos"][0], feature_layer="video_frontend")
    audio_model = load(folders["audio"])
    with pytest.raises(ValueError, match="takes raw 16 kHz waves"):
        audio_model.get_encoder_features(input_features=torch.zeros(1, 2, 640), feature_layer="audio_frontend")


# ------------------------------------------------------------------------------------------------ the pipeline


@pytest.mark.parametrize(
    "modality, inputs",
    [
        ("video", ("long_silent", "short_silent")),
        ("audio", ("long_wav", "short_wav")),
        ("audiovisual", ("long", "short")),
    ],
)
def test_pipeline_on_files_one_by_one_and_batched(folders, media, modality, inputs):
    extractor = pipeline("audio-visual-feature-extraction", model=folders[modality])
    assert isinstance(extractor, MMAVSRFeatureExtractionPipeline)
    paths = [media[name] for name in inputs]
    alone = [extractor(path) for path in paths]
    batched = extractor(paths, batch_size=2)
    assert [tuple(result["features"].shape) for result in alone] == [(30, 32), (18, 32)]
    for one, many in zip(alone, batched):
        assert one["frame_rate"] == many["frame_rate"] == 25.0
        torch.testing.assert_close(many["features"], one["features"], **TOLERANCE)
    # the model API on the processor's output gives the same features
    model, processor = load(folders[modality]), MMAVSRProcessor.from_pretrained(folders[modality])
    if modality == "audio":
        from mmavsr_processing import read_audio

        model_inputs = processor(audio=read_audio(paths[0]), sampling_rate=16000)
    else:
        model_inputs = dict(processor(videos=[paths[0]]))
        if modality == "audiovisual":
            model_inputs.update(processor(audio=read_audio_track_of(paths[0]), sampling_rate=16000))
    with torch.no_grad():
        expected = model.get_encoder_features(**model_inputs).features[0]
    torch.testing.assert_close(alone[0]["features"], expected, **TOLERANCE)


def read_audio_track_of(path):
    from mmavsr_processing.media_io import fit_audio_to_video, read_audio_track

    return fit_audio_to_video(read_audio_track(path), 30, 16000)


def test_pipeline_layers_and_log_mel_batches_at_50_hz(folders, media):
    extractor = pipeline("audio-visual-feature-extraction", model=folders["whisper50"])
    waves = [media["long_wav"], media["short_wav"]]
    alone = [extractor(wave, feature_layer="audio_frontend") for wave in waves]
    batched = extractor(waves, batch_size=2, feature_layer="audio_frontend")
    # 1.2 s and 0.72 s of log-mel at 100 frames/s -> Whisper's 50 Hz frames, kept at 50 Hz
    assert [tuple(r["features"].shape) for r in alone] == [(60, 32), (36, 32)]
    for one, many in zip(alone, batched):
        assert one["frame_rate"] == 50.0
        torch.testing.assert_close(many["features"], one["features"], **TOLERANCE)
    fused = extractor(waves[1], feature_layer="fused")["features"]
    conformer = extractor(waves[1])["features"]
    assert fused.shape == conformer.shape == (36, 32) and not torch.allclose(fused, conformer)


def test_pipeline_refuses_bad_arguments(folders, media):
    extractor = pipeline("audio-visual-feature-extraction", model=folders["video"])
    with pytest.raises(ValueError, match="Unknown feature_layer 'logits'"):
        extractor(media["short_silent"], feature_layer="logits")
    with pytest.raises(TypeError, match=r"unexpected arguments \['num_beams'\]"):
        extractor(media["short_silent"], num_beams=2)
    with pytest.raises(ValueError, match="reads the lips: give a video"):
        extractor(media["short_wav"])
