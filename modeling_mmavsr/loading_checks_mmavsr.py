"""Naming the file when a model folder's weights cannot be loaded: `MMAVSRPreTrainedModel.from_pretrained` runs inside
[`name_unusable_weights`], which turns safetensors' bare "incomplete metadata" and torch's long `weights_only`
refusal into errors that name the weight file and say what is wrong with it:

- a truncated or corrupt `*.safetensors` -> [`CorruptWeightsError`] (an `OSError`), e.g. `model.safetensors holds
  182532 bytes but its header describes 365064 (cut short: an interrupted download or copy?)`;
- a pickle `*.bin` whose unpickling would call code -> [`UnsafeCheckpointError`], naming the
  globals it needs (it is never unpickled: torch's `weights_only` loader refused it, this reads its opcodes only);
- a `*.bin` that is not a readable `torch.save` archive (cut short) -> [`CorruptWeightsError`].
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open


__all__ = [
    "CorruptWeightsError",
    "UnsafeCheckpointError",
    "name_unusable_weights",
    "pickle_problem",
    "safetensors_problem",
]

# safetensors' layout: an 8-byte little-endian header length, the JSON header, then the tensors' bytes
SAFETENSORS_LENGTH_BYTES = 8


class CorruptWeightsError(OSError):
    """A model's weight file is truncated or corrupt; the message names it."""


class UnsafeCheckpointError(ValueError):
    """A weight or checkpoint file needs Python objects beyond tensors and plain containers to be unpickled."""


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a `.safetensors` file (cut short, a broken header, or safetensors' own complaint), or None
    when it opens. Reads the header only."""
    path = Path(path)
    size = path.stat().st_size
    if size < SAFETENSORS_LENGTH_BYTES:
        return f"holds {size} bytes, fewer than a safetensors header's length field (empty or cut short)"
    with path.open("rb") as handle:
        (header_bytes,) = struct.unpack("<Q", handle.read(SAFETENSORS_LENGTH_BYTES))
        if SAFETENSORS_LENGTH_BYTES + header_bytes > size:
            return (
                f"holds {size} bytes but its header alone claims {header_bytes} (cut short, or not a safetensors file)"
            )
        try:
            header = json.loads(handle.read(header_bytes))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            return f"its header is not safetensors' JSON ({type(error).__name__}: {error})"
    expected = SAFETENSORS_LENGTH_BYTES + header_bytes + end
    if size < expected:
        return f"holds {size} bytes but its header describes {expected} (cut short: an interrupted download or copy?)"
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        return f"corrupt ({error})"
    return None


def pickle_problem(path: str | os.PathLike) -> str | None:
    """Why torch's `weights_only` loader refuses a `torch.save` file (the globals its pickle needs, or not an archive
    it can read), or None. Reads the pickle's opcodes without running them."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        return f"not a readable `torch.save` archive (cut short or not PyTorch weights: {first})"
    if unsafe:
        return (
            f"its pickle needs {', '.join(sorted(unsafe))}: code, not tensors, which `torch.load(weights_only=True)` "
            "refuses (loading it could run arbitrary code)"
        )
    return None


def _weight_files(name_or_path, pattern: str) -> list[Path]:
    folder = Path(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    return sorted(folder.glob(pattern)) if folder is not None and folder.is_dir() else []


def _first_problem(name_or_path, pattern: str, check) -> tuple[Path, str] | None:
    for path in _weight_files(name_or_path, pattern):
        problem = check(path)
        if problem:
            return path, problem
    return None


@contextlib.contextmanager
def name_unusable_weights(name_or_path):
    """Around `from_pretrained(name_or_path)`: a safetensors or pickle error while reading weights is raised again
    naming the weight file and what is wrong (found by checking the folder's `*.safetensors` / `*.bin` files; for a
    Hub id, the model is named instead)."""
    try:
        yield
    except SafetensorError as error:
        found = _first_problem(name_or_path, "*.safetensors", safetensors_problem)
        where, problem = found if found else (f"{name_or_path} (a .safetensors weight file)", f"corrupt ({error})")
        raise CorruptWeightsError(
            f"{where}: cannot load the model's weights: the file {problem}. Download or copy it again."
        ) from error
    except pickle.UnpicklingError as error:
        found = _first_problem(name_or_path, "*.bin", pickle_problem)
        if found is None:
            needs = re.search(r"GLOBAL (\S+)", str(error))
            found = (
                f"{name_or_path} (a pickle weight file)",
                f"its pickle needs {needs.group(1) if needs else 'objects beyond tensors'}, which "
                "`torch.load(weights_only=True)` refuses (loading it could run arbitrary code)",
            )
        path, problem = found
        if problem.startswith("not a readable"):
            raise CorruptWeightsError(f"{path}: cannot load the model's weights: {problem}.") from None
        raise UnsafeCheckpointError(
            f"{path}: refused to load: {problem}. Models saved with save_pretrained hold model.safetensors: use one "
            "of those, or re-save the weights as safetensors where you trust the file."
        ) from None
    except RuntimeError as error:
        found = _first_problem(name_or_path, "*.bin", pickle_problem) if "PytorchStreamReader" in str(error) else None
        if found is None:
            raise
        raise CorruptWeightsError(f"{found[0]}: cannot load the model's weights: {found[1]}.") from error
