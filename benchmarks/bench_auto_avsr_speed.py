"""Decoding and training speed of MMAVSR against auto_avsr's own implementation, with the same weights.

    python benchmarks/bench_auto_avsr_speed.py [--auto-avsr PATH] [--modality video|audio] [--beam 40] [--int8]

Decoding: one utterance of `--seconds` on the full released architecture, beam `--beam`, CTC weight `--ctc-weight`,
`--threads` CPU threads, timed after one untimed warm-up decode on each side. Training: forward + backward of a batch
of `--batch` utterances. Each side is timed `--repeats` times, the two sides taking turns (a shared machine's speed
drifts: alternating exposes both to the same drift), and the medians are compared. With `--auto-avsr` (a checkout of
mpc001/auto_avsr; it is imported from there at run time, never copied), auto_avsr's model gets random weights that are
converted into an MMAVSR model, both sides run, and the script prints both timings and whether the best hypotheses
agree. Without it, only MMAVSR runs. Weights are random, so hypotheses tend to run to the length limit: the worst case
for decoding time. With `--int8`, a copy of the MMAVSR model with int8 linear layers (`model.quantize_int8()`, dynamic
quantization) is timed too, against auto_avsr (fp32) and against the fp32 MMAVSR model, and the script says whether
its hypothesis is the fp32 one.
"""

import argparse
import copy
import statistics
import sys
import time
from functools import partial

import torch

from mmavsr_processing.media_constants import SAMPLES_PER_FRAME, VIDEO_FPS
from modeling_mmavsr import MMAVSRConfig, MMAVSRForConditionalGeneration


VOCAB_SIZE = 5049
EOS = VOCAB_SIZE - 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auto-avsr", help="path of an mpc001/auto_avsr checkout to compare against")
    parser.add_argument("--modality", choices=("video", "audio"), default="video")
    parser.add_argument("--beam", type=int, default=40)
    parser.add_argument("--ctc-weight", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=4, help="utterances per training batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side; medians are compared")
    parser.add_argument("--int8", action="store_true", help="also time decoding with int8 linear layers")
    parser.add_argument("--skip-decoding", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    return parser.parse_args()


def build_models(modality: str, auto_avsr_path: str | None):
    torch.manual_seed(0)
    if auto_avsr_path is None:
        return MMAVSRForConditionalGeneration(MMAVSRConfig(modality=modality)), None
    sys.path.insert(0, auto_avsr_path)
    from espnet.nets.pytorch_backend.e2e_asr_conformer import E2E

    from mmavsr_training.convert_auto_avsr_checkpoint import convert_auto_avsr_state_dict

    reference = E2E(VOCAB_SIZE, modality)
    config, state_dict = convert_auto_avsr_state_dict(reference.state_dict())
    model = MMAVSRForConditionalGeneration(config)
    model.load_state_dict(state_dict)
    return model, reference


def make_batch(modality: str, seconds: float, batch: int):
    frames = int(seconds * VIDEO_FPS)
    if modality == "video":
        return torch.randn(batch, frames, 1, 88, 88), frames
    return torch.randn(batch, frames * SAMPLES_PER_FRAME), frames


def model_inputs(modality: str, x: torch.Tensor) -> dict:
    return {"pixel_values_videos": x} if modality == "video" else {"input_features": x}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def format_runs(times: list[float]) -> str:
    return " / ".join(f"{t:.2f}" for t in times)


def compare(what: str, ours, theirs, repeats: int, unit: str = ""):
    """Time `ours` and `theirs` (None: ours only) `repeats` times each, taking turns; print medians; return the last
    results of both and the median of ours."""
    ours_times, theirs_times, results = [], [], (None, None)
    for _ in range(repeats):
        ours_result, seconds = timed(ours)
        ours_times.append(seconds)
        theirs_result = None
        if theirs is not None:
            theirs_result, seconds = timed(theirs)
            theirs_times.append(seconds)
        results = (ours_result, theirs_result)
    print(f"{what}  mmavsr    : {statistics.median(ours_times):8.2f} s{unit}  (runs: {format_runs(ours_times)})")
    if theirs is not None:
        print(f"{what}  auto_avsr : {statistics.median(theirs_times):8.2f} s  (runs: {format_runs(theirs_times)})")
        ratio = statistics.median(theirs_times) / statistics.median(ours_times)
        pairwise = " / ".join(f"{t / o:.2f}" for o, t in zip(ours_times, theirs_times))
        print(f"{what}  speed-up  : {ratio:8.2f} x  (run by run: {pairwise})")
    return (*results, statistics.median(ours_times))


def decode_reference(reference, modality, x, beam, ctc_weight):
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.length_bonus import LengthBonus

    scorers = reference.scorers()
    scorers["length_bonus"] = LengthBonus(VOCAB_SIZE)
    search = BatchBeamSearch(
        beam_size=beam,
        vocab_size=VOCAB_SIZE,
        weights={"decoder": 1.0 - ctc_weight, "ctc": ctc_weight, "length_bonus": 0.0},
        scorers=scorers,
        sos=EOS,
        eos=EOS,
        token_list=[str(i) for i in range(VOCAB_SIZE)],
        pre_beam_score_key=None if ctc_weight == 1.0 else "decoder",
    )
    sample = x[0] if modality == "video" else x[0].unsqueeze(-1)  # auto_avsr takes (T, 1, H, W) or (S, 1)
    features = reference.proj_encoder(reference.frontend(sample.unsqueeze(0)))
    encoded, _ = reference.encoder(features, None)
    best = search(encoded.squeeze(0))[0]
    return [int(t) for t in best.yseq[1:] if int(t) != EOS]


def decode_ours(model, modality, x, beam, ctc_weight):
    generated = model.generate(**model_inputs(modality, x[:1]), num_beams=beam, ctc_weight=ctc_weight)
    return [t for t in generated[0, 1:].tolist() if t not in (EOS, 0)]


def reference_loss(reference, modality, x, labels):
    """auto_avsr's training loss of a batch (its own forward: CTC + label-smoothed attention loss)."""
    lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    inputs = x if modality == "video" else x.unsqueeze(-1)
    loss, _, _, _ = reference(inputs, lengths, labels.masked_fill(labels == -100, -1))
    return loss


def ours_loss(model, modality, x, labels):
    """MMAVSR's training loss of the same batch (labels end with eos, as the collator builds them)."""
    with_eos = torch.cat([labels, torch.full((labels.shape[0], 1), EOS, device=labels.device)], dim=1)
    return model(**model_inputs(modality, x), labels=with_eos).loss


def train_step_reference(reference, modality, x, labels):
    reference_loss(reference, modality, x, labels).backward()


def train_step_ours(model, modality, x, labels):
    ours_loss(model, modality, x, labels).backward()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, reference = build_models(args.modality, args.auto_avsr)
    print(
        f"modality={args.modality} beam={args.beam} ctc_weight={args.ctc_weight} seconds={args.seconds} threads={args.threads}"
    )

    if not args.skip_decoding:
        model.eval()
        if reference is not None:
            reference.eval()
        x, frames = make_batch(args.modality, args.seconds, 1)
        decode = partial(decode_ours, model, args.modality, x, args.beam, args.ctc_weight)
        decode_theirs = None
        if reference is not None:
            decode_theirs = partial(decode_reference, reference, args.modality, x, args.beam, args.ctc_weight)
        with torch.inference_mode():
            decode()  # warm-up, as for training below
            if decode_theirs is not None:
                decode_theirs()
            unit = f" for {frames} frames"
            ours, theirs, fp32_seconds = compare("decoding", decode, decode_theirs, args.repeats, unit)
        agreement = "" if theirs is None else f", same as auto_avsr's: {ours == theirs}"
        print(f"decoding  hypothesis: {len(ours)} tokens{agreement}")
        if args.int8:
            int8_model = copy.deepcopy(model)
            layers = int8_model.quantize_int8()
            decode_int8 = partial(decode_ours, int8_model, args.modality, x, args.beam, args.ctc_weight)
            with torch.inference_mode():
                decode_int8()
                int8, theirs, int8_seconds = compare("decoding int8", decode_int8, decode_theirs, args.repeats, unit)
            print(
                f"decoding int8: {layers} linear layers in int8, {fp32_seconds / int8_seconds:.2f}x the fp32 MMAVSR "
                f"speed; hypothesis {len(int8)} tokens, same as fp32: {int8 == ours}"
                + ("" if theirs is None else f", same as auto_avsr's: {int8 == theirs}")
            )

    if not args.skip_training:
        x, _ = make_batch(args.modality, args.seconds, args.batch)
        labels = torch.randint(1, EOS, (args.batch, 20))
        model.train()
        step = partial(train_step_ours, model, args.modality, x, labels)
        step_theirs = None
        if reference is not None:
            reference.train()
            step_theirs = partial(train_step_reference, reference, args.modality, x, labels)
        step()  # warm-up
        if step_theirs is not None:
            step_theirs()
        unit = f" per forward+backward of {args.batch} x {args.seconds} s"
        compare("training", step, step_theirs, args.repeats, unit)


if __name__ == "__main__":
    main()
