"""auto_avsr's mouth crop from four face keypoints per frame: the steps of its `preparation/detectors/mediapipe/
video_process.py` (mpc001/auto_avsr), in the same order and with the same numbers.

1. Frames without keypoints take positions interpolated linearly between the frames around them; frames before the
   first detection take the first one, frames after the last detection the last one ([`fill_missing_keypoints`]).
2. Each frame's keypoints are averaged over a window of up to 12 frames centred on it (narrowed near the ends), then
   moved so that their mean is the frame's own: the shape is smoothed, not the position ([`smooth_keypoints`]).
3. The similarity transform (rotation, uniform scale, translation) that best maps the keypoints onto the mean face's
   right eye, left eye, nose tip and mouth centre is estimated (OpenCV's `estimateAffinePartial2D`, least median of
   squares); the grayscale frame is warped with it into a 256x256 image (bilinear, black outside the frame).
4. The 96x96 patch centred on the aligned mouth keypoint is cut out. A mouth more than 48 + 5 pixels from the aligned
   image's centre (auto_avsr's "too much bias") is refused with [`MouthCropError`].

The mean face is auto_avsr's `20words_mean_face.npy` (68 landmarks in a 256x256 frame, Apache-2.0), written out as
data in `mean_face_20words.py` (a Python module, so that exported model folders carry it).
"""

from __future__ import annotations

import numpy as np


__all__ = [
    "KEYPOINT_NAMES",
    "MeanFaceAligner",
    "MouthCropError",
    "fill_missing_keypoints",
    "import_cv2",
    "mean_face_keypoints",
    "smooth_keypoints",
]

# the four points per frame, in auto_avsr's order, and the mean-face landmarks (of 68) each one is the mean of
KEYPOINT_NAMES = ("right eye", "left eye", "nose tip", "mouth centre")
_MEAN_FACE_GROUPS = (slice(36, 42), slice(42, 48), slice(31, 36), slice(48, 68))
MOUTH = 3  # index of the mouth centre in KEYPOINT_NAMES


class MouthCropError(ValueError):
    """The aligned mouth lies too far from the aligned face's centre for the crop (auto_avsr's "too much bias")."""


def import_cv2():
    """`cv2`, or an ImportError that names what to install (inside `try`: an exported model folder does not require
    OpenCV to load)."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "Mouth cropping needs OpenCV: pip install 'opencv-python-headless>=4.8,<5' (or mmavsr[prepare])."
        ) from error
    return cv2


def mean_face_keypoints(landmarks=None) -> np.ndarray:
    """The mean face's four keypoints, float64 `(4, 2)` (x, y in a 256x256 frame), in `KEYPOINT_NAMES` order: the
    means of the landmark groups of `landmarks` (68 (x, y) pairs; default auto_avsr's, `mean_face_20words`)."""
    if landmarks is None:
        from .mean_face_20words import LANDMARKS as landmarks
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"a mean face has 68 landmarks (68, 2), got shape {landmarks.shape}")
    return np.stack([landmarks[group].mean(axis=0) for group in _MEAN_FACE_GROUPS])


def fill_missing_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints `(T, 4, 2)` with NaN rows for frames without a face -> every frame filled: linear interpolation
    between detections, the first/last detection held before/after them. At least one frame must have keypoints."""
    keypoints = np.array(keypoints, dtype=np.float64)
    found = ~np.isnan(keypoints).any(axis=(1, 2))
    if not found.any():
        raise ValueError("no frame has keypoints")
    steps = np.arange(len(keypoints))
    flat = keypoints.reshape(len(keypoints), -1)
    filled = np.stack([np.interp(steps, steps[found], flat[found, column]) for column in range(flat.shape[1])], 1)
    return filled.reshape(keypoints.shape)


def smooth_keypoints(keypoints: np.ndarray, window: int = 12) -> np.ndarray:
    """auto_avsr's smoothing of filled keypoints `(T, 4, 2)`: frame t takes the mean over frames
    `t - m .. t + m`, `m = min(window // 2, t, T - 1 - t)`, shifted so that its centroid is frame t's own."""
    smoothed = np.empty_like(keypoints, dtype=np.float64)
    for index in range(len(keypoints)):
        margin = min(window // 2, index, len(keypoints) - 1 - index)
        mean = keypoints[index - margin : index + margin + 1].mean(axis=0)
        smoothed[index] = mean + (keypoints[index].mean(axis=0) - mean.mean(axis=0))
    return smoothed


class MeanFaceAligner:
    """Aligns frames to auto_avsr's mean face and cuts the mouth: RGB frames `(T, H, W, 3)` and filled keypoints
    `(T, 4, 2)` -> uint8 grayscale crops `(T, crop_size, crop_size)` (steps 2-4 of the module's docstring).

    Args:
        crop_size: side of the crops (auto_avsr: 96).
        smoothing_window: frames averaged around each frame's keypoints (auto_avsr: 12).
        aligned_size: side of the aligned image the crop is cut from (auto_avsr: 256, the mean face's frame).
        bias_threshold: pixels beyond half the crop that the mouth may lie from the aligned image's centre (5).
    """

    def __init__(self, crop_size: int = 96, smoothing_window: int = 12, aligned_size: int = 256, bias_threshold=5):
        self._cv2 = import_cv2()
        self.crop_size = crop_size
        self.smoothing_window = smoothing_window
        self.aligned_size = aligned_size
        self.bias_threshold = bias_threshold
        self.reference = mean_face_keypoints()
        self.reference -= (256 - aligned_size) / 2.0  # the mean face is drawn in a 256x256 frame

    def transforms(self, keypoints: np.ndarray) -> np.ndarray:
        """The 2x3 similarity transforms, float64 `(T, 2, 3)`, from each frame to the aligned image."""
        return self._fit(smooth_keypoints(keypoints, self.smoothing_window))

    def _fit(self, smoothed: np.ndarray) -> np.ndarray:
        transforms = []
        for index, points in enumerate(smoothed):
            transform, _ = self._cv2.estimateAffinePartial2D(points, self.reference, method=self._cv2.LMEDS)
            if transform is None:
                raise MouthCropError(f"frame {index}: no similarity transform maps its keypoints onto the mean face")
            transforms.append(transform)
        return np.stack(transforms)

    def __call__(self, frames: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        size, half = self.aligned_size, self.crop_size // 2
        crops = np.empty((len(frames), 2 * half, 2 * half), dtype=np.uint8)
        smoothed = smooth_keypoints(keypoints, self.smoothing_window)
        for index, (frame, transform) in enumerate(zip(frames, self._fit(smoothed))):
            gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            aligned = cv2.warpAffine(
                gray, transform, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            )
            mouth_x, mouth_y = smoothed[index, MOUTH] @ transform[:, :2].T + transform[:, 2]
            for axis, centre in (("height", mouth_y), ("width", mouth_x)):
                if abs(centre - size / 2) > half + self.bias_threshold:
                    raise MouthCropError(
                        f"frame {index}: the aligned mouth lies {abs(centre - size / 2):.0f} pixels from the centre "
                        f"in {axis} (at most {half + self.bias_threshold}): too close to the edge for a "
                        f"{2 * half}x{2 * half} crop"
                    )
            top, left = (int(round(float(np.clip(centre - half, 0, size)))) for centre in (mouth_y, mouth_x))
            patch = aligned[top : top + 2 * half, left : left + 2 * half]
            if patch.shape != crops.shape[1:]:
                raise MouthCropError(f"frame {index}: the {2 * half}x{2 * half} crop leaves the aligned image")
            crops[index] = patch
        return crops
