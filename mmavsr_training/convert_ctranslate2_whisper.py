"""Convert a CTranslate2 Whisper model (faster-whisper's format) into a `WhisperForConditionalGeneration` folder.

    python -m mmavsr_training.convert_ctranslate2_whisper --model-dir whisper-base-ct2 --output-dir whisper-base

The CTranslate2 folder holds `model.bin` (CTranslate2's binary format: a header, then named tensors and aliases),
`tokenizer.json` and `config.json` (language ids, suppressed tokens, alignment heads). The output folder is what
`WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained` read: weights, `config.json`,
`generation_config.json` (languages, tasks, suppressed tokens), the tokenizer and the feature extractor. So
`MMAVSRForConditionalGeneration.from_pretrained_components(audio_encoder="whisper", decoder_type="whisper-decoder", ...)`
can take Whisper from such a folder where only a CTranslate2 copy is at hand. The `ctranslate2` package is not needed.

Every size is read from the tensors (any Whisper size; 80 or 128 mel bins). The tensors map one-to-one onto
transformers' Whisper: CTranslate2 fuses the self-attention's query, key and value projections (and the
cross-attention's key and value) into one matrix, which is split again. Whisper's key projections have no bias;
CTranslate2 stores a zero one. A key bias adds the same amount to all scores of a query, which softmax ignores, so it
is dropped whatever its value. Quantized models (int8 / int16 weights) are refused: convert them to float16 or float32
with CTranslate2 first.
"""

import argparse
import json
import re
import struct
import tempfile
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)


# CTranslate2's DataType enum (include/ctranslate2/types.h), by its id in model.bin
CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
# binary versions whose layout this reader knows: typed variables (>= 4) and aliases (>= 3)
SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
# CTranslate2's ActivationType enum: Whisper uses GELU
CT2_GELU = 3
WHISPER_SPEC = "WhisperSpec"
# flags of WhisperSpec that must hold for transformers' Whisper: (variable, expected value)
EXPECTED_FLAGS = {
    "decoder/activation": CT2_GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
}
# further WhisperSpec variables that carry no weight (their meaning is in the config or the generation config)
IGNORED_VARIABLES = (
    "decoder/alibi_use_positive_positions",
    "decoder/scale_alibi",
    "decoder/start_from_zero_embedding",
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/num_heads",
    "encoder/num_heads",
)


class CTranslate2ConversionError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter can map onto transformers' Whisper."""


class _BinaryReader:
    """Little-endian reads from `model.bin`'s bytes, naming the file and offset when they run out."""

    def __init__(self, data: bytes, path: str):
        self.data = memoryview(data)
        self.path = path
        self.offset = 0

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise CTranslate2ConversionError(
                f"{self.path} ends at byte {len(self.data)} inside a record that needs {size} bytes from byte "
                f"{self.offset}: the file is truncated or not a CTranslate2 model."
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        # a uint16 length counting the closing NUL, then the characters
        raw = bytes(self.take(self.unpack("H")))
        if not raw.endswith(b"\0"):
            raise CTranslate2ConversionError(f"{self.path}: malformed string at byte {self.offset - len(raw)}.")
        return raw[:-1].decode("utf-8")


def read_ctranslate2_model(path: str | Path) -> tuple[str, int, dict[str, torch.Tensor]]:
    """Read a CTranslate2 `model.bin`: returns `(spec name, spec revision, {variable name: tensor})`, the aliases
    resolved to the tensors they name (e.g. Whisper's output projection, which is its token embedding)."""
    path = str(path)
    with open(path, "rb") as file:
        reader = _BinaryReader(file.read(), path)
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CTranslate2ConversionError(
            f"{path}: CTranslate2 binary version {version}; this reader knows versions "
            f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))} (or the file is not a CTranslate2 model)."
        )
    spec, revision = reader.string(), reader.unpack("I")
    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
        type_id, num_bytes = reader.unpack("B"), reader.unpack("I")
        if type_id not in CT2_DTYPES:
            raise CTranslate2ConversionError(f"{path}: variable {name!r} has an unknown data type id {type_id}.")
        dtype = CT2_DTYPES[type_id]
        expected = torch.Size(shape).numel() * dtype.itemsize
        if num_bytes != expected:
            raise CTranslate2ConversionError(
                f"{path}: variable {name!r} of shape {shape} and type {dtype} takes {expected} bytes, the file says "
                f"{num_bytes}."
            )
        data = bytearray(reader.take(num_bytes))  # a copy: the tensor owns writable memory
        tensor = torch.frombuffer(data, dtype=dtype) if num_bytes else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise CTranslate2ConversionError(f"{path}: alias {alias!r} names a missing variable {target!r}.")
        variables[alias] = variables[target]
    if reader.offset != len(reader.data):
        raise CTranslate2ConversionError(
            f"{path}: {len(reader.data) - reader.offset} bytes left after the last record: not a CTranslate2 model "
            "this reader understands."
        )
    return spec, revision, variables


def _count_layers(variables: dict, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    return len({match.group(1) for match in map(pattern.match, variables) if match})


def whisper_config_from_variables(variables: dict[str, torch.Tensor]) -> dict:
    """`WhisperConfig` sizes read from the CTranslate2 tensors and head counts."""
    return {
        "vocab_size": variables["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "d_model": variables["encoder/conv1/weight"].shape[0],
        "encoder_layers": _count_layers(variables, "encoder"),
        "decoder_layers": _count_layers(variables, "decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
    }


def _split_attention(state_dict: dict, used: set, variables: dict, source: str, target: str, projections: list):
    """A fused CTranslate2 projection (`source`/weight and /bias) -> one Linear per name in `projections`."""
    weight_name, bias_name = f"{source}/weight", f"{source}/bias"
    used.update((weight_name, bias_name))
    weights = variables[weight_name].chunk(len(projections))
    biases = variables[bias_name].chunk(len(projections))
    for projection, weight, bias in zip(projections, weights, biases, strict=True):
        state_dict[f"{target}.{projection}.weight"] = weight
        if projection != "k_proj":  # keys have no bias (see the module docstring)
            state_dict[f"{target}.{projection}.bias"] = bias


def whisper_state_dict_from_variables(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CTranslate2 WhisperSpec variables -> `WhisperForConditionalGeneration` state dict (`proj_out` tied, left out).

    Raises a CTranslate2ConversionError listing variables that map nowhere (or are missing), so nothing is dropped
    silently.
    """
    state_dict, used = {}, set()

    def copy(source: str, target: str):
        if source not in variables:
            raise CTranslate2ConversionError(f"The CTranslate2 model has no variable {source!r}.")
        used.add(source)
        state_dict[target] = variables[source]

    def layer_norm(source: str, target: str):
        copy(f"{source}/gamma", f"{target}.weight")
        copy(f"{source}/beta", f"{target}.bias")

    def linear(source: str, target: str):
        copy(f"{source}/weight", f"{target}.weight")
        copy(f"{source}/bias", f"{target}.bias")

    def feed_forward(source: str, target: str):
        layer_norm(f"{source}/ffn/layer_norm", f"{target}.final_layer_norm")
        linear(f"{source}/ffn/linear_0", f"{target}.fc1")
        linear(f"{source}/ffn/linear_1", f"{target}.fc2")

    def self_attention(source: str, target: str):
        layer_norm(f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
        _split_attention(state_dict, used, variables, f"{source}/self_attention/linear_0", f"{target}.self_attn",
                         ["q_proj", "k_proj", "v_proj"])  # fmt: skip
        linear(f"{source}/self_attention/linear_1", f"{target}.self_attn.out_proj")

    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    copy("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight")
    for index in range(_count_layers(variables, "encoder")):
        source, target = f"encoder/layer_{index}", f"model.encoder.layers.{index}"
        self_attention(source, target)
        feed_forward(source, target)
    layer_norm("encoder/layer_norm", "model.encoder.layer_norm")

    copy("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    copy("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight")
    for index in range(_count_layers(variables, "decoder")):
        source, target = f"decoder/layer_{index}", f"model.decoder.layers.{index}"
        self_attention(source, target)
        layer_norm(f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm")
        linear(f"{source}/attention/linear_0", f"{target}.encoder_attn.q_proj")
        _split_attention(state_dict, used, variables, f"{source}/attention/linear_1", f"{target}.encoder_attn",
                         ["k_proj", "v_proj"])  # fmt: skip
        linear(f"{source}/attention/linear_2", f"{target}.encoder_attn.out_proj")
        feed_forward(source, target)
    layer_norm("decoder/layer_norm", "model.decoder.layer_norm")

    projection = variables.get("decoder/projection/weight")
    if projection is not None:
        used.add("decoder/projection/weight")
        if not torch.equal(projection, variables["decoder/embeddings/weight"]):
            raise CTranslate2ConversionError(
                "The CTranslate2 model's output projection differs from its token embedding; transformers' Whisper "
                "ties them."
            )
    unused = set(variables) - used - set(EXPECTED_FLAGS) - set(IGNORED_VARIABLES)
    if unused:
        quantized = sorted(name for name in unused if name.endswith("weight_scale"))
        reason = " (a quantized model: convert it to float16 or float32 with CTranslate2 first)" if quantized else ""
        raise CTranslate2ConversionError(
            f"CTranslate2 variables that map onto no Whisper weight{reason}: {', '.join(sorted(unused)[:20])}"
        )
    return state_dict


def _check_spec(spec: str, variables: dict, path: Path):
    if spec != WHISPER_SPEC:
        raise CTranslate2ConversionError(f"{path} holds a CTranslate2 {spec!r} model, not a {WHISPER_SPEC!r}.")
    for name, expected in EXPECTED_FLAGS.items():
        if name in variables and int(variables[name]) != expected:
            raise CTranslate2ConversionError(
                f"{path}: {name} is {int(variables[name])}, transformers' Whisper needs {expected}."
            )
    for name, tensor in variables.items():
        if tensor.dim() >= 2 and not tensor.is_floating_point():
            raise CTranslate2ConversionError(
                f"{path}: {name!r} is stored as {tensor.dtype} (a quantized model): convert it to float16 or float32 "
                "with CTranslate2 first."
            )


def _generation_settings(tokenizer: WhisperTokenizer, ct2_config: dict, max_length: int) -> dict:
    """Whisper's generation settings (start, end and task tokens, languages, suppressed tokens) from CTranslate2's
    `config.json` and the tokenizer."""
    ids = dict(
        zip(
            ("sot", "eot", "transcribe", "translate", "no_timestamps", "prev"),
            tokenizer.convert_tokens_to_ids(
                [
                    "<|startoftranscript|>",
                    "<|endoftext|>",
                    "<|transcribe|>",
                    "<|translate|>",
                    "<|notimestamps|>",
                    "<|startofprev|>",
                ]  # fmt: skip
            ),
            strict=True,
        )
    )
    lang_ids = ct2_config.get("lang_ids") or []
    return {
        "decoder_start_token_id": ids["sot"],
        "bos_token_id": ids["eot"],
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or []),
        "generation_only": {
            "is_multilingual": bool(lang_ids),
            "lang_to_id": {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids},
            "task_to_id": {"transcribe": ids["transcribe"], "translate": ids["translate"]},
            "no_timestamps_token_id": ids["no_timestamps"],
            "prev_sot_token_id": ids["prev"],
            "alignment_heads": [list(pair) for pair in ct2_config.get("alignment_heads") or []],
            "max_initial_timestamp_index": 50,
            "max_length": max_length,
            "return_timestamps": False,
        },
    }


def convert_ctranslate2_whisper(
    model_dir: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32
) -> WhisperForConditionalGeneration:
    """Convert the CTranslate2 Whisper folder `model_dir` (model.bin, tokenizer.json, config.json) into a
    `save_pretrained` folder at `output_dir` holding the model (weights in `dtype`) and its `WhisperProcessor`."""
    model_dir = Path(model_dir)
    missing = [name for name in ("model.bin", "tokenizer.json", "config.json") if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a CTranslate2 Whisper folder: it has no {', '.join(missing)}.")
    spec, _, variables = read_ctranslate2_model(model_dir / "model.bin")
    _check_spec(spec, variables, model_dir / "model.bin")
    state_dict = {name: tensor.to(dtype) for name, tensor in whisper_state_dict_from_variables(variables).items()}
    sizes = whisper_config_from_variables(variables)
    ct2_config = json.loads((model_dir / "config.json").read_text())

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        (Path(tokenizer_dir) / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
        tokenizer = WhisperTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) != sizes["vocab_size"]:
        raise CTranslate2ConversionError(
            f"{model_dir / 'tokenizer.json'} has {len(tokenizer)} tokens, the model's embedding {sizes['vocab_size']}."
        )
    settings = _generation_settings(tokenizer, ct2_config, sizes["max_target_positions"])
    generation_only = settings.pop("generation_only")
    config = WhisperConfig(**sizes, **settings, tie_word_embeddings=True)
    config.architectures = ["WhisperForConditionalGeneration"]

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights()
    remaining = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if remaining:
        raise CTranslate2ConversionError(f"No CTranslate2 variable gives the Whisper weights {', '.join(remaining)}.")
    model.generation_config = GenerationConfig(**settings, **generation_only)
    model.eval()

    feature_extractor = WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"])
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="CTranslate2 folder: model.bin, tokenizer.json, config.json")
    parser.add_argument("--output-dir", required=True, help="folder for the save_pretrained files")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weight dtype")
    args = parser.parse_args(argv)
    try:
        model = convert_ctranslate2_whisper(args.model_dir, args.output_dir, getattr(torch, args.dtype))
    except (CTranslate2ConversionError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")
    config = model.config
    print(
        f"Converted {args.model_dir} (Whisper, {model.num_parameters() / 1e6:.1f}M parameters: {config.encoder_layers}"
        f"+{config.decoder_layers} layers of width {config.d_model}, {config.num_mel_bins} mel bins, vocabulary "
        f"{config.vocab_size}) -> {args.output_dir}"
    )


if __name__ == "__main__":
    main()
