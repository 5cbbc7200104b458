"""Convert an auto_avsr checkpoint (mpc001/auto_avsr, `.pth`) into an MMAVSR `save_pretrained` folder.

    python -m mmavsr_training.convert_auto_avsr_checkpoint --checkpoint vsr_trlrs3_base.pth --output-dir mmavsr-vsr

Accepts the released VSR (video) and ASR (audio) models and smaller models trained with auto_avsr's classes: every
size is read from the tensor shapes (frontend channels and blocks per stage, Conformer width, feed-forward size,
layers, convolution kernel, macaron or not, encoder heads from `pos_bias_u`, decoder layers and vocabulary). Only the
decoder's attention heads leave no trace in the shapes: `--decoder-attention-heads` (default: the encoder's, 12 in the
released models). State-dict keys may carry Lightning's `model.` prefix, and a Lightning checkpoint (`state_dict`
inside) is accepted. The checkpoint is read with `torch.load(weights_only=True)`: files that need arbitrary pickled
objects are refused.

The folder also gets the processor with auto_avsr's test-time transforms (video processor, feature extractor and
the unigram5000 tokenizer), so that `AutoProcessor.from_pretrained(OUTPUT_DIR)` and
`pipeline("audio-visual-speech-recognition" / "automatic-speech-recognition", model=OUTPUT_DIR)` work on it.
"""

import argparse
import pickle
import re
from pathlib import Path

import torch

from modeling_mmavsr.configuration_mmavsr import MMAVSRConfig
from modeling_mmavsr.modeling_mmavsr import MMAVSRForConditionalGeneration


# auto_avsr key -> MMAVSR key, in order; `{frontend}` is `vision_frontend` or `audio_frontend`
KEY_RENAMES = (
    (r"^frontend\.frontend3D\.0\.", "model.encoder.{frontend}.conv3d."),
    (r"^frontend\.frontend3D\.1\.", "model.encoder.{frontend}.norm3d."),
    (r"^frontend\.frontend3D\.2\.", "model.encoder.{frontend}.act3d."),  # PReLU frontends only
    (r"^frontend\.trunk\.(conv1|bn1|relu)\.", r"model.encoder.{frontend}.\1."),  # the audio stem
    (r"^frontend\.trunk\.(layer\d+)\.", r"model.encoder.{frontend}.trunk.\1."),
    (r"^proj_encoder\.", "model.encoder.projector.linear."),
    (r"^encoder\.encoders\.(\d+)\.", r"model.encoder.conformer.layers.\1."),
    (r"^encoder\.after_norm\.", "model.encoder.conformer.after_norm."),
    (r"^decoder\.embed\.0\.", "model.decoder.embed_tokens."),
    (r"^decoder\.decoders\.(\d+)\.", r"model.decoder.layers.\1."),
    (r"^decoder\.after_norm\.", "model.decoder.after_norm."),
    (r"^decoder\.output_layer\.", "lm_head."),
    (r"^ctc\.ctc_lo\.", "ctc_head.ctc_lo."),
)
# renames inside a layer (applied after the prefix)
INNER_RENAMES = (
    (r"\.linear_q\.", ".q_proj."),
    (r"\.linear_k\.", ".k_proj."),
    (r"\.linear_v\.", ".v_proj."),
    (r"\.linear_out\.", ".out_proj."),
    (r"\.linear_pos\.", ".pos_proj."),
    (r"\.pointwise_cov1\.", ".pointwise_conv1."),
    (r"\.pointwise_cov2\.", ".pointwise_conv2."),
)
RELEASED_ATTENTION_HEADS = 12
MAX_LISTED_KEYS = 20


class CheckpointConversionError(ValueError):
    """The checkpoint is not an auto_avsr model this converter can map onto MMAVSR."""


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:MAX_LISTED_KEYS])
    more = f"\n  ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{len(keys)} key(s):\n  {shown}{more}"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _first_global(error: Exception) -> str:
    match = re.search(r"GLOBAL (\S+)", str(error))
    return f"e.g. `{match.group(1)}`" if match else "not allowed by weights_only"


def load_auto_avsr_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` with `weights_only=True` and return its model state dict (Lightning's `state_dict` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the GLOBAL its weights_only unpickler refused (unsupported, or from a blocked module such as
        # os/posix); any other unpickling error means the file is not a checkpoint at all
        if "GLOBAL" not in str(error):
            raise CheckpointConversionError(
                f"{path}: not a readable PyTorch checkpoint (neither a `torch.save` archive nor a pickle of tensors)."
            ) from None
        raise CheckpointConversionError(
            f"{path}: refused to load: the file holds pickled Python objects beyond tensors and plain containers "
            f"({_first_global(error)}), which `torch.load(weights_only=True)` does not execute. Save only the model's "
            "state dict (`torch.save(checkpoint['state_dict'], ...)`) where you trust the file, and convert that."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointConversionError(f"{path}: not a readable PyTorch checkpoint ({_first_line(error)}).") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]  # Lightning checkpoint
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointConversionError(
            f"{path}: expected a state dict (names -> tensors) or a Lightning checkpoint with `state_dict`, got "
            f"{type(checkpoint).__name__} with entries {sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else ''}."
        )
    return checkpoint


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `model.` prefix of auto_avsr's Lightning module (`ModelModule.model`) when every key has it."""
    if state_dict and all(key.startswith("model.") for key in state_dict):
        return {key[len("model.") :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _modality(state_dict) -> str:
    if "frontend.frontend3D.0.weight" in state_dict:
        return "video"
    if "frontend.trunk.conv1.weight" in state_dict:
        return "audio"
    raise CheckpointConversionError(
        "Not an auto_avsr VSR or ASR checkpoint: found neither `frontend.frontend3D.0.weight` (video frontend) nor "
        f"`frontend.trunk.conv1.weight` (audio frontend). First keys: {sorted(state_dict)[:10]}"
    )


def _count_indices(state_dict, pattern: str, first: int = 0) -> int:
    """Number of distinct integers captured by `pattern` (layer indices), checking they run first, first + 1, ..."""
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    if indices != set(range(first, first + len(indices))):
        raise CheckpointConversionError(
            f"Layer indices of the keys matching {pattern!r} do not run {first}, {first + 1}, ...: {sorted(indices)}."
        )
    return len(indices)


def _shape(state_dict, key: str) -> torch.Size:
    if key not in state_dict:
        raise CheckpointConversionError(f"The checkpoint lacks `{key}`, which every auto_avsr model has.")
    return state_dict[key].shape


def infer_config(
    state_dict: dict[str, torch.Tensor], attention_heads: int | None = None, decoder_attention_heads: int | None = None
) -> MMAVSRConfig:
    """The `MMAVSRConfig` of an auto_avsr state dict (keys without the `model.` prefix), sizes read from the shapes."""
    modality = _modality(state_dict)
    stem = "frontend.frontend3D.0.weight" if modality == "video" else "frontend.trunk.conv1.weight"
    frontend_channels = _shape(state_dict, stem)[0]
    # stages are named layer1..layerN, their blocks 0..M-1
    num_stages = _count_indices(state_dict, r"^frontend\.trunk\.layer(\d+)\.", first=1)
    frontend_layers = [
        _count_indices(state_dict, rf"^frontend\.trunk\.layer{stage}\.(\d+)\.") for stage in range(1, num_stages + 1)
    ]
    activation = "prelu" if any(key.endswith("relu1.weight") for key in state_dict) else "swish"

    layer = "encoder.encoders.0."
    hidden_size = _shape(state_dict, "proj_encoder.weight")[0]
    inferred_heads = _shape(state_dict, layer + "self_attn.pos_bias_u")[0]
    if attention_heads is not None and attention_heads != inferred_heads:
        raise CheckpointConversionError(
            f"--attention-heads {attention_heads} contradicts the checkpoint: `{layer}self_attn.pos_bias_u` has shape "
            f"{tuple(_shape(state_dict, layer + 'self_attn.pos_bias_u'))}, i.e. {inferred_heads} encoder heads."
        )
    vocab_size = _shape(state_dict, "decoder.embed.0.weight")[0]
    eos = vocab_size - 1  # auto_avsr: sos = eos = odim - 1
    text_config = {
        "vocab_size": vocab_size,
        "d_model": _shape(state_dict, "decoder.embed.0.weight")[1],
        "num_hidden_layers": _count_indices(state_dict, r"^decoder\.decoders\.(\d+)\."),
        "decoder_attention_heads": decoder_attention_heads or inferred_heads,
        "decoder_ffn_dim": _shape(state_dict, "decoder.decoders.0.feed_forward.w_1.weight")[0],
        "pad_token_id": 0,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "decoder_start_token_id": eos,
    }
    try:
        return MMAVSRConfig(
            modality=modality,
            frontend_channels=frontend_channels,
            frontend_layers=frontend_layers,
            frontend_activation=activation,
            hidden_size=hidden_size,
            encoder_layers=_count_indices(state_dict, r"^encoder\.encoders\.(\d+)\."),
            encoder_attention_heads=inferred_heads,
            encoder_ffn_dim=_shape(state_dict, layer + "feed_forward.w_1.weight")[0],
            conv_kernel_size=_shape(state_dict, layer + "conv_module.depthwise_conv.weight")[-1],
            macaron_style=layer + "feed_forward_macaron.w_1.weight" in state_dict,
            ctc_vocab_size=_shape(state_dict, "ctc.ctc_lo.weight")[0],
            text_config=text_config,
        )
    except ValueError as error:
        raise CheckpointConversionError(
            f"The sizes read from the checkpoint make no valid MMAVSR config: {error}"
        ) from None


def rename_key(key: str, modality: str) -> str | None:
    """The MMAVSR name of an auto_avsr key (without `model.` prefix), or None when no rule knows it."""
    frontend = "vision_frontend" if modality == "video" else "audio_frontend"
    for pattern, replacement in KEY_RENAMES:
        if re.match(pattern, key):
            new_key = re.sub(pattern, replacement.replace("{frontend}", frontend), key, count=1)
            for inner, inner_replacement in INNER_RENAMES:
                new_key = re.sub(inner, inner_replacement, new_key)
            return new_key
    return None


def convert_auto_avsr_state_dict(
    state_dict: dict[str, torch.Tensor],
    attention_heads: int | None = None,
    decoder_attention_heads: int | None = None,
) -> tuple[MMAVSRConfig, dict[str, torch.Tensor]]:
    """An auto_avsr state dict -> (`MMAVSRConfig`, state dict of `MMAVSRForConditionalGeneration`).

    `attention_heads` (encoder) is read from the shapes; when given it must agree. `decoder_attention_heads` defaults
    to the encoder's (12 in the released models). Raises `CheckpointConversionError` listing unknown keys,
    missing keys and shape mismatches.
    """
    state_dict = strip_prefix(state_dict)
    config = infer_config(state_dict, attention_heads, decoder_attention_heads)
    converted, original, unknown = {}, {}, []
    for key, value in state_dict.items():
        new_key = rename_key(key, config.modality)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key], original[new_key] = value, key

    with torch.device("meta"):
        expected = MMAVSRForConditionalGeneration(config).state_dict()
    unknown += [f"{original[key]} (as {key})" for key in converted if key not in expected]
    missing = [key for key in expected if key not in converted]
    problems = []
    if unknown:
        problems.append(f"unknown (no MMAVSR counterpart) {_listing(unknown)}")
    if missing:
        problems.append(f"missing (the MMAVSR model needs them) {_listing(missing)}")
    mismatched = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in converted
        if key in expected and converted[key].shape != expected[key].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise CheckpointConversionError(
            f"Cannot convert this auto_avsr {config.modality} checkpoint:\n" + "\n".join(problems)
        )
    return config, converted


def auto_avsr_processor():
    """auto_avsr's test-time transforms and vocabulary as an `MMAVSRProcessor`, or None when the processing package
    (`mmavsr_processing`) is not installed.

    Video (auto_avsr's `VideoTransform("test")`): the 96x96 mouth ROI centre-cropped to 88x88, grayscale, scaled to
    [0, 1] and normalised with mean 0.421 and std 0.165. Audio (`AudioTransform("test")`): the 16 kHz wave normalised
    over the utterance to zero mean and unit variance (its layer norm). Text: the unigram5000 tokenizer.
    `tests/test_convert_auto_avsr.py` checks both transforms against auto_avsr's own outputs."""
    try:
        from mmavsr_processing import MMAVSRProcessor
    except ImportError:
        return None
    return MMAVSRProcessor.from_auto_avsr(vision_encoder="resnet", feature_type="raw", do_normalize=True)


def convert_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    attention_heads: int | None = None,
    decoder_attention_heads: int | None = None,
) -> MMAVSRForConditionalGeneration:
    """Convert `checkpoint` and write `save_pretrained` files (safetensors) and the processor into `output_dir`.

    The processor ([`auto_avsr_processor`]: video processor, feature extractor and unigram5000 tokenizer, with
    auto_avsr's test-time transforms) makes the folder ready for `AutoProcessor.from_pretrained` and the
    `audio-visual-speech-recognition` / `automatic-speech-recognition` pipelines. A checkpoint whose vocabulary is
    not unigram5000's gets the video processor and feature extractor only, and a message saying so."""
    state_dict = load_auto_avsr_checkpoint(checkpoint)
    config, converted = convert_auto_avsr_state_dict(state_dict, attention_heads, decoder_attention_heads)
    with torch.device("meta"):
        model = MMAVSRForConditionalGeneration(config)
    model.load_state_dict(converted, strict=True, assign=True)
    model.eval()
    # auto_avsr decodes with beam 40 and ctc_weight 0.1 (the model's default), hypotheses up to the frame count
    model.generation_config.num_beams = 40
    model.save_pretrained(output_dir)

    processor = auto_avsr_processor()
    if processor is None:
        print(f"No processor written to {output_dir}: mmavsr_processing is not installed.")
    elif processor.tokenizer.vocab_size == config.vocab_size:
        processor.save_pretrained(output_dir)
    else:
        processor.feature_extractor.save_pretrained(output_dir)
        processor.video_processor.save_pretrained(output_dir)
        print(
            f"No tokenizer written to {output_dir}: the checkpoint's vocabulary ({config.vocab_size}) is not "
            f"auto_avsr's unigram5000 ({processor.tokenizer.vocab_size}). Save the model's own tokenizer there (the "
            "feature extractor and video processor are written) for AutoProcessor and the pipelines."
        )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="auto_avsr .pth (state dict or Lightning checkpoint)")
    parser.add_argument("--output-dir", required=True, help="folder for the save_pretrained files")
    parser.add_argument(
        "--attention-heads",
        type=int,
        default=None,
        help=f"Conformer heads (read from the checkpoint; if given, checked against it; released: "
        f"{RELEASED_ATTENTION_HEADS})",
    )
    parser.add_argument(
        "--decoder-attention-heads",
        type=int,
        default=None,
        help="decoder heads, which the shapes cannot tell (default: the encoder's heads)",
    )
    args = parser.parse_args(argv)
    try:
        model = convert_checkpoint(args.checkpoint, args.output_dir, args.attention_heads, args.decoder_attention_heads)
    except (CheckpointConversionError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")
    config = model.config
    print(
        f"Converted {args.checkpoint} ({config.modality}, {model.num_parameters() / 1e6:.1f}M parameters: frontend "
        f"{config.frontend_channels} channels x {config.frontend_layers} blocks, Conformer {config.encoder_layers} x "
        f"{config.hidden_size} ({config.encoder_attention_heads} heads, ffn {config.encoder_ffn_dim}, kernel "
        f"{config.conv_kernel_size}, macaron {config.macaron_style}), decoder {config.text_config.num_hidden_layers} "
        f"layers ({config.text_config.decoder_attention_heads} heads), vocabulary {config.vocab_size}) -> "
        f"{args.output_dir}"
    )


if __name__ == "__main__":
    main()
