"""`bash benchmarks/gpu_suite.sh --tiny` runs on the CPU and prints its one table: every row with a figure, and the
auto_avsr comparison saying it was not run when no checkout is given."""

import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+\.\d+"


def table_rows(output: str) -> dict[str, tuple[str, str, str]]:
    """The table's rows by name: (measured, goal, status)."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("row", "---"):
            rows[cells[0]] = tuple(cells[1:])
    return rows


def test_gpu_suite_tiny_prints_every_row():
    env = {key: value for key, value in os.environ.items() if key != "AUTO_AVSR"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", "--tiny", "--threads", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    assert len(rows) == 7, done.stdout  # training, decoding, QLoRA and four compression rates

    measured, goal, status = rows["training vs auto_avsr (speech s/s)"]
    assert measured.startswith("auto_avsr not run: no checkout (set AUTO_AVSR or --auto-avsr PATH)"), measured
    assert re.search(rf"MMAVSR alone {NUMBER} speech s/s", measured), measured
    assert (goal, status) == (">= 1.5x auto_avsr", "not run")

    measured, goal, status = rows["decoding 16 utterances, beam 2 + CTC (total s)"]
    assert re.match(rf"{NUMBER} s for 16 utterances", measured), measured
    assert (goal, status) == ("<= 60 s for 1321", "n/a on CPU")

    measured, goal, status = rows["7B QLoRA training peak GPU memory"]
    assert re.search(r"4-bit: True\), peak RSS \d+ MiB \(CPU process", measured), measured
    assert (goal, status) == ("<= 10 GB", "n/a on CPU")

    for rate, media_tokens in ((1, "25.0"), (2, "13.0"), (4, "7.0"), (5, "5.0")):
        measured, goal, status = rows[f"LLM decoder (tiny Llama-shaped), compression rate {rate}"]
        pattern = (
            rf"{media_tokens} LLM input tokens/s of media; training {NUMBER} speech s/s .* generation {NUMBER} tokens/s"
        )
        assert re.match(pattern, measured), measured
        assert (goal, status) == ("-", "no goal")
