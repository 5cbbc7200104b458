"""MMAVSRVideoProcessor: encoder presets, crops, padding, input types, bad inputs, save/load."""

import numpy as np
import pytest
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mmavsr_processing.media_io import MediaError, write_video
from mmavsr_processing.video_processing_mmavsr import MMAVSRVideoProcessor


def _clip(num_frames=6, size=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


def _auto_avsr_eval(frames):
    """The reference pipeline written out: /255, centre crop 88, grayscale, normalise 0.421 / 0.165."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = x[..., 4:92, 4:92]
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return ((gray - 0.421) / 0.165)[:, None]


def test_resnet_preset_matches_the_reference_pipeline():
    processor = MMAVSRVideoProcessor()
    frames = _clip()
    batch = processor(frames, return_tensors="pt")
    pixels = batch["pixel_values_videos"]
    assert pixels.shape == (1, 6, 1, 88, 88) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], _auto_avsr_eval(frames), atol=2e-3, rtol=0)
    assert batch["video_attention_mask"].tolist() == [[1] * 6]


def test_batch_is_zero_padded_in_time_with_a_mask():
    processor = MMAVSRVideoProcessor()
    batch = processor([_clip(4), _clip(7, seed=1), _clip(2, seed=2)], return_tensors="pt")
    assert batch["pixel_values_videos"].shape == (3, 7, 1, 88, 88)
    assert batch["video_attention_mask"].sum(-1).tolist() == [4, 7, 2]
    assert torch.all(batch["pixel_values_videos"][0, 4:] == 0)
    assert torch.all(batch["pixel_values_videos"][2, 2:] == 0)


def test_training_uses_random_crops_inside_the_roi():
    processor = MMAVSRVideoProcessor()
    frames = _clip(1)
    reference = _auto_avsr_eval(frames)[0, 0]
    full = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    gray = ((0.2989 * full[0, 0] + 0.587 * full[0, 1] + 0.114 * full[0, 2]) - 0.421) / 0.165  # (96, 96)
    torch.manual_seed(0)
    crops = [processor(frames, training=True, return_tensors="pt")["pixel_values_videos"][0, 0, 0] for _ in range(8)]
    offsets = set()
    for crop in crops:
        matches = [
            (top, left)
            for top in range(9)
            for left in range(9)
            if torch.allclose(gray[top : top + 88, left : left + 88], crop, atol=2e-3)
        ]
        assert matches, "a training crop must be an 88x88 window of the ROI"
        offsets.add(matches[0])
    assert len(offsets) > 1
    eval_crop = processor(frames, return_tensors="pt")["pixel_values_videos"][0, 0, 0]
    torch.testing.assert_close(eval_crop, reference, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "encoder, mean, std", [("vit", (0.5,) * 3, (0.5,) * 3), ("clip-vit", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)]
)
def test_vit_presets_give_rgb_224(encoder, mean, std):
    processor = MMAVSRVideoProcessor(vision_encoder=encoder)
    flat = np.full((3, 96, 96, 3), 128, dtype=np.uint8)
    pixels = processor(flat, return_tensors="pt")["pixel_values_videos"]
    assert pixels.shape == (1, 3, 3, 224, 224)
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(pixels[0, 0, :, 100, 100], expected.float(), atol=1e-4, rtol=0)
    gray = processor(np.full((2, 96, 96), 128, dtype=np.uint8), return_tensors="pt")["pixel_values_videos"]
    assert gray.shape == (1, 2, 3, 224, 224)


def test_custom_mean_std_override_the_preset():
    processor = MMAVSRVideoProcessor(vision_encoder="vit", image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    pixels = processor(np.full((1, 32, 32, 3), 255, dtype=np.uint8), return_tensors="pt")["pixel_values_videos"]
    torch.testing.assert_close(pixels, torch.ones_like(pixels))


def test_accepts_tensors_channels_first_grayscale_and_5d_batches():
    processor = MMAVSRVideoProcessor()
    frames = _clip(3)
    expected = processor(frames, return_tensors="pt")["pixel_values_videos"]
    channels_first = torch.from_numpy(frames).permute(0, 3, 1, 2)
    torch.testing.assert_close(processor(channels_first, return_tensors="pt")["pixel_values_videos"], expected)
    batch = processor(np.stack([frames, frames]), return_tensors="pt")["pixel_values_videos"]
    assert batch.shape == (2, 3, 1, 88, 88)
    gray = processor(frames[..., 0], return_tensors="pt")["pixel_values_videos"]
    assert gray.shape == (1, 3, 1, 88, 88)


def test_accepts_paths_and_torchcodec_decoders(tmp_path):
    from torchcodec.decoders import VideoDecoder

    processor = MMAVSRVideoProcessor()
    frames = np.repeat(np.linspace(30, 220, 96, dtype=np.uint8)[None, None, :, None], 96, axis=1)  # smooth ramp
    frames = np.repeat(np.repeat(frames, 5, axis=0), 3, axis=-1)
    path = tmp_path / "mouth.mp4"
    write_video(path, frames, fps=25)
    from_array = processor(frames, return_tensors="pt")["pixel_values_videos"]
    from_path = processor(str(path), return_tensors="pt")["pixel_values_videos"]
    from_decoder = processor([VideoDecoder(str(path))], return_tensors="pt")["pixel_values_videos"]
    assert from_path.shape == from_decoder.shape == from_array.shape == (1, 5, 1, 88, 88)
    assert (from_path - from_array).abs().mean() < 0.1  # lossy H.264
    assert (from_decoder - from_path).abs().mean() < 0.1


def test_bad_inputs_give_clear_errors(tmp_path):
    processor = MMAVSRVideoProcessor()
    path = tmp_path / "fast.mp4"
    write_video(path, _clip(3), fps=30)
    with pytest.raises(ValueError, match=r"fast.mp4: video is 30 fps, expected 25 fps"):
        processor(str(path))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 200)
    with pytest.raises(MediaError, match="corrupt.mp4"):
        processor([str(corrupt)])
    with pytest.raises(MediaError, match="absent.mp4: file not found"):
        processor(str(tmp_path / "absent.mp4"))
    with pytest.raises(ValueError, match=r"video 1: video of shape \(3, 96, 96, 5\)"):
        processor([_clip(3), np.zeros((3, 96, 96, 5), np.uint8)])
    with pytest.raises(ValueError, match="crop 88x88 is larger than the frames"):
        processor(_clip(2, size=64), do_resize=False)
    with pytest.raises(ValueError, match="vision_encoder must be one of"):
        MMAVSRVideoProcessor(vision_encoder="swin")


@pytest.mark.parametrize("encoder", ["resnet", "clip-vit"])
def test_save_and_load_round_trip(tmp_path, encoder):
    processor = MMAVSRVideoProcessor(vision_encoder=encoder)
    processor.save_pretrained(tmp_path)
    loaded = MMAVSRVideoProcessor.from_pretrained(tmp_path)
    assert loaded.vision_encoder == encoder
    assert loaded.to_dict() == processor.to_dict()
    frames = _clip(2)
    torch.testing.assert_close(
        loaded(frames, return_tensors="pt")["pixel_values_videos"],
        processor(frames, return_tensors="pt")["pixel_values_videos"],
    )
