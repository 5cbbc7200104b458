"""Export an MMAVSR model for the Hub: weights, processor, the code files for `trust_remote_code`, a model card.

```bash
python -m mmavsr_training.export --model DIR --output-dir OUT [--metrics FILE ...] \
    [--push-to-hub USER/REPO --token hf_...]
```

`DIR` is a `save_pretrained` folder of an [`MMAVSRForConditionalGeneration`] with its [`MMAVSRProcessor`] (or give
`--processor`). `OUT` then loads without this package installed:
`AutoModelForSpeechSeq2Seq.from_pretrained(OUT, trust_remote_code=True)` (and `AutoModel`, `AutoConfig`),
`AutoProcessor.from_pretrained(OUT, trust_remote_code=True)` and `pipeline("automatic-speech-recognition", model=OUT,
trust_remote_code=True)`, which is [`MMAVSRSpeechRecognitionPipeline`] (videos and audio).

The code files are found by following the imports (relative ones, and absolute ones of `modeling_mmavsr` and
`mmavsr_processing`, also inside functions) from the modules of the model, processor and pipeline classes; they are
written flat into `OUT`, the absolute imports of the two packages rewritten into relative ones.
"""

import argparse
import ast
import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

from transformers import AutoConfig, AutoModelForSpeechSeq2Seq

from mmavsr_processing.media_constants import SAMPLING_RATE
from modeling_mmavsr.configuration_mmavsr import MMAVSRConfig
from modeling_mmavsr.modeling_mmavsr import MMAVSRForConditionalGeneration, MMAVSRModel
from modeling_mmavsr.pipeline_feature_extraction_mmavsr import MMAVSRFeatureExtractionPipeline
from modeling_mmavsr.pipeline_mmavsr import AUDIO_VISUAL_TASK, MMAVSRSpeechRecognitionPipeline, custom_pipelines_entry


# the import names of the two packages whose modules an export copies flat, and their source folders
CODE_PACKAGES = ("modeling_mmavsr", "mmavsr_processing")
# the training home: what an exported file must never import (it is not shipped)
NEVER_EXPORTED = ("mmavsr_training",)
RESULT_FILES = ("all_results.json", "eval_results.json", "test_results.json")
WER_TABLE_SUFFIX = "_wer_table.json"


class ExportError(ValueError):
    """The model folder, the code or an argument does not allow an export; the message names the file."""


def _package_dir(package: str) -> Path:
    __import__(package)
    return Path(sys.modules[package].__file__).resolve().parent


def _module_file(cls: type) -> Path:
    return Path(sys.modules[cls.__module__].__file__).resolve()


def _imported_modules(path: Path) -> list[tuple[int, str, str]]:
    """`(line, package, module)` for every import of a sibling module (`from .x import`) or of a module of
    `CODE_PACKAGES` (`from modeling_mmavsr.x import`), anywhere in the file (lazy imports inside functions too)."""
    own_package = next((p for p in CODE_PACKAGES if _package_dir(p) == path.parent), None)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        if any(name.split(".")[0] in NEVER_EXPORTED for name in names):
            raise ExportError(
                f"{path}:{node.lineno}: imports the training package {names[0].split('.')[0]}, which an export does "
                "not carry: model and processing code must not depend on training code."
            )
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in CODE_PACKAGES:
                    raise ExportError(
                        f"{path}:{node.lineno}: `import {alias.name}` cannot be made relative in a flat folder; "
                        f"write `from {alias.name.rsplit('.', 1)[0]}.<module> import <name>`."
                    )
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                found.extend((node.lineno, own_package, name) for name in names)
            elif node.level > 1:
                raise ExportError(f"{path}:{node.lineno}: imports from a parent package cannot be exported flat.")
            elif parts and parts[0] in CODE_PACKAGES:
                if len(parts) != 2:
                    raise ExportError(
                        f"{path}:{node.lineno}: `from {node.module} import ...` imports the package itself; import "
                        f"from the module that defines the name (e.g. `from {parts[0]}.<module> import ...`)."
                    )
                found.append((node.lineno, parts[0], parts[1]))
    return found


def find_code_files(entry_files: list[Path]) -> dict[str, Path]:
    """The module files the entry files need, following their imports: `{flat file name: source file}`."""
    files: dict[str, Path] = {}
    queue = [Path(f).resolve() for f in entry_files]
    while queue:
        path = queue.pop()
        if files.get(path.name) == path:
            continue
        if path.name in files:
            raise ExportError(f"{path} and {files[path.name]} would both be {path.name} in the flat export folder.")
        if path.name == "__init__.py":
            raise ExportError(f"{path}: a package's __init__ cannot be exported; import from its modules.")
        files[path.name] = path
        for line, package, module in _imported_modules(path):
            if package is None:
                raise ExportError(f"{path}:{line}: relative import outside {', '.join(CODE_PACKAGES)}.")
            target = _package_dir(package) / f"{module}.py"
            if not target.is_file():
                raise ExportError(f"{path}:{line}: imports {package}.{module}, but {target} does not exist.")
            queue.append(target)
    return dict(sorted(files.items()))


_ABSOLUTE_IMPORT = re.compile(rf"\bfrom\s+(?:{'|'.join(CODE_PACKAGES)})\.(\w+)\s+import\b")


def rewrite_imports(path: Path) -> str:
    """The source of `path` with `from modeling_mmavsr.x import` / `from mmavsr_processing.x import` made relative."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in CODE_PACKAGES:
            index = node.lineno - 1
            lines[index], count = _ABSOLUTE_IMPORT.subn(r"from .\1 import", lines[index], count=1)
            if count != 1:
                raise ExportError(f"{path}:{node.lineno}: cannot rewrite `from {node.module} import` on this line.")
    rewritten = "".join(lines)
    for node in ast.walk(ast.parse(rewritten)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in CODE_PACKAGES:
            raise ExportError(f"{path}:{node.lineno}: an absolute import of {node.module} is left after rewriting.")
    return rewritten


def write_code_files(entry_files: list[Path], output_dir: Path) -> list[str]:
    """Write the code the entry files need flat into `output_dir` (imports made relative); returns the file names."""
    files = find_code_files(entry_files)
    for name, path in files.items():
        (output_dir / name).write_text(rewrite_imports(path), encoding="utf-8")
    return list(files)


@contextlib.contextmanager
def auto_classes(registrations: list[tuple[type, str]]):
    """`register_for_auto_class` for the duration of a save: the registration is a class attribute, and other saves
    in the same process must not write `auto_map` or copy code."""
    previous = [(cls, cls.__dict__.get("_auto_class")) for cls, _ in registrations]
    try:
        for cls, auto_class in registrations:
            cls.register_for_auto_class(auto_class)
        yield
    finally:
        for cls, value in previous:
            cls._auto_class = value


def _keep_generation_settings(model, model_dir: Path) -> None:
    """Carry the saved generation config's own keys (e.g. `ctc_weight`) into the export: Transformers drops the keys
    it does not know from a `generation_config.json` marked `_from_model_config`."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return
    for key, value in json.loads(path.read_text()).items():
        if not key.startswith("_") and not hasattr(model.generation_config, key):
            setattr(model.generation_config, key, value)
    model.generation_config._from_model_config = False


def load_processor(model_dir: Path, processor_dir: Path | None):
    from mmavsr_processing.processing_mmavsr import MMAVSRProcessor

    source = processor_dir or model_dir
    if not (source / "processor_config.json").is_file():
        raise ExportError(
            f"{source}: no processor_config.json; save the MMAVSRProcessor with the model "
            "(processor.save_pretrained(DIR)) or give --processor."
        )
    return MMAVSRProcessor.from_pretrained(source)


def processor_registrations(processor) -> list[tuple[type, str]]:
    """The processor and its MMAVSR parts, with their auto classes (a decoder's own tokenizer needs none)."""
    from mmavsr_processing.tokenization_mmavsr import MMAVSRTokenizer

    registrations = [
        (type(processor), "AutoProcessor"),
        (type(processor.feature_extractor), "AutoFeatureExtractor"),
        (type(processor.video_processor), "AutoVideoProcessor"),
    ]
    if isinstance(processor.tokenizer, MMAVSRTokenizer):
        registrations.append((type(processor.tokenizer), "AutoTokenizer"))
    return registrations


# -- model card ----------------------------------------------------------------------------------------------------


def read_metrics(files: list[Path]) -> list[tuple[str, object]]:
    """`(file stem, content)` of result JSON files: Trainer results (`{name: value}`) or WER tables (rows)."""
    metrics = []
    for path in files:
        try:
            content = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ExportError(f"{path}: cannot read metrics ({error}).") from error
        if not isinstance(content, (dict, list)):
            raise ExportError(f"{path}: expected a JSON object of results or a list of WER table rows.")
        metrics.append((Path(path).stem, content))
    return metrics


def _metrics_section(metrics: list[tuple[str, object]]) -> str:
    if not metrics:
        return "No evaluation results were given to this export (`--metrics`): none are claimed here.\n"
    parts = []
    for name, content in metrics:
        if isinstance(content, list):
            rows = ["| condition | SNR (dB) | WER (%) | utterances |", "| --- | ---: | ---: | ---: |"]
            for row in content:
                snr = row.get("snr")
                snr_text = "clean" if snr is None or snr >= 999999 else f"{snr:g}"
                rows.append(
                    f"| {row.get('condition', '')} | {snr_text} | {row.get('wer', float('nan')):.2f} | "
                    f"{row.get('utterances', '')} |"
                )
            parts.append(f"`{name}`:\n\n" + "\n".join(rows) + "\n")
        else:
            rows = ["| metric | value |", "| --- | ---: |"]
            rows += [
                f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                for key, value in content.items()
                if isinstance(value, (int, float))
            ]
            parts.append(f"`{name}`:\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def _hub_ids(config: MMAVSRConfig) -> list[str]:
    names = (config.vision_model_name, config.audio_model_name, config.decoder_model_name)
    return [n for n in names if n and not Path(n).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", n)]


# pip names of the import names the code files use, where they differ
PIP_NAMES = {"cv2": "opencv-python-headless", "sklearn": "scikit-learn"}


def code_requirements(code_dir: Path) -> list[str]:
    """The packages the exported code files import, as Transformers checks them before loading remote code."""
    from transformers.dynamic_module_utils import get_imports

    imports = {name for path in sorted(code_dir.glob("*.py")) for name in get_imports(path)}
    return sorted(PIP_NAMES.get(name, name) for name in imports - set(sys.stdlib_module_names))


def model_card(
    model: MMAVSRForConditionalGeneration,
    repo_id: str,
    metrics,
    requirements: list[str] = (),
    license: str = "apache-2.0",
) -> str:
    """A README.md with Hub metadata, usage, the configuration and the given metrics."""
    config, generation = model.config, model.generation_config
    task = {
        "video": "lip reading (VSR)",
        "audio": "speech recognition (ASR)",
        "audiovisual": "audio-visual speech recognition (AVSR)",
    }[config.modality]
    example_input = '"speaker.wav"' if config.modality == "audio" else '"speaker.mp4"'
    processor_arguments = ", ".join(
        [
            *([f"audio=wave, sampling_rate={SAMPLING_RATE}"] if config.audio_encoder else []),
            *(["videos=mouth_frames"] if config.vision_encoder else []),
        ]
    )
    base_models = _hub_ids(config)
    metadata = [
        "---",
        "library_name: transformers",
        f"license: {license}",
        "pipeline_tag: automatic-speech-recognition",
        "tags:",
        "- mmavsr",
        f"- {AUDIO_VISUAL_TASK}",
        *(["- lip-reading"] if config.vision_encoder else []),
        *(["base_model:", *(f"- {name}" for name in base_models)] if base_models else []),
        "---",
    ]

    def named(choice, name):
        return f"`{choice}` ({name})" if name else f"`{choice}`"

    rows = [
        ("task", task),
        ("vision encoder", named(config.vision_encoder, config.vision_model_name) if config.vision_encoder else "none"),
        ("audio encoder", named(config.audio_encoder, config.audio_model_name) if config.audio_encoder else "none"),
        *([("fusion", f"`{config.fusion_type}`")] if config.modality == "audiovisual" else []),
        (
            "Conformer",
            f"{config.encoder_layers} layers, width {config.hidden_size}, {config.encoder_attention_heads} "
            f"heads, feed-forward {config.encoder_ffn_dim}, kernel {config.conv_kernel_size}",
        ),
        (
            "decoder",
            named(config.decoder_type, config.decoder_model_name)
            + f", {config.text_config.num_hidden_layers} layers, vocabulary {config.vocab_size}",
        ),
        ("CTC weight (training)", f"{config.ctc_weight:g}"),
        ("decoding", f"beam {generation.num_beams or 1}, CTC weight {getattr(generation, 'ctc_weight', 0.0) or 0.0:g}"),
        ("parameters", f"{model.num_parameters():,}"),
    ]
    table = "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])
    return (
        "\n".join(metadata)
        + f"""

# {repo_id}

An mmavsr model for {task}: encoders, a Conformer and an attention decoder trained with the hybrid CTC/attention
recipe of [auto_avsr](https://github.com/mpc001/auto_avsr). The code ships with the weights: load it with
`trust_remote_code=True`.

## Usage

The code files import {", ".join(f"`{name}`" for name in requirements) or "nothing beyond Transformers"}
(`pip install {" ".join(requirements)}`); cropping the mouth from full-face videos needs `opencv-python-headless`.

```python
from transformers import pipeline

transcriber = pipeline("automatic-speech-recognition", model="{repo_id}", trust_remote_code=True)
print(transcriber({example_input})["text"])
```

Videos are decoded with their audio track; frames larger than 128x128 pixels are taken as full faces and the mouth
is cropped (OpenCV), smaller ones are taken as 96x96 mouth crops already (`crop_mouth=True/False` forces either).
Audio: a file, or a 16 kHz array; long audio with `chunk_length_s=...`.

```python
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModelForSpeechSeq2Seq.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor({processor_arguments})
print(processor.batch_decode(model.generate(**inputs)))
```

## Configuration

{table}

## Evaluation

{_metrics_section(metrics)}"""
    )


# -- export and push -------------------------------------------------------------------------------------------------


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    processor_dir: str | Path | None = None,
    metrics_files: list[str | Path] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> Path:
    """Write the model, its processor, the code files (`auto_map`, `custom_pipelines`) and a README.md into
    `output_dir`. Metrics come from `metrics_files`, else from the Trainer's result files in `model_dir`."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: no config.json (not a save_pretrained model folder).")
    config = AutoConfig.from_pretrained(model_dir)
    if not isinstance(config, MMAVSRConfig):
        raise ExportError(f"{model_dir}: holds a {type(config).__name__} model, not an MMAVSR one.")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{output_dir}: exists and is not empty (pass overwrite=True / --overwrite).")
        shutil.rmtree(output_dir)
    if output_dir.resolve() == model_dir.resolve():
        raise ExportError(f"{output_dir}: the export must go to another folder than the model.")
    processor = load_processor(model_dir, Path(processor_dir) if processor_dir else None)
    model = MMAVSRForConditionalGeneration.from_pretrained(model_dir)
    _keep_generation_settings(model, model_dir)
    if metrics_files is None:
        metrics_files = [model_dir / name for name in RESULT_FILES if (model_dir / name).is_file()]
        metrics_files += sorted(model_dir.glob(f"*{WER_TABLE_SUFFIX}"))
    metrics = read_metrics([Path(f) for f in metrics_files])

    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = {"AutoModel": f"{_module_file(MMAVSRModel).stem}.{MMAVSRModel.__name__}"}
    model.config.custom_pipelines = custom_pipelines_entry()
    registrations = [
        (MMAVSRConfig, "AutoConfig"),
        (MMAVSRForConditionalGeneration, AutoModelForSpeechSeq2Seq.__name__),
        *processor_registrations(processor),
    ]
    with auto_classes(registrations):
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    entry_files = [_module_file(cls) for cls, _ in registrations]
    entry_files += [
        _module_file(cls) for cls in (MMAVSRModel, MMAVSRSpeechRecognitionPipeline, MMAVSRFeatureExtractionPipeline)
    ]
    write_code_files(entry_files, output_dir)
    requirements = code_requirements(output_dir)
    card = model_card(model, repo_id or output_dir.name, metrics, requirements=requirements, license=license)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return output_dir


def push_to_hub(output_dir: str | Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create the Hub repository (if needed) and upload the export folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        folder_path=str(output_dir), repo_id=repo_id, repo_type="model", commit_message="Upload MMAVSR model"
    )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained folder of the MMAVSR model")
    parser.add_argument("--output-dir", required=True, help="folder to write the export into")
    parser.add_argument("--processor", help="folder of the MMAVSRProcessor (default: --model)")
    parser.add_argument("--metrics", nargs="+", help="result JSON files for the model card (default: those in --model)")
    parser.add_argument("--license", default="apache-2.0", help="license named in the model card")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--push-to-hub", metavar="REPO", help="Hub repository id to upload the export to")
    parser.add_argument("--token", help="Hub token with write access (needed by --push-to-hub)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.token:
        parser.error("--push-to-hub needs --token (a Hub token with write access).")
    try:
        output_dir = export_model(
            args.model, args.output_dir, args.processor, args.metrics, args.push_to_hub, args.license, args.overwrite
        )
    except (ExportError, FileNotFoundError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Exported {args.model} to {output_dir}")
    if args.push_to_hub:
        print(f"Pushed to {args.push_to_hub}: {push_to_hub(output_dir, args.push_to_hub, args.token, args.private)}")
    return output_dir


if __name__ == "__main__":
    main()


__all__ = ["ExportError", "export_model", "find_code_files", "rewrite_imports", "model_card", "push_to_hub"]
