"""generate() for MMAVSR: joint CTC/attention decoding as in auto_avsr (ESPnet), on top of Transformers' search.

- The encoder runs first (video-only input has no `input_features`), once per utterance.
- Each hypothesis holds at most as many tokens as its utterance has encoder frames, then ends (auto_avsr's `maxlen`).
- With `ctc_weight` > 0, the score of a hypothesis is `(1 - ctc_weight) * attention + ctc_weight * CTC prefix`
  log-probability, the CTC part computed only for the `int(1.5 * num_beams)` best next tokens of the attention
  decoder (ESPnet's partial scoring) and for eos. Finished beams are ranked by their raw summed score:
  `length_penalty` is 0 unless the call or the generation config sets it, as in ESPnet.
"""

import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import EncoderDecoderCache


def as_token_list(token_ids: int | list[int]) -> list[int]:
    return [int(i) for i in token_ids] if isinstance(token_ids, (list, tuple)) else [int(token_ids)]


class EncoderLengthLogitsProcessor(LogitsProcessor):
    """Ends a hypothesis once it holds `frame_length` tokens: eos is then its only continuation, at no score."""

    def __init__(self, frame_lengths: torch.Tensor, eos_token_id: int | list[int], prompt_length: int = 1):
        self.frame_lengths = frame_lengths
        self.eos_token_ids = as_token_list(eos_token_id)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        num_beams = input_ids.shape[0] // self.frame_lengths.shape[0]
        limits = self.frame_lengths.to(input_ids.device).repeat_interleave(num_beams)
        done = (input_ids.shape[1] - self.prompt_length) >= limits
        if done.any():
            scores = scores.clone()
            scores[done] = torch.finfo(scores.dtype).min
            scores[done.nonzero()[:, :1], torch.tensor(self.eos_token_ids, device=scores.device)] = 0.0
        return scores


def logsumexp_without_denormals(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.logsumexp(x, dim)`, computed the same way, except that terms below e^-80 times the largest one are
    dropped instead of exponentiated: their exponentials are denormal floats, which x86 CPUs compute ~15x slower (most
    terms of a CTC prefix score are such), and next to the largest term (1 after the shift) a float32 sum cannot hold
    them anyway."""
    maxes = x.amax(dim, keepdim=True)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0.0)
    shifted = x - maxes
    shifted.masked_fill_(shifted < -80.0, -float("inf"))
    return shifted.exp_().sum(dim).log_().add_(maxes.squeeze(dim))


class CTCPrefixScorer:
    """CTC prefix log-probabilities of hypotheses extended by candidate tokens, batched over rows and candidates.

    A row's state is the pair of forward variables over frames (`r[t, 0]`: paths ending in the last token, `r[t, 1]`:
    paths ending in blank) and its prefix score `psi`. Frames past an utterance's length emit blank with
    probability one, so every row can run to the longest utterance's last frame.
    """

    def __init__(self, ctc_log_probs: torch.Tensor, frame_lengths: torch.Tensor, blank_id: int = 0):
        # ctc_log_probs: (B, T, V)
        frames = torch.arange(ctc_log_probs.shape[1], device=ctc_log_probs.device)
        padded = frames[None, :] >= frame_lengths[:, None].to(frames.device)  # (B, T)
        log_probs = ctc_log_probs.float().masked_fill(padded[..., None], -float("inf"))
        log_probs[..., blank_id] = log_probs[..., blank_id].masked_fill(padded, 0.0)
        self.log_probs = log_probs
        self.blank_id = blank_id

    def _utterance_of_rows(self, num_rows: int) -> torch.Tensor:
        rows_per_utterance = num_rows // self.log_probs.shape[0]
        return torch.arange(self.log_probs.shape[0], device=self.log_probs.device).repeat_interleave(rows_per_utterance)

    def initial_state(self, rows_per_utterance: int) -> tuple[torch.Tensor, torch.Tensor]:
        """State of the empty prefix for every row: no token emitted, only blanks so far."""
        utterances = self._utterance_of_rows(rows_per_utterance * self.log_probs.shape[0])
        blank = self.log_probs[utterances, :, self.blank_id]  # (N, T)
        r = torch.full((blank.shape[1], 2, blank.shape[0]), -float("inf"), device=blank.device)
        r[:, 1] = torch.cumsum(blank, dim=1).T
        return r, torch.zeros(blank.shape[0], device=blank.device)

    def score(
        self, r_prev: torch.Tensor, last_tokens: torch.Tensor, prefix_length: int, candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix scores of each row's prefix + each candidate.

        r_prev: (T, 2, N) state of the rows; last_tokens: (N,) last token of each row (-1 for the empty prefix);
        prefix_length: tokens in the prefixes; candidates: (N, K) token ids (not blank, not eos).
        Returns psi (N, K), the candidates' states (T, 2, N, K), and the eos score of each row (N,).
        """
        num_rows, num_frames = r_prev.shape[2], r_prev.shape[0]
        utterances = self._utterance_of_rows(num_rows)
        x = self.log_probs[utterances[:, None], :, candidates].permute(2, 0, 1)  # (T, N, K)
        x_blank = self.log_probs[utterances, :, self.blank_id].T[:, :, None]  # (T, N, 1)

        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T, N)
        # phi: probability of the prefix before the candidate; a repeated token needs a blank in between
        repeated = (candidates == last_tokens[:, None])[None]  # (1, N, K)
        phi = torch.where(repeated, r_prev[:, 1, :, None], r_sum[:, :, None])  # (T, N, K)

        # one buffer (T, 3, N, K) holds per frame r[t, 0], phi[t], r[t, 1]: a frame's two recursions
        #   r[t, 0] = logaddexp(r[t-1, 0], phi[t-1]) + x[t],  r[t, 1] = logaddexp(r[t-1, 0], r[t-1, 1]) + x_blank[t]
        # then read channel 0 against channels 1:3 of frame t-1 and write channels 0 and 2 of frame t: two kernels a
        # frame instead of six
        frames = torch.empty((num_frames, 3) + candidates.shape, device=r_prev.device)
        frames[:, 1] = phi
        r = frames[:, 0::2]  # (T, 2, N, K), a view
        start = max(prefix_length, 1)
        r[:start] = -float("inf")  # no prefix of `prefix_length` + 1 tokens ends before frame `prefix_length`
        if prefix_length == 0:
            r[0, 0] = x[0]
        emissions = torch.stack([x, x_blank.expand_as(x)], dim=1)  # (T, 2, N, K)
        for t in range(start, num_frames):
            torch.add(torch.logaddexp(frames[t - 1, 0:1], frames[t - 1, 1:3]), emissions[t], out=r[t])
        ends = torch.cat([phi[start - 1 : num_frames - 1] + x[start:], r[start - 1, 0][None]])
        psi = logsumexp_without_denormals(ends, dim=0)
        return psi, r, r_sum[-1]


class CTCPrefixScoreLogitsProcessor(LogitsProcessor):
    """Adds `ctc_weight` x the CTC prefix score to `(1 - ctc_weight)` x the decoder's log-probabilities.

    Tokens outside the decoder's `int(pre_beam_ratio * num_beams)` best are ruled out, except eos, and blank always
    is, as in ESPnet's batch beam search. Hypotheses are followed from step to step through the tokens they hold,
    so beam reordering needs no hook into the search.
    """

    def __init__(
        self,
        ctc_log_probs: torch.Tensor,
        frame_lengths: torch.Tensor,
        ctc_weight: float,
        num_beams: int,
        eos_token_id: int | list[int],
        blank_id: int = 0,
        pre_beam_ratio: float = 1.5,
        prompt_length: int = 1,
    ):
        self.eos_token_ids = as_token_list(eos_token_id)
        self.scorer = CTCPrefixScorer(ctc_log_probs, frame_lengths, blank_id)
        self.num_utterances = ctc_log_probs.shape[0]
        self.ctc_weight = ctc_weight
        self.blank_id = blank_id
        self.pre_beam_size = min(max(1, int(pre_beam_ratio * num_beams)), ctc_log_probs.shape[-1])
        self.prompt_length = prompt_length
        self._previous = None  # (input_ids, candidates (N, K), candidate psi (N, K), candidate states (T, 2, N, K))

    def _row_states(self, input_ids: torch.LongTensor):
        """Each row's CTC state, taken from the candidate of its parent row that it extended."""
        rows = input_ids.shape[0]
        if self._previous is None:
            r, psi = self.scorer.initial_state(rows // self.num_utterances)
            return r, psi
        prev_ids, candidates, cand_psi, cand_r = self._previous
        beams = rows // self.num_utterances
        prefixes = input_ids[:, :-1].view(self.num_utterances, beams, 1, -1)
        parents = (prefixes == prev_ids.view(self.num_utterances, 1, beams, -1)).all(-1).float().argmax(-1)
        parents = (parents + torch.arange(self.num_utterances, device=input_ids.device)[:, None] * beams).flatten()
        match = candidates[parents] == input_ids[:, -1:]  # (N, K)
        slot = match.float().argmax(-1)
        r = cand_r[:, :, parents, slot]  # (T, 2, N)
        psi = cand_psi[parents, slot]
        # rows that continue after a token the scorer never proposed (finished rows padded by greedy search)
        lost = ~match.any(-1)
        r[:, :, lost] = -float("inf")
        return r, psi

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        log_probs = torch.log_softmax(scores.float(), dim=-1)  # greedy search passes raw logits
        r_prev, psi_prev = self._row_states(input_ids)
        prefix_length = input_ids.shape[1] - self.prompt_length
        last_tokens = input_ids[:, -1] if prefix_length > 0 else torch.full_like(input_ids[:, -1], -1)

        # ESPnet's pre-beam: the decoder's best tokens, eos and blank included (they are overwritten below)
        candidates = log_probs.topk(self.pre_beam_size, dim=-1).indices  # (N, K)
        psi, r, psi_eos = self.scorer.score(r_prev, last_tokens, prefix_length, candidates)
        self._previous = (input_ids, candidates, psi, r)

        weight = self.ctc_weight
        # an impossible prefix (psi -inf) stays impossible: -inf - -inf must not become NaN
        gain = (psi - psi_prev[:, None]).nan_to_num(nan=-float("inf"))
        gain_eos = (psi_eos - psi_prev).nan_to_num(nan=-float("inf"))
        joint = torch.full_like(log_probs, torch.finfo(log_probs.dtype).min)
        joint.scatter_(1, candidates, (1 - weight) * log_probs.gather(1, candidates) + weight * gain)
        # eos is always scored: the prefix must explain the whole utterance; blank is never a token (for the LLM and
        # Whisper decoders it lies past the decoder's vocabulary)
        eos = torch.tensor(self.eos_token_ids, device=joint.device)
        joint[:, eos] = (1 - weight) * log_probs[:, eos] + weight * gain_eos[:, None]
        if self.blank_id < joint.shape[-1]:
            joint[:, self.blank_id] = torch.finfo(log_probs.dtype).min
        return joint.to(scores.dtype)


class MMAVSRGenerationMixin(GenerationMixin):
    """Greedy and beam search from video, audio or both, with optional joint CTC prefix scoring: the one `generate`
    of the MMAVSR models, for every decoder (as `WhisperGenerationMixin` is Whisper's)."""

    def _prepare_decoder_input_ids_for_generation(self, batch_size, model_input_name, model_kwargs, *args, **kwargs):
        # generation starts from the whole decoder prompt (Whisper's forced tokens, the LLM prompt's tail)
        prompt = self.config.decoder_prompt_ids
        if len(prompt) > 1 and model_kwargs.get("decoder_input_ids") is None:
            model_kwargs["decoder_input_ids"] = torch.tensor([prompt] * batch_size, device=self.device)
        return super()._prepare_decoder_input_ids_for_generation(
            batch_size, model_input_name, model_kwargs, *args, **kwargs
        )

    def _reorder_cache(self, past_key_values, beam_idx):
        # the beams of an utterance share its encoder states, hence the cross-attention keys and values: only the
        # self-attention cache needs to follow the beams (copying both would dominate decoding time)
        if isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.self_attention_cache.reorder_cache(beam_idx)
        else:
            past_key_values.reorder_cache(beam_idx)
        return past_key_values

    def generate(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        logits_processor: LogitsProcessorList | None = None,
        ctc_weight: float | None = None,
        **kwargs,
    ):
        r"""
        Transcribe `pixel_values_videos` and/or `input_features` (see `forward`). Accepts every argument of
        [`~GenerationMixin.generate`] (`num_beams`, `max_new_tokens`, `generation_config`, ...).

        ctc_weight (`float`, *optional*):
            Weight of the CTC prefix score in joint decoding; defaults to the generation config's `ctc_weight`
            (0 turns it off). Needs a CTC head over the decoder's tokens (`config.ctc_vocabulary == "decoder"`).

        Each utterance's hypotheses end after as many tokens as it has encoder frames, and after `max_new_tokens`
        (the argument, else the generation config's, as saved with the model); without `max_new_tokens` /
        `max_length`, the Whisper decoder stops at its last learned position (`max_target_positions`). The LLM
        decoder returns the new tokens only, as a decoder-only LLM does (its prompt's tail is ordinary text).
        """
        config = self.config
        generation_config = kwargs.get("generation_config", self.generation_config)
        if encoder_outputs is None:
            # the search returns the encoder's hidden states and attentions from here when asked for them
            output_flags = {
                name: bool(kwargs.get(name, getattr(generation_config, name, False)))
                for name in ("output_attentions", "output_hidden_states")
            }
            encoder_outputs = self.get_encoder()(
                input_features=input_features,
                attention_mask=attention_mask,
                pixel_values_videos=pixel_values_videos,
                video_attention_mask=video_attention_mask,
                return_dict=True,
                **output_flags,
            )
        else:
            # the search expands the encoder outputs for its beams in place: keep the caller's object intact
            encoder_outputs = type(encoder_outputs)(**encoder_outputs)
        if ctc_weight is None:
            ctc_weight = getattr(generation_config, "ctc_weight", 0.0) or 0.0
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"`ctc_weight` must lie in [0, 1], got {ctc_weight}.")
        if ctc_weight > 0 and not config.ctc_shares_decoder_vocabulary:
            raise ValueError(
                f"Joint CTC decoding needs the CTC head and the decoder to share a vocabulary; decoder_type="
                f"{config.decoder_type!r} has its own ({config.vocab_size} tokens vs the CTC head's "
                f"{config.ctc_vocab_size} units): build the model with `ctc_vocabulary='decoder'`."
            )
        eos_token_id = generation_config.eos_token_id
        frame_lengths = encoder_outputs.attention_mask.sum(-1)
        if kwargs.get("max_new_tokens") is None and generation_config.max_new_tokens is not None:
            kwargs["max_new_tokens"] = generation_config.max_new_tokens  # the saved generation config's limit
        if config.decoder_type == "whisper-decoder" and kwargs.get("max_new_tokens") is None:
            # Whisper's learned positions end at max_target_positions
            kwargs.setdefault("max_length", config.text_config.max_target_positions)
        if kwargs.get("max_new_tokens") is None and kwargs.get("max_length") is None:
            # each utterance is held to its own number of frames below; +1 for the closing eos
            kwargs["max_new_tokens"] = int(frame_lengths.max()) + 1

        num_beams = kwargs.get("num_beams") or generation_config.num_beams or 1
        prompt_length = len(self.config.decoder_prompt_ids)
        decoder = getattr(getattr(self, "model", None), "decoder", None)
        sampling = kwargs.get("do_sample", generation_config.do_sample)
        if (
            hasattr(decoder, "prefill_cross_attention")
            and kwargs.get("past_key_values") is None
            and kwargs.get("use_cache", generation_config.use_cache) is not False
            and not sampling
        ):
            new_tokens = kwargs.get("max_new_tokens") or generation_config.max_new_tokens
            max_length = kwargs.get("max_length") or generation_config.max_length
            if new_tokens:
                max_length = prompt_length + new_tokens
            kwargs["past_key_values"] = decoder.prefill_cross_attention(
                encoder_outputs.last_hidden_state, max_length, getattr(self, "cpu_decoding_speedups", True)
            )
        if num_beams > 1 and kwargs.get("length_penalty") is None and generation_config.length_penalty is None:
            kwargs["length_penalty"] = 0.0  # ESPnet ranks finished beams by their summed score
        processors = LogitsProcessorList(logits_processor or [])
        if ctc_weight > 0:
            with torch.no_grad():
                ctc_log_probs = torch.log_softmax(self.ctc_head(encoder_outputs.last_hidden_state).float(), dim=-1)
            processors.append(
                CTCPrefixScoreLogitsProcessor(
                    ctc_log_probs,
                    frame_lengths,
                    ctc_weight,
                    num_beams,
                    eos_token_id,
                    blank_id=self.config.ctc_blank_id,
                    prompt_length=prompt_length,
                )
            )
        processors.append(EncoderLengthLogitsProcessor(frame_lengths, eos_token_id, prompt_length))
        # the mask of what the decoder attends to: the encoder's frames (generate() would otherwise guess one from
        # the decoder prompt, and warn that it cannot where the pad token is the eos token, as in SmolLM2)
        generated = super().generate(
            encoder_outputs=encoder_outputs,
            attention_mask=encoder_outputs.attention_mask,
            logits_processor=processors,
            **kwargs,
        )
        if config.decoder_type == "llm":
            # like a decoder-only LLM, return the new tokens only: the prompt's tail is ordinary text
            if isinstance(generated, torch.Tensor):
                return generated[:, prompt_length:]
            generated.sequences = generated.sequences[:, prompt_length:]
        return generated
