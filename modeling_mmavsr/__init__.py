"""mmavsr: modular audio-visual speech recognition, native to Hugging Face Transformers.

Importing this package registers everything a saved model folder needs ([`register_auto_classes`]): the config and
models with `AutoConfig`, `AutoModel` and `AutoModelForSpeechSeq2Seq`; the tokenizer, feature extractor, video
processor and processor of `mmavsr_processing` with `AutoTokenizer`, `AutoFeatureExtractor`, `AutoVideoProcessor` and
`AutoProcessor`; and the pipelines: `automatic-speech-recognition` runs MMAVSR models as sequence-to-sequence models,
`audio-visual-speech-recognition` and `audio-visual-feature-extraction` take videos too. The dependency goes one way:
this package imports `mmavsr_processing`, which never imports this one.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
)

import mmavsr_processing
from mmavsr_processing.feature_extraction_mmavsr import MMAVSRFeatureExtractor
from mmavsr_processing.processing_mmavsr import MMAVSRProcessor
from mmavsr_processing.tokenization_mmavsr import MMAVSRTokenizer
from mmavsr_processing.video_processing_mmavsr import MMAVSRVideoProcessor

from . import modeling_mmavsr
from .configuration_mmavsr import MMAVSRConfig, MMAVSRTextConfig
from .modeling_mmavsr import (
    MMAVSREncoder,
    MMAVSREncoderOutput,
    MMAVSRForConditionalGeneration,
    MMAVSRModel,
    MMAVSRPreTrainedModel,
    MMAVSRSeq2SeqLMOutput,
    MMAVSRSeq2SeqModelOutput,
)
from .pipeline_feature_extraction_mmavsr import MMAVSRFeatureExtractionPipeline, register_feature_extraction_pipeline
from .pipeline_mmavsr import MMAVSRSpeechRecognitionPipeline, register_pipelines


def register_auto_classes() -> None:
    """Register the config, models, processing classes and pipelines with Transformers (done on import; running it
    again changes nothing)."""
    AutoConfig.register(MMAVSRConfig.model_type, MMAVSRConfig, exist_ok=True)
    AutoConfig.register(MMAVSRTextConfig.model_type, MMAVSRTextConfig, exist_ok=True)
    AutoModel.register(MMAVSRConfig, MMAVSRModel, exist_ok=True)
    AutoModelForSpeechSeq2Seq.register(MMAVSRConfig, MMAVSRForConditionalGeneration, exist_ok=True)
    AutoFeatureExtractor.register(MMAVSRConfig, MMAVSRFeatureExtractor, exist_ok=True)
    AutoVideoProcessor.register(MMAVSRConfig, MMAVSRVideoProcessor, exist_ok=True)
    AutoTokenizer.register(MMAVSRConfig, tokenizer_class=MMAVSRTokenizer, exist_ok=True)
    AutoProcessor.register(MMAVSRConfig, MMAVSRProcessor, exist_ok=True)
    # the ASR pipeline runs MMAVSR models as seq2seq models; `audio-visual-speech-recognition` takes videos too
    register_pipelines()
    register_feature_extraction_pipeline()


register_auto_classes()

__all__ = [
    "MMAVSRConfig",
    "MMAVSRTextConfig",
    *modeling_mmavsr.__all__,  # the model classes and their outputs
    "MMAVSRSpeechRecognitionPipeline",
    "MMAVSRFeatureExtractionPipeline",
    "register_auto_classes",
]


def __getattr__(name):
    # the data side's names (`mmavsr_processing`: processor, tokenizer, feature extractor, datasets, ...) are
    # re-exported on access, so `__all__` and `dir()` list this package's own names
    if name in mmavsr_processing.__all__:
        return getattr(mmavsr_processing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
