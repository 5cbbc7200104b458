"""The one boundary of the layout: the flat model folder ships to the Hub whole, the training home never does, and the
model and data packages never import training or command-line code."""

import ast
import re
from pathlib import Path

import pytest

import mmavsr_processing
import modeling_mmavsr
from mmavsr_training.export import ExportError, export_model, find_code_files
from modeling_mmavsr import MMAVSRForConditionalGeneration, MMAVSRProcessor

from .common import tiny_config


MODEL_DIR = Path(modeling_mmavsr.__file__).parent
PROCESSING_DIR = Path(mmavsr_processing.__file__).parent
# what code that ships or reads data must not import: the training home and command-line parsing
TRAINING_OR_CLI = ("mmavsr_training", "argparse", "run_speech_recognition_avsr")
CLI_NAMES = ("HfArgumentParser", "ArgumentParser")
AUTO_AVSR_TEXT = dict(vocab_size=5049, bos_token_id=5048, eos_token_id=5048, decoder_start_token_id=5048)


def imported_names(path: Path) -> list[tuple[int, str]]:
    """`(line, name)` of every absolute import and every imported name in a file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_every_module_of_the_model_folder_ships_with_an_export(tmp_path):
    model = MMAVSRForConditionalGeneration(tiny_config("audio", text_config=AUTO_AVSR_TEXT))
    model.save_pretrained(tmp_path / "model")
    MMAVSRProcessor.from_auto_avsr().save_pretrained(tmp_path / "model")
    exported = export_model(tmp_path / "model", tmp_path / "export")
    shipped = {path.name for path in exported.glob("*.py")}
    modules = {path.name for path in MODEL_DIR.glob("*.py")} - {"__init__.py"}
    assert modules, MODEL_DIR
    assert modules - shipped == set(), "modules of modeling_mmavsr/ that an export does not carry"


def offending_imports(folder: Path, forbidden: tuple[str, ...], names: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{path.name}:{line} imports {name}"
        for path in sorted(folder.glob("*.py"))
        for line, name in imported_names(path)
        if name.split(".")[0] in forbidden or name in names
    ]


def test_model_code_never_imports_training_or_cli_code():
    assert offending_imports(MODEL_DIR, TRAINING_OR_CLI, CLI_NAMES) == []


def test_data_code_never_imports_training_code():
    assert offending_imports(PROCESSING_DIR, ("mmavsr_training", "run_speech_recognition_avsr")) == []


def test_the_exporter_refuses_code_that_imports_the_training_home(tmp_path):
    module = tmp_path / "modeling_extra.py"
    module.write_text("def build():\n    from mmavsr_training.builder import build_model\n    return build_model\n")
    with pytest.raises(ExportError, match=r"modeling_extra.py:2: imports the training package mmavsr_training"):
        find_code_files([module])


# the data side's command-line programs, whose parsers still live beside their library code (issue 35: to move into
# the training home with the other command lines); every other module is a library that never speaks in flags
DATA_COMMANDS = ("demo_corpus.py", "demo_tts.py", "prepare.py")


def test_the_data_library_takes_typed_values_not_the_scripts_arguments():
    script_arguments = {"data_args", "training_args", "model_args"}
    offending = [
        f"{path.name}:{node.lineno} {node.name}({', '.join(sorted(script_arguments & names))})"
        for path in sorted(PROCESSING_DIR.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for names in [{arg.arg for arg in node.args.args + node.args.kwonlyargs}]
        if script_arguments & names
    ]
    assert offending == []


def test_the_data_library_words_no_error_as_a_command_line_flag():
    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]+")
    offending = []
    for path in sorted(PROCESSING_DIR.glob("*.py")):
        if path.name in DATA_COMMANDS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = " ".join(
                    part.value
                    for part in ast.walk(node.exc)
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                )
                offending += [f"{path.name}:{node.lineno} {found}" for found in flag.findall(text)]
    assert offending == []
