"""timm backbones as vision encoders (`vision_encoder="timm"`): per-frame pooled features, padding, grayscale input,
save/reload with no network, pretrained weights from local files and folders, the video processor's timm preset.

The backbones are timm's own tiny test architectures (`test_resnet`, `test_vit`: a few hundred thousand parameters)
built without pretrained weights; "pretrained" weights are random ones written to local files here.
"""

import json
import socket

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from mmavsr_processing import MMAVSRProcessor, MMAVSRVideoProcessor
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration

from .common import make_inputs, make_labels, tiny_config


SIZE = 32
LENGTHS = [5, 3]
# the Conformer and decoder sizes of the shared tiny config
SIZES = {
    key: value
    for key, value in tiny_config().to_dict().items()
    if key in ("hidden_size", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "conv_kernel_size")
}


def build(architecture="test_resnet", audio=None, seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(
        None, vision_encoder="timm", audio_encoder=audio, vision_config={"architecture": architecture}, **overrides
    )
    return MMAVSRForConditionalGeneration(config).eval()


def rgb_inputs(lengths=LENGTHS, size=SIZE, seed=0):
    """Zero-padded 3-channel frames (B, T, 3, size, size) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(len(lengths), max(lengths), 3, size, size, generator=generator)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        video[row, length:] = 0
        mask[row, :length] = 1
    return {"pixel_values_videos": video, "video_attention_mask": mask}


def timm_weights(model):
    return model.model.encoder.vision_frontend.encoder.timm_model.state_dict()


def assert_same_weights(state_dict, reference):
    assert state_dict.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state_dict[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("architecture, size", [("test_resnet", SIZE), ("test_vit", 160)])
def test_per_frame_pooled_features_of_real_frames_only(architecture, size):
    model = build(architecture)
    inputs = rgb_inputs(size=size)
    timm_model = model.model.encoder.vision_frontend.encoder.timm_model
    with torch.no_grad():
        features = model.get_encoder_features(**inputs, feature_layer="video_frontend")
        # each real frame's vector is the backbone's pooled output (`num_classes=0`) for that frame alone
        expected = timm_model(inputs["pixel_values_videos"][0, :1])
        encoder_output = model.get_encoder()(**inputs).last_hidden_state
        alone = model.get_encoder()(
            pixel_values_videos=inputs["pixel_values_videos"][1:, : LENGTHS[1]]
        ).last_hidden_state
    assert features.features.shape == (2, max(LENGTHS), timm_model.num_features)
    assert features.lengths.tolist() == LENGTHS
    torch.testing.assert_close(features.features[0, :1], expected, rtol=1e-5, atol=1e-5)
    assert features.features[1, LENGTHS[1] :].abs().sum() == 0  # padded frames are not run
    torch.testing.assert_close(encoder_output[1, : LENGTHS[1]], alone[0], rtol=1e-5, atol=1e-5)


def test_grayscale_frames_are_repeated_to_three_channels():
    model = build()
    gray = make_inputs("video", LENGTHS, size=SIZE)  # (B, T, 1, H, W)
    rgb = dict(gray, pixel_values_videos=gray["pixel_values_videos"].expand(-1, -1, 3, -1, -1))
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_encoder()(**gray).last_hidden_state, model.get_encoder()(**rgb).last_hidden_state
        )
    with pytest.raises(ValueError, match=r"vision_encoder='timm' \(test_resnet\) takes frames of 3 channels"):
        model(pixel_values_videos=torch.zeros(1, 2, 2, SIZE, SIZE), labels=make_labels([[3]]))


def test_save_and_reload_without_network(tmp_path, no_network):
    model = build()
    inputs, labels = rgb_inputs(), make_labels([[3, 4, 5], [6]])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["vision_config"]
    assert saved["model_type"] == "timm_wrapper" and saved["architecture"] == "test_resnet"
    assert saved["pretrained_cfg"]["input_size"] == [3, 160, 160]  # timm's data configuration travels along

    reloaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_config.architecture == "test_resnet"
    with torch.no_grad():
        before, after = model(**inputs, labels=labels), reloaded(**inputs, labels=labels)
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        reloaded.generate(**inputs, num_beams=2, max_new_tokens=3, ctc_weight=0.1),
        model.generate(**inputs, num_beams=2, max_new_tokens=3, ctc_weight=0.1),
    )
    # initialised at random, so it trains (only a loaded backbone is frozen by default), and the reloaded model keeps
    # that choice
    reloaded.train()
    frontend = reloaded.model.encoder.vision_frontend
    assert reloaded.config.freeze_vision_encoder is False
    assert frontend.encoder.training and all(p.requires_grad for p in frontend.parameters())


def test_pretrained_weights_from_local_file_and_folders(tmp_path, no_network):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    timm.models.save_for_hf(source, tmp_path / "timm_folder")

    from_file = MMAVSRForConditionalGeneration.from_pretrained_components(
        vision_encoder="timm",
        vision_model_name="test_resnet",
        component_kwargs={"vision": {"pretrained_cfg_overlay": {"file": str(tmp_path / "weights.safetensors")}}},
        **SIZES,
    )
    assert_same_weights(timm_weights(from_file), source.state_dict())
    assert from_file.config.vision_config.model_args is None  # loading arguments are not architecture
    assert "file" not in from_file.config.vision_config.pretrained_cfg  # nor is this machine's weights path
    from_folder = MMAVSRForConditionalGeneration.from_pretrained_components(
        vision_encoder="timm", vision_model_name=str(tmp_path / "timm_folder"), **SIZES
    )
    assert_same_weights(timm_weights(from_folder), source.state_dict())

    # the composed model's folder holds the backbone: it loads as a pretrained part too, and as itself
    from_folder.save_pretrained(tmp_path / "mmavsr")
    reloaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "mmavsr")
    assert_same_weights(timm_weights(reloaded), source.state_dict())

    # architecture arguments are saved (`model_args`) and rebuild the same backbone
    gray = MMAVSRForConditionalGeneration.from_pretrained_components(
        vision_encoder="timm",
        vision_model_name="test_resnet",
        component_kwargs={
            "vision": {"pretrained_cfg_overlay": {"file": str(tmp_path / "weights.safetensors")}, "in_chans": 1}
        },
        **SIZES,
    )
    assert gray.config.vision_config.model_args == {"in_chans": 1}
    gray.save_pretrained(tmp_path / "gray")
    gray_reloaded = MMAVSRForConditionalGeneration.from_pretrained(tmp_path / "gray").eval()
    assert gray_reloaded.model.encoder.vision_frontend.encoder.timm_model.conv1[0].in_channels == 1
    inputs = make_inputs("video", LENGTHS, size=SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            gray_reloaded.get_encoder_features(**inputs).features, gray.eval().get_encoder_features(**inputs).features
        )


def test_bad_names_are_reported():
    with pytest.raises(ValueError, match="'no_such_net' is not a timm"):
        build("no_such_net")
    with pytest.raises(ValueError, match="'no_such_net' is neither a timm model name"):
        MMAVSRForConditionalGeneration.from_pretrained_components(
            vision_encoder="timm", vision_model_name="no_such_net", **SIZES
        )
    with pytest.raises(ValueError, match="takes a 'timm_wrapper' configuration"):
        MMAVSRConfig(vision_encoder="timm", vision_config={"model_type": "vit"})


def test_audio_visual_training_step_with_an_unfrozen_backbone():
    model = build(audio="resnet1d", fusion_type="gated", freeze_vision_encoder=False).train()
    inputs = make_inputs("audiovisual", LENGTHS, size=SIZE)
    loss = model(**inputs, labels=make_labels([[3, 4], [5]])).loss
    loss.backward()
    backbone = model.model.encoder.vision_frontend.encoder.timm_model
    assert torch.isfinite(loss) and backbone.conv1[0].weight.grad.abs().sum() > 0
    ids = model.eval().generate(**inputs, num_beams=2, max_new_tokens=3)
    assert ids.shape[0] == 2


def frames_for_processing(num_frames=3, size=96):
    """Smooth RGB mouth-sized frames (T, H, W, 3) uint8 (smooth, so that resampling methods agree closely)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack(
        [
            np.stack([(128 + 100 * np.sin(x / 9 + c + t) * np.cos(y / 13)).astype(np.uint8) for c in range(3)], -1)
            for t in range(num_frames)
        ]
    )


@pytest.mark.parametrize("architecture", ["test_vit", "resnet18"])
def test_video_processor_follows_timm_data_config(architecture, tmp_path):
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    processor = MMAVSRVideoProcessor.from_timm(pretrained_cfg)
    frames = frames_for_processing()
    pixels = processor(frames, return_tensors="pt")["pixel_values_videos"][0]
    # timm's own evaluation transform (resize to size / crop_pct, centre crop, normalise) on each frame
    transform = create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))
    expected = torch.stack([transform(Image.fromarray(frame)) for frame in frames])
    assert pixels.shape == expected.shape == (3, *pretrained_cfg["input_size"])
    assert (pixels - expected).abs().max() < 0.05  # torchvision vs PIL bicubic resampling

    processor.save_pretrained(tmp_path)
    reloaded = MMAVSRVideoProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded(frames, return_tensors="pt")["pixel_values_videos"][0], pixels)


def test_processor_of_a_model_config_and_grayscale_backbones():
    model = build("test_vit")
    processor = MMAVSRVideoProcessor.from_timm(model.config)
    assert (processor.crop_size.height, processor.crop_size.width) == (160, 160)
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]
    inputs = processor([frames_for_processing(4), frames_for_processing(2)], return_tensors="pt")
    with torch.no_grad():
        features = model.get_encoder_features(**inputs, feature_layer="video_frontend")
    assert features.lengths.tolist() == [4, 2]

    gray_config = tiny_config(
        None, vision_encoder="timm", vision_config={"architecture": "test_resnet", "model_args": {"in_chans": 1}}
    )
    gray = MMAVSRVideoProcessor.from_timm(gray_config)
    pixels = gray(frames_for_processing(2), return_tensors="pt")["pixel_values_videos"]
    assert pixels.shape == (1, 2, 1, 160, 160) and list(gray.image_mean) == [pytest.approx(0.5)]
    # the default "timm" preset is timm's default data configuration, no timm needed
    preset = MMAVSRProcessor.from_auto_avsr(vision_encoder="timm").video_processor
    assert (preset.size.height, preset.crop_size.height) == (256, 224)
    with pytest.raises(ValueError, match="from_timm takes the config of a vision_encoder='timm' model"):
        MMAVSRVideoProcessor.from_timm(tiny_config("video"))
