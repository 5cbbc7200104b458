"""The time base of every mmavsr model and dataset, defined once: 25 fps video and 16 kHz audio, hence 640 audio
samples per video frame (40 ms). This module imports nothing, so that the model code (and an exported
`trust_remote_code` folder) can use the numbers without the media readers' dependencies."""

VIDEO_FPS = 25
SAMPLING_RATE = 16000
SAMPLES_PER_FRAME = SAMPLING_RATE // VIDEO_FPS  # 640

__all__ = ["SAMPLES_PER_FRAME", "SAMPLING_RATE", "VIDEO_FPS"]
