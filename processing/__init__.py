"""Data side of mmavsr: audio/video/text processing, datasets, augmentation and the demo corpus.

Installed under the import name ``mmavsr_processing`` (the source folder is ``processing/``). It does not import
``modeling_mmavsr``: importing ``modeling_mmavsr`` registers these classes with the Auto classes under its config.
"""

from .augmentation import CLEAN_SNR, AddNoise, TimeMask, make_babble, snr_db
from .collation import MaxFramesBatchSampler, MMAVSRDataCollator
from .feature_extraction_mmavsr import MMAVSRFeatureExtractor
from .hf_datasets import (
    MaxFramesStreamBatcher,
    add_num_frames,
    auto_avsr_to_dataset,
    check_columns,
    clip_frames,
    export_auto_avsr_dataset,
    load_avsr_dataset,
    load_avsr_splits,
    shard_stream,
    streaming_dataloader,
)
from .lrs3 import DatasetError, load_auto_avsr_dataset, load_lrs3_dataset
from .media_check import check_dataset_media, find_bad_media
from .media_io import MediaError, read_audio, read_video, resample_audio, write_audio, write_video
from .mediapipe_detector import MediapipeFaceDetector
from .mouth_cropping import (
    HaarCascadeMouthDetector,
    MouthCropError,
    MouthCropper,
    MouthDetector,
    MouthLocation,
    NoFaceError,
)
from .processing_mmavsr import MMAVSRProcessor, pad_labels
from .tokenization_mmavsr import MMAVSRTokenizer
from .video_processing_mmavsr import MMAVSRVideoProcessor


def __getattr__(name):
    # stream_resume is imported on first use: it needs transformers' Trainer callbacks, whose import pulls in peft and
    # bitsandbytes
    if name in ("StreamingStateCallback", "restore_streaming_state"):
        from . import stream_resume

        return getattr(stream_resume, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DatasetError",
    "load_auto_avsr_dataset",
    "load_lrs3_dataset",
    "MaxFramesStreamBatcher",
    "StreamingStateCallback",
    "add_num_frames",
    "auto_avsr_to_dataset",
    "check_columns",
    "clip_frames",
    "export_auto_avsr_dataset",
    "load_avsr_dataset",
    "load_avsr_splits",
    "restore_streaming_state",
    "shard_stream",
    "streaming_dataloader",
    "check_dataset_media",
    "find_bad_media",
    "MediaError",
    "read_audio",
    "read_video",
    "resample_audio",
    "write_audio",
    "write_video",
    "HaarCascadeMouthDetector",
    "MediapipeFaceDetector",
    "MouthCropError",
    "MouthCropper",
    "MouthDetector",
    "MouthLocation",
    "NoFaceError",
    "MMAVSRFeatureExtractor",
    "MMAVSRVideoProcessor",
    "MMAVSRTokenizer",
    "MMAVSRProcessor",
    "pad_labels",
    "MMAVSRDataCollator",
    "MaxFramesBatchSampler",
    "CLEAN_SNR",
    "AddNoise",
    "TimeMask",
    "make_babble",
    "snr_db",
]
