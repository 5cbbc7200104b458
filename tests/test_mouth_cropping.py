"""The Haar path of mouth cropping on a real face: skimage's astronaut photograph, panned and zoomed per frame into a
short clip. The mediapipe path (auto_avsr's preparation) is tested in `test_mouth_alignment.py`."""

import cv2
import numpy as np
import pytest
from skimage import data

from mmavsr_processing import HaarCascadeMouthDetector, MouthCropper, MouthLocation, NoFaceError


# The mouth centre in `skimage.data.astronaut()` (512x512), read off the photograph by eye: lips span x 203..246,
# y 139..150.
ASTRONAUT_MOUTH = np.array([224.0, 144.0])
ASTRONAUT_FACE_WIDTH = 95.0  # the frontal-face cascade's box on the full photograph


def astronaut_clip(num_frames: int = 24, size: int = 224) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clip of the astronaut whose head drifts and zooms: frame t shows the photograph scaled by s_t and shifted
    by (tx_t, ty_t). Returns uint8 RGB frames `(T, size, size, 3)`, the true mouth centre per frame `(T, 2)` and
    the scale per frame `(T,)`."""
    image = data.astronaut()
    progress = np.linspace(0.0, 1.0, num_frames)
    scale = 0.6 + 0.15 * progress  # zoom in: the face grows by a quarter
    shift = np.stack([-30 - 40 * progress, -20 + 10 * np.sin(np.pi * progress)], axis=1)  # pan left, bob
    frames = np.stack(
        [
            cv2.warpAffine(image, np.array([[s, 0, tx], [0, s, ty]]), (size, size), borderMode=cv2.BORDER_REPLICATE)
            for s, (tx, ty) in zip(scale, shift)
        ]
    )
    return frames, scale[:, None] * ASTRONAUT_MOUTH + shift, scale


@pytest.fixture(scope="module")
def clip():
    return astronaut_clip()


@pytest.fixture(scope="module")
def cropper():
    return MouthCropper(detector="haar")


def test_detector_finds_the_mouth_of_the_photograph():
    location = HaarCascadeMouthDetector()(data.astronaut())
    assert np.hypot(location.x - ASTRONAUT_MOUTH[0], location.y - ASTRONAUT_MOUTH[1]) < 3
    assert location.face_width == pytest.approx(ASTRONAUT_FACE_WIDTH, rel=0.1)


def test_track_follows_the_moving_mouth(clip, cropper):
    frames, mouth, scale = clip
    track = cropper.locate(frames)
    error = np.hypot(*(track[:, :2] - mouth).T)
    assert error.max() < 4, error  # pixels; the mouth moves 40 px across the clip
    # the face width follows the zoom
    assert np.corrcoef(track[:, 2], scale)[0, 1] > 0.95


def test_crops_show_the_same_mouth_in_every_frame(clip, cropper):
    frames, mouth, scale = clip
    crops = cropper(frames)
    assert crops.shape == (len(frames), 96, 96) and crops.dtype == np.uint8
    # the reference: the same region cut from the still photograph, grayscale
    reference = MouthCropper(detector="haar", smoothing_window=1)(data.astronaut()[None])[0].astype(float)

    def similarity(crop):
        return np.corrcoef(crop.astype(float).ravel(), reference.ravel())[0, 1]

    tracked = [similarity(crop) for crop in crops]
    # a crop that stays where the mouth was in the first frame loses it
    first = MouthCropper(detector=lambda frame: MouthLocation(*mouth[0], 95.0 * scale[0]), smoothing_window=1)
    fixed = [similarity(crop) for crop in first(frames)]
    assert min(tracked) > 0.8, tracked
    assert max(fixed[len(fixed) // 2 :]) < 0.3, fixed


def test_frames_without_a_face_take_interpolated_positions(clip, cropper):
    frames, mouth, _ = clip
    broken = frames.copy()
    broken[8:12] = 128  # four blank frames: nothing to detect
    track = cropper.locate(broken)
    assert np.hypot(*(track[:, :2] - mouth).T).max() < 4
    assert cropper(broken).shape == (len(frames), 96, 96)


def test_a_false_detection_far_from_the_track_is_dropped(clip):
    frames, mouth, scale = clip
    truth = [MouthLocation(x, y, 95.0 * s) for (x, y), s in zip(mouth, scale)]

    def scripted(false_face_at=None):
        """Returns the true location frame after frame, except a face in a corner at frame `false_face_at`."""
        calls = iter(range(len(frames)))

        def detector(frame):
            index = next(calls)
            return MouthLocation(10.0, 10.0, 40.0) if index == false_face_at else truth[index]

        return detector

    clean = MouthCropper(detector=scripted()).locate(frames)
    track = MouthCropper(detector=scripted(false_face_at=5)).locate(frames)
    assert np.abs(track - clean).max() < 0.5
    trusting = MouthCropper(detector=scripted(false_face_at=5), max_jump=np.inf).locate(frames)
    assert np.abs(trusting - clean).max() > 5


def test_detection_stride_interpolates_between_searched_frames(clip):
    frames, mouth, _ = clip
    searched = []

    class CountingDetector(HaarCascadeMouthDetector):
        def __call__(self, frame):
            searched.append(frame)
            return super().__call__(frame)

    track = MouthCropper(detector=CountingDetector(), detection_stride=4).locate(frames)
    assert len(searched) == len(range(0, len(frames), 4)) + 1  # every 4th frame and the last
    assert np.hypot(*(track[:, :2] - mouth).T).max() < 4


def test_no_face_anywhere_raises(cropper):
    noise = np.random.default_rng(0).integers(0, 255, (5, 120, 160, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face found in any of the 5 frames"):
        cropper(noise)
    assert issubclass(NoFaceError, ValueError)


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((4, 64, 64), dtype=np.uint8), r"shape \(T, H, W, 3\).*\(4, 64, 64\)"),
        (np.zeros((0, 64, 64, 3), dtype=np.uint8), "T > 0"),
        (np.zeros((4, 64, 64, 3), dtype=np.float32), "expected uint8 frames, got float32"),
    ],
)
def test_bad_input_is_named(cropper, frames, message):
    with pytest.raises(ValueError, match=message):
        cropper(frames)
