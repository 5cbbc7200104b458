"""A real face video for the mouth-cropping tests: scikit-image's `astronaut()` photograph (a real portrait, public
domain, in the `scikit-image` wheel), moved, rotated and scaled a little from frame to frame.

`moving_face_clip()` is also what `tests/fixtures/auto_avsr/mouth_crops_reference.safetensors` was made from (see
that folder's README): the same arguments give the same frames.
"""

import cv2
import numpy as np
from skimage import data


# the point between the astronaut's eyes and mouth in the 512x512 photograph, which each frame rotates and scales about
FACE_CENTRE = (224.0, 128.0)


def moving_face_clip(
    num_frames: int = 60,
    size: tuple[int, int] = (256, 256),
    max_angle: float = 8.0,
    max_zoom: float = 0.1,
    max_shift: float = 12.0,
    zoom: float = 1.0,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB frames `(T, height, width, 3)` at 25 fps in which the face sways by up to `max_angle` degrees, zooms
    by up to `max_zoom` about `zoom` and drifts by up to `max_shift` pixels, and the 2x3 matrices `(T, 2, 3)` mapping
    the photograph's pixels to each frame's."""
    image = data.astronaut() if image is None else image
    height, width = size
    seconds = np.arange(num_frames) / 25.0
    angles = max_angle * np.sin(2 * np.pi * seconds / 2.4)
    zooms = zoom * (1 + max_zoom * np.sin(2 * np.pi * seconds / 1.7))
    shifts = max_shift * np.stack([np.sin(2 * np.pi * seconds / 2.0), 0.6 * np.cos(2 * np.pi * seconds / 3.0)], 1)
    frames, matrices = [], []
    for angle, scale, (dx, dy) in zip(angles, zooms, shifts):
        matrix = cv2.getRotationMatrix2D(FACE_CENTRE, float(angle), float(scale))
        matrix[:, 2] += (width / 2 + dx - FACE_CENTRE[0], height / 2 + dy - FACE_CENTRE[1])
        frames.append(
            cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        )
        matrices.append(matrix)
    return np.stack(frames), np.stack(matrices)
