"""generate() for MMAVSR: the encoder runs first (video-only input has no `input_features`), and each hypothesis
is at most as long as its utterance has encoder frames (auto_avsr's `maxlen`)."""

import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList


class EncoderLengthLogitsProcessor(LogitsProcessor):
    """Forces eos as the `frame_length`-th token of a hypothesis (auto_avsr's `maxlen` = encoder frames)."""

    def __init__(self, frame_lengths: torch.Tensor, eos_token_id: int, prompt_length: int = 1):
        self.frame_lengths = frame_lengths
        self.eos_token_id = eos_token_id
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        num_beams = input_ids.shape[0] // self.frame_lengths.shape[0]
        limits = self.frame_lengths.to(input_ids.device).repeat_interleave(num_beams)
        done = (input_ids.shape[1] - self.prompt_length) >= limits - 1
        if done.any():
            forced = torch.full_like(scores[done], torch.finfo(scores.dtype).min)
            forced[:, self.eos_token_id] = 0.0
            scores = scores.clone()
            scores[done] = forced
        return scores


class MMAVSRGenerationMixin(GenerationMixin):
    """Greedy and beam search from video, audio or both; the KV cache is the decoder's `EncoderDecoderCache`."""

    def generate(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs,
    ):
        r"""
        Transcribe `pixel_values_videos` and/or `input_features` (see `forward`). Accepts every argument of
        [`~GenerationMixin.generate`] (`num_beams`, `max_new_tokens`, `generation_config`, ...). Without a length
        limit, hypotheses stop at their utterance's number of encoder frames.
        """
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(
                input_features=input_features,
                attention_mask=attention_mask,
                pixel_values_videos=pixel_values_videos,
                video_attention_mask=video_attention_mask,
            )
        frame_lengths = encoder_outputs.attention_mask.sum(-1)
        generation_config = kwargs.get("generation_config", self.generation_config)
        if kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is None:
            # each utterance is held to its own number of frames below
            kwargs["max_new_tokens"] = int(frame_lengths.max())
        processors = LogitsProcessorList(logits_processor or [])
        processors.append(EncoderLengthLogitsProcessor(frame_lengths, generation_config.eos_token_id))
        return super().generate(encoder_outputs=encoder_outputs, logits_processor=processors, **kwargs)
