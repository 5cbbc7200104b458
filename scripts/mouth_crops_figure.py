"""Draws docs/images/mouth_crops.png: mouth crops of the real face video of the tests, as auto_avsr prepares them and
as mmavsr does, side by side.

Rows: the frames (the astronaut photograph moved, turned and zoomed: `tests/face_video.moving_face_clip`); auto_avsr's
crops (`tests/fixtures/auto_avsr/mouth_crops_reference.safetensors`, made by auto_avsr's own code); mmavsr's with the
mediapipe detector; their absolute difference (x10); mmavsr's with the Haar fallback.

    python scripts/mouth_crops_figure.py [--output docs/images/mouth_crops.png]

Needs the `crop` extra (mediapipe) and scikit-image.
"""

import argparse
import sys
from pathlib import Path

import cv2
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from mmavsr_processing import MouthCropper  # noqa: E402


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from face_video import moving_face_clip  # noqa: E402


REFERENCE = REPO / "tests" / "fixtures" / "auto_avsr" / "mouth_crops_reference.safetensors"
COLUMNS = 7


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "docs" / "images" / "mouth_crops.png"))
    args = parser.parse_args(argv)

    reference = load_file(REFERENCE)
    frames, _ = moving_face_clip()
    indices = reference["frame_indices"]
    chosen = np.linspace(0, len(indices) - 1, COLUMNS).round().astype(int)
    auto_avsr = reference["crops"][chosen]
    mediapipe = MouthCropper(detector="mediapipe")(frames)[indices[chosen]]
    haar = MouthCropper(detector="haar")(frames)[indices[chosen]]
    difference = np.clip(10 * np.abs(mediapipe.astype(int) - auto_avsr), 0, 255).astype(np.uint8)
    rows = [
        ("frame\n(256x256)", [cv2.resize(frames[i], (96, 96), interpolation=cv2.INTER_AREA) for i in indices[chosen]]),
        ("auto_avsr", auto_avsr),
        ("mmavsr\nmediapipe", mediapipe),
        ("|difference|\nx10", difference),
        ("mmavsr\nHaar", haar),
    ]
    figure, axes = plt.subplots(len(rows), COLUMNS, figsize=(COLUMNS * 1.1, len(rows) * 1.15), dpi=90)
    for row, (label, images) in enumerate(rows):
        for column, image in enumerate(images):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frame {indices[chosen][column]}", fontsize=8)
            if column == 0:
                axis.set_ylabel(label, fontsize=8)
    mean = np.abs(MouthCropper(detector="mediapipe")(frames)[indices].astype(int) - reference["crops"]).mean()
    figure.suptitle(f"mouth crops, 96x96: mmavsr vs auto_avsr, mean |difference| {mean:.2f} gray levels", fontsize=9)
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    print(f"{output}: {output.stat().st_size / 1024:.0f} KB, mean |difference| {mean:.2f}")
    return output


if __name__ == "__main__":
    main()
