"""Print one WER table (rows: runs, columns: test conditions) from the runs' test_wer_table.json files, and plot WER
against the SNR, one line per run, as EXP_DIR/wer_vs_snr.png."""

import json
import sys
from pathlib import Path

from mmavsr_training.evaluation import plot_wer_tables


def main(exp_dir: str, runs: list[str]) -> None:
    tables = {run: json.loads((Path(exp_dir) / run / "test_wer_table.json").read_text()) for run in runs}
    conditions = [row["condition"] for row in next(iter(tables.values()))]
    print("| model | " + " | ".join(f"{c} WER (%)" for c in conditions) + " | test utterances |")
    print("| --- |" + " ---: |" * (len(conditions) + 1))
    for run, rows in tables.items():
        wers = {row["condition"]: row["wer"] for row in rows}
        cells = " | ".join(f"{wers[c]:.1f}" if c in wers else "-" for c in conditions)
        print(f"| {run} | {cells} | {rows[0]['utterances']} |")
    plot = plot_wer_tables(tables, Path(exp_dir) / "wer_vs_snr.png", title="Test WER against babble noise")
    print(f"\nplot: {plot}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/wer_summary.py EXP_DIR RUN [RUN ...]")
    main(sys.argv[1], sys.argv[2:])
