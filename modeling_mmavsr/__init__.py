"""mmavsr: modular audio-visual speech recognition, native to Hugging Face Transformers.

Importing this package registers the classes with `AutoConfig`, `AutoModel` and `AutoModelForSpeechSeq2Seq`, and the
speech recognition pipelines (`pipeline_mmavsr`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

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
from .pipeline_feature_extraction_mmavsr import MMAVSRFeatureExtractionPipeline  # registers its task on import
from .pipeline_mmavsr import MMAVSRSpeechRecognitionPipeline, register_pipelines


AutoConfig.register(MMAVSRConfig.model_type, MMAVSRConfig, exist_ok=True)
AutoConfig.register(MMAVSRTextConfig.model_type, MMAVSRTextConfig, exist_ok=True)
AutoModel.register(MMAVSRConfig, MMAVSRModel, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(MMAVSRConfig, MMAVSRForConditionalGeneration, exist_ok=True)
# the ASR pipeline runs MMAVSR models as seq2seq models; `audio-visual-speech-recognition` takes videos too
register_pipelines()

__all__ = [
    "MMAVSRConfig",
    "MMAVSRTextConfig",
    "MMAVSRPreTrainedModel",
    "MMAVSREncoder",
    "MMAVSRModel",
    "MMAVSRForConditionalGeneration",
    "MMAVSREncoderOutput",
    "MMAVSRSeq2SeqModelOutput",
    "MMAVSRSeq2SeqLMOutput",
    "MMAVSRSpeechRecognitionPipeline",
    "MMAVSRFeatureExtractionPipeline",
]


def __getattr__(name):
    # The data side (`mmavsr_processing`: processor, tokenizer, feature extractor, datasets, ...) is re-exported
    # lazily: it imports this package's config itself, so an eager import here would be circular.
    import mmavsr_processing

    if name in mmavsr_processing.__all__:
        return getattr(mmavsr_processing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
