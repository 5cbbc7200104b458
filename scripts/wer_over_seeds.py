"""Print the mean and spread of test WER over several runs of the same job (one main-job folder per seed): a row per
model, a column per test condition, each cell "mean ± standard deviation (min-max)" over the folders.

    python scripts/wer_over_seeds.py [--runs asr,vsr,avsr] JOB_DIR [JOB_DIR ...]

JOB_DIR: a main job's folder (MAIN_JOB_DIR, holding exp/RUN/test_wer_table.json) or its exp folder."""

import argparse
import json
import statistics
from pathlib import Path


def read_table(job_dir: Path, run: str) -> dict[str, float]:
    for exp in (job_dir / "exp", job_dir):
        path = exp / run / "test_wer_table.json"
        if path.is_file():
            return {row["condition"]: row["wer"] for row in json.loads(path.read_text())}
    raise SystemExit(
        f"wer_over_seeds.py: {job_dir} has no {run}/test_wer_table.json (nor exp/{run}/...): is that run finished?"
    )


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="asr,vsr,avsr", help="the models (exp/ subfolders), comma-separated")
    parser.add_argument("job_dirs", nargs="+", type=Path, help="one job folder per seed")
    args = parser.parse_args()
    tables = {run: [read_table(job_dir, run) for job_dir in args.job_dirs] for run in args.runs.split(",")}
    conditions = list(next(iter(tables.values()))[0])
    print(f"WER (%) over {len(args.job_dirs)} runs: mean ± standard deviation (min-max)")
    print("| model | " + " | ".join(conditions) + " |")
    print("| --- |" + " ---: |" * len(conditions))
    for run, per_job in tables.items():
        missing = [str(job) for job, table in zip(args.job_dirs, per_job) if set(table) != set(conditions)]
        if missing:
            raise SystemExit(f"wer_over_seeds.py: {run} was tested on other conditions in {', '.join(missing)}")
        print(f"| {run} | " + " | ".join(cell([table[c] for table in per_job]) for c in conditions) + " |")


if __name__ == "__main__":
    main()
