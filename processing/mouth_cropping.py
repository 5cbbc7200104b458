"""Mouth regions of interest from talking-face videos, as auto_avsr's preprocessing makes them (96x96 grayscale).

A [`MouthCropper`] finds the face in every frame with one of two detectors:

- `"mediapipe"` (the default when the `crop` extra is installed): auto_avsr's own preparation, step by step
  (`mediapipe_detector.py`, `mouth_alignment.py`): mediapipe face keypoints, interpolation, smoothing over 12 frames,
  a similarity transform onto auto_avsr's mean face, the 96x96 patch around the mouth. Crops look like the ones the
  released auto_avsr models were trained on.
- `"haar"` (the fallback, with a warning naming the extra, when mediapipe is not installed): OpenCV's Haar cascades
  bundled with `opencv-python-headless` (frontal face, eyes, smile) give the mouth centre and the face's width; the
  track is interpolated and smoothed and a square whose side follows the face's width is cut, without rotation. It
  is good enough for the synthetic demo corpus, not for auto_avsr's checkpoints.

Another detector plugs in as any callable that maps an RGB frame to a [`MouthLocation`] or `None` (the Haar path).
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .mediapipe_detector import CROP_EXTRA, MediapipeFaceDetector
from .mouth_alignment import MeanFaceAligner, MouthCropError, fill_missing_keypoints, import_cv2


__all__ = [
    "DETECTORS",
    "HaarCascadeMouthDetector",
    "MouthCropError",
    "MouthCropper",
    "MouthDetector",
    "MouthLocation",
    "NoFaceError",
    "default_detector",
]

DETECTORS = ("mediapipe", "haar")
_fallback_warned = False


class NoFaceError(ValueError):
    """No face (hence no mouth) was found in any frame of a video."""


@dataclass(frozen=True)
class MouthLocation:
    """Where the mouth is in one frame, in pixels: its centre `(x, y)` and the width of the face around it."""

    x: float
    y: float
    face_width: float


class MouthDetector(Protocol):
    """Finds the mouth in one uint8 RGB frame `(H, W, 3)`; returns `None` when it sees no face."""

    def __call__(self, frame: np.ndarray) -> MouthLocation | None: ...


def default_detector() -> str:
    """`"mediapipe"` when the `crop` extra is installed, else `"haar"`, warning once per process that the Haar
    fallback crops unlike auto_avsr and naming the extra."""
    global _fallback_warned
    if importlib.util.find_spec("mediapipe") is not None:
        return "mediapipe"
    missing = "mediapipe is not installed"
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"{missing}: mouths are cropped with OpenCV's Haar cascades, unlike auto_avsr's preparation (no "
            f"alignment to its mean face). For auto_avsr's crops: {CROP_EXTRA}, or choose detector='haar' to "
            "silence this.",
            stacklevel=3,
        )
    return "haar"


class HaarCascadeMouthDetector:
    """Mouth centre from OpenCV's Haar cascades: a frontal face box, refined by the eyes and the smile cascade.

    The face the cascade is most confident about is kept. Three estimates of the mouth centre are averaged: the point at
    `mouth_height` of the face box's height on its vertical midline, the point `eye_mouth_ratio` interocular
    distances below the midpoint of the eyes (when both eyes are found in the face's upper half), and the centre
    of a smile detection in the face's lower part; an eye or smile estimate further than `max_offset` face widths
    from the box estimate is dropped as a false detection.

    Args:
        mouth_height: height of the mouth centre in the face box, as a fraction of the box's height.
        eye_mouth_ratio: vertical distance from the eyes' midpoint to the mouth centre, in interocular distances.
        max_offset: largest accepted distance between the box estimate and an eye or smile estimate, in face widths.
        min_face_size: smallest face searched for, as a fraction of the frame's shorter side.
        detection_size: frames whose longer side exceeds this many pixels are shrunk to it for detection (speed).
    """

    def __init__(
        self,
        mouth_height: float = 0.8,
        eye_mouth_ratio: float = 0.95,
        max_offset: float = 0.15,
        min_face_size: float = 0.1,
        detection_size: int = 480,
    ):
        cv2 = import_cv2()
        self.mouth_height = mouth_height
        self.eye_mouth_ratio = eye_mouth_ratio
        self.max_offset = max_offset
        self.min_face_size = min_face_size
        self.detection_size = detection_size
        self._cv2 = cv2
        self._face, self._eyes, self._smile = (
            self._load_cascade(name)
            for name in ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml", "haarcascade_smile.xml")
        )

    def _load_cascade(self, name: str):
        cascade_dir = getattr(getattr(self._cv2, "data", None), "haarcascades", None)
        if cascade_dir is None:
            raise ImportError(
                f"this OpenCV ({self._cv2.__version__}) ships no Haar cascades (cv2.data.haarcascades); "
                "OpenCV 5 dropped them: install 'opencv-python-headless>=4.8,<5'."
            )
        cascade = self._cv2.CascadeClassifier(cascade_dir + name)
        if cascade.empty():
            raise ImportError(f"cannot load the Haar cascade {cascade_dir + name}")
        return cascade

    def __call__(self, frame: np.ndarray) -> MouthLocation | None:
        cv2 = self._cv2
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.detection_size / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(24, int(self.min_face_size * min(gray.shape)))
        faces, _, weights = self._face.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True
        )
        if len(faces) == 0:
            return None
        x, y, w, h = (float(value) for value in faces[int(np.argmax(weights))])
        estimates = [(x + 0.5 * w, y + self.mouth_height * h)]
        for candidate in (self._from_eyes(gray, x, y, w, h), self._from_smile(gray, x, y, w, h)):
            if candidate is not None and np.hypot(*np.subtract(candidate, estimates[0])) <= self.max_offset * w:
                estimates.append(candidate)
        centre_x, centre_y = np.mean(estimates, axis=0)
        return MouthLocation(x=centre_x / scale, y=centre_y / scale, face_width=w / scale)

    def _from_eyes(self, gray, x, y, w, h) -> tuple[float, float] | None:
        top, left = int(y), int(x)
        upper = gray[top : int(y + 0.55 * h), left : int(x + w)]
        eyes = self._eyes.detectMultiScale(upper, scaleFactor=1.05, minNeighbors=5, minSize=(int(w / 8),) * 2)
        centres = [(left + ex + ew / 2, top + ey + eh / 2) for ex, ey, ew, eh in eyes]
        left_eyes = [c for c in centres if c[0] < x + 0.5 * w]
        right_eyes = [c for c in centres if c[0] >= x + 0.5 * w]
        if len(left_eyes) != 1 or len(right_eyes) != 1:
            return None
        (lx, ly), (rx, ry) = left_eyes[0], right_eyes[0]
        interocular = np.hypot(rx - lx, ry - ly)
        return (lx + rx) / 2, (ly + ry) / 2 + self.eye_mouth_ratio * interocular

    def _from_smile(self, gray, x, y, w, h) -> tuple[float, float] | None:
        top, left = int(y + 0.5 * h), int(x)
        lower = gray[top : int(y + 1.1 * h), left : int(x + w)]
        smiles = self._smile.detectMultiScale(
            lower, scaleFactor=1.05, minNeighbors=20, minSize=(int(w / 4), int(w / 8))
        )
        if len(smiles) == 0:
            return None
        sx, sy, sw, sh = max(smiles, key=lambda box: box[2] * box[3])
        return left + sx + sw / 2, top + sy + sh / 2


def _drop_outliers(track: np.ndarray, found: np.ndarray, window: int, max_jump: float) -> np.ndarray:
    """Marks as not found the detections whose centre lies more than `max_jump` face widths from the median
    centre of the detections within `window` frames (false faces in the background, a second person)."""
    kept = found.copy()
    indices = np.flatnonzero(found)
    for index in indices:
        near = indices[np.abs(indices - index) <= window]
        median = np.median(track[near], axis=0)
        if np.hypot(*(track[index, :2] - median[:2])) > max_jump * median[2]:
            kept[index] = False
    return kept if kept.any() else found


def _fill_gaps(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over the frames where nothing was found; the first/last found value is held."""
    steps = np.arange(len(values))
    return np.stack(
        [np.interp(steps, steps[found], values[found, column]) for column in range(values.shape[1])], axis=1
    )


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over up to `window // 2` frames each side, narrowed symmetrically near the ends
    (so a track that moves at constant speed is left unchanged)."""
    half = window // 2
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    out = np.empty_like(values)
    for index in range(len(values)):
        reach = min(half, index, len(values) - 1 - index)
        out[index] = (cumulative[index + reach + 1] - cumulative[index - reach]) / (2 * reach + 1)
    return out


class MouthCropper:
    """Crops a square grayscale mouth region of interest from every frame of a video.

    Args:
        detector: `"mediapipe"` (auto_avsr's preparation), `"haar"`, a [`MediapipeFaceDetector`], or any callable
            mapping an RGB frame to a [`MouthLocation`] or `None` (cut like `"haar"`); default: [`default_detector`].
        crop_size: side of the output crops in pixels (auto_avsr: 96).
        smoothing_window: the track is averaged over this many frames around each (auto_avsr: 12).
        detection_stride: run the detector on every `detection_stride`-th frame (and the last) only; the frames
            between take interpolated positions (faster, for videos whose faces move slowly). Default 1: every frame,
            as auto_avsr.
        roi_scale: Haar path only: side of the cropped square in the frame, as a fraction of the face's width
            (default 0.65).
        max_jump: Haar path only: a detection further than this many face widths from the median of the detections
            within `smoothing_window` frames is taken for a false one and dropped (default 0.5).

    Calling it on uint8 RGB frames `(T, H, W, 3)` returns uint8 crops `(T, crop_size, crop_size)`. Frames where the
    detector fails take a position interpolated from their neighbours (held at the ends).

    Raises:
        NoFaceError: the detector found no face in any frame.
        MouthCropError: mediapipe path: a frame's aligned mouth too far off centre for the crop.
        ValueError: frames of another shape or type; an unknown detector; an option the chosen path does not use.
    """

    def __init__(
        self,
        detector: str | MouthDetector | MediapipeFaceDetector | None = None,
        crop_size: int = 96,
        smoothing_window: int = 12,
        detection_stride: int = 1,
        roi_scale: float | None = None,
        max_jump: float | None = None,
    ):
        if detection_stride < 1:
            raise ValueError(f"detection_stride must be at least 1, got {detection_stride}")
        if detector is None:
            detector = default_detector()
        if isinstance(detector, str):
            if detector not in DETECTORS:
                raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
            detector = MediapipeFaceDetector() if detector == "mediapipe" else HaarCascadeMouthDetector()
        self.detector = detector
        self.aligned = isinstance(detector, MediapipeFaceDetector)
        if self.aligned and (roi_scale is not None or max_jump is not None):
            raise ValueError(
                "roi_scale and max_jump apply to the Haar path; the mediapipe path crops as auto_avsr does "
                "(MediapipeFaceDetector(max_jump=...) sets how far the tracked face may move)"
            )
        self.aligner = MeanFaceAligner(crop_size, smoothing_window) if self.aligned else None
        self.crop_size = crop_size
        self.roi_scale = 0.65 if roi_scale is None else roi_scale
        self.smoothing_window = smoothing_window
        self.detection_stride = detection_stride
        self.max_jump = 0.5 if max_jump is None else max_jump

    @property
    def detector_name(self) -> str:
        """`"mediapipe"` (auto_avsr's alignment) or `"haar"` (a mouth centre and face width per frame)."""
        return "mediapipe" if self.aligned else "haar"

    def _searched(self, count: int) -> list[int]:
        return sorted({*range(0, count, self.detection_stride), count - 1})

    def keypoints(self, frames: np.ndarray) -> np.ndarray:
        """mediapipe path: the four keypoints per frame (right eye, left eye, nose tip, mouth centre), float
        `(T, 4, 2)` in pixels, frames without the face interpolated (before smoothing)."""
        if not self.aligned:
            raise ValueError("keypoints() needs the mediapipe detector; the Haar path gives locate()")
        frames = self._check(frames)
        searched = self._searched(len(frames))
        found = self.detector(frames, searched)
        if np.isnan(found).all():
            raise NoFaceError(f"no face found in any of the {len(searched)} frames searched (of {len(frames)})")
        return fill_missing_keypoints(found)

    def locate(self, frames: np.ndarray) -> np.ndarray:
        """Haar path: the smoothed track, float `(T, 3)`: mouth centre `x`, `y` and face width per frame, in pixels."""
        if self.aligned:
            raise ValueError("locate() belongs to the Haar path; the mediapipe path gives keypoints()")
        frames = self._check(frames)
        track = np.full((len(frames), 3), np.nan)
        searched = self._searched(len(frames))
        for index in searched:
            location = self.detector(frames[index])
            if location is not None:
                track[index] = (location.x, location.y, location.face_width)
        found = ~np.isnan(track).any(axis=1)
        if not found.any():
            raise NoFaceError(f"no face found in any of the {len(searched)} frames searched (of {len(frames)})")
        found = _drop_outliers(track, found, self.smoothing_window, self.max_jump)
        return _smooth(_fill_gaps(track, found), self.smoothing_window)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        cv2 = import_cv2()
        frames = self._check(frames)
        if self.aligned:
            return self.aligner(frames, self.keypoints(frames))
        track = self.locate(frames)
        crops = np.empty((len(frames), self.crop_size, self.crop_size), dtype=np.uint8)
        for index, (frame, (x, y, face_width)) in enumerate(zip(frames, track)):
            gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            step = self.roi_scale * face_width / self.crop_size  # frame pixels per crop pixel
            if step > 1.5:  # shrinking: low-pass first so that the bilinear sampling does not alias
                gray = cv2.GaussianBlur(gray, (0, 0), sigmaX=0.4 * step)
            # crop pixel (u, v) samples the frame at (x, y) + step * ((u, v) + 0.5 - crop_size / 2)
            offset = 0.5 * step - 0.5 * step * self.crop_size
            to_frame = np.array([[step, 0.0, x + offset - 0.5], [0.0, step, y + offset - 0.5]])
            crops[index] = cv2.warpAffine(
                gray,
                to_frame,
                (self.crop_size, self.crop_size),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return crops

    @staticmethod
    def _check(frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"expected RGB frames of shape (T, H, W, 3) with T > 0, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        return frames
