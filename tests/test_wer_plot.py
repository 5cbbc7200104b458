"""The WER-against-SNR plot of the evaluation and the main job's summary: a PNG with one line per model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from mmavsr_training.evaluation import plot_wer_tables


ROOT = Path(__file__).resolve().parent.parent


def rows(wers: dict) -> list[dict]:
    return [
        {"snr": snr, "condition": "clean" if snr >= 999999 else f"snr{snr:g}", "wer": wer, "utterances": 10}
        for snr, wer in wers.items()
    ]


# matplotlib's first two line colours (C0 blue, C1 orange)
LINE_COLOURS = {"first": (0x1F, 0x77, 0xB4), "second": (0xFF, 0x7F, 0x0E)}


def pixels_of(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    """How many pixels of `image` have (nearly) `colour`."""
    return int((np.abs(image[..., :3] - np.array(colour) / 255).max(axis=-1) < 0.05).sum())


def test_plot_draws_one_line_per_model(tmp_path):
    one = plot_wer_tables({"asr": rows({999999: 8.0, 0: 70.0})}, tmp_path / "one.png")
    two = plot_wer_tables(
        {"asr": rows({999999: 8.0, 0: 70.0}), "avsr": rows({999999: 12.0, 5: 14.0, 0: 16.0})}, tmp_path / "two.png"
    )
    assert one == tmp_path / "one.png" and one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image_one, image_two = imread(one), imread(two)
    assert image_one.shape == image_two.shape and image_one.shape[0] > 300
    # one line (and legend entry) per model, each in its own colour
    assert pixels_of(image_one, LINE_COLOURS["first"]) > 100 and pixels_of(image_one, LINE_COLOURS["second"]) == 0
    assert pixels_of(image_two, LINE_COLOURS["first"]) > 100 and pixels_of(image_two, LINE_COLOURS["second"]) > 100


def test_plot_refuses_an_empty_table(tmp_path):
    with pytest.raises(ValueError, match="at least one model"):
        plot_wer_tables({"asr": []}, tmp_path / "empty.png")


def test_wer_summary_prints_the_table_and_writes_the_plot(tmp_path):
    for run, wers in {"asr": {999999: 8.1, 0: 72.4}, "avsr": {999999: 12.9, 0: 16.2}}.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "test_wer_table.json").write_text(json.dumps(rows(wers)))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wer_summary.py"), str(tmp_path), "asr", "avsr"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| asr | 8.1 | 72.4 | 10 |" in result.stdout and "| avsr | 12.9 | 16.2 | 10 |" in result.stdout
    assert imread(tmp_path / "wer_vs_snr.png").shape[0] > 300


def test_wer_over_seeds_prints_mean_and_spread_per_model(tmp_path):
    seeds = {"seed0": {999999: 8.0, 0: 70.0}, "seed1": {999999: 6.0, 0: 74.0}, "seed2": {999999: 10.0, 0: 72.0}}
    for job, wers in seeds.items():
        (tmp_path / job / "exp" / "asr").mkdir(parents=True)
        (tmp_path / job / "exp" / "asr" / "test_wer_table.json").write_text(json.dumps(rows(wers)))
    script = str(ROOT / "scripts" / "wer_over_seeds.py")
    result = subprocess.run(
        [sys.executable, script, "--runs=asr", *(str(tmp_path / job) for job in seeds)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| model | clean | snr0 |" in result.stdout
    assert "| asr | 8.0 ± 2.0 (6.0-10.0) | 72.0 ± 2.0 (70.0-74.0) |" in result.stdout
    # a run missing from one of the folders is named, not skipped
    missing = subprocess.run(
        [sys.executable, script, "--runs=asr,vsr", str(tmp_path / "seed0")], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "has no vsr/test_wer_table.json" in missing.stderr
