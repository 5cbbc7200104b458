"""Word error rate: the Trainer's `compute_metrics` (`WERMetric`), corpus WER, decoding a split once per SNR of added
noise (`evaluate_at_snrs`, auto_avsr's `--decode-snr-target`), the WER table printed and saved per split, and its
plot against the SNR (`plot_wer_tables`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jiwer
import numpy as np

from mmavsr_processing import CLEAN_SNR, AddNoise
from mmavsr_processing.collation import MMAVSRDataCollator


SNR_NAMES = {CLEAN_SNR: "clean"}


class WERMetric:
    """compute_metrics: corpus WER in % (jiwer) of the decoded hypotheses; keeps the texts of the last call."""

    def __init__(self, processor):
        self.processor = processor
        self.references: list[str] = []
        self.hypotheses: list[str] = []

    def __call__(self, prediction):
        predictions = np.where(prediction.predictions == -100, 0, prediction.predictions)
        self.hypotheses = [text.strip() for text in self.processor.batch_decode(predictions)]
        self.references = [text.strip() for text in self.processor.batch_decode(prediction.label_ids)]
        return {"wer": 100.0 * corpus_wer(self.references, self.hypotheses)}


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word errors over reference words; an empty reference counts its hypothesis' words as insertions."""
    kept = [(r, h) for r, h in zip(references, hypotheses) if r]
    insertions = sum(len(h.split()) for r, h in zip(references, hypotheses) if not r)
    words = sum(len(r.split()) for r, _ in kept)
    if words == 0:
        return float(insertions > 0)
    output = jiwer.process_words([r for r, _ in kept], [h if h else "" for _, h in kept])
    return (output.substitutions + output.deletions + output.insertions + insertions) / words


def snr_label(snr: float) -> str:
    return SNR_NAMES.get(snr, f"snr{snr:g}")


def evaluate_at_snrs(
    trainer,
    dataset,
    snrs: list[float],
    processor,
    metric: WERMetric,
    prefix: str,
    modalities: tuple[str, ...],
    noise=None,
    gen_kwargs: dict | None = None,
    ctc_tokenizer=None,
) -> tuple[dict, list[dict], list[dict]]:
    """Decode `dataset` with `trainer` (an `AVSRSeq2SeqTrainer`: its `eval_collator` is set) once per SNR of `snrs`
    (noise added to the audio; `noise`: a wav path or an array, see `AddNoise`); `ctc_tokenizer`: the tokenizer of a
    CTC head with a vocabulary of its own. Returns the metrics (keys `{prefix}_{condition}_*` when there are several
    SNRs, `{prefix}_wer` the first one's WER), one table row per SNR and every utterance's reference and hypothesis
    per SNR."""
    metrics, rows, utterances = {}, [], []
    for snr in snrs:
        audio_augmentation = None
        if "audio" in modalities and snr < CLEAN_SNR:
            audio_augmentation = AddNoise(snr, noise=noise, seed=trainer.args.seed)
        trainer.eval_collator = MMAVSRDataCollator(
            processor,
            training=False,
            audio_augmentation=audio_augmentation,
            modalities=modalities,
            ctc_tokenizer=ctc_tokenizer,
        )
        key = prefix if len(snrs) == 1 else f"{prefix}_{snr_label(snr)}"
        result = trainer.evaluate(dataset, metric_key_prefix=key, **(gen_kwargs or {}))
        metrics.update(result)
        wer = result[f"{key}_wer"]
        rows.append({"snr": snr, "condition": snr_label(snr), "wer": wer, "utterances": len(dataset)})
        decoded = [
            {"index": i, "reference": r, "hypothesis": h}
            for i, (r, h) in enumerate(zip(metric.references, metric.hypotheses))
        ]
        utterances.append({"snr": snr, "wer": wer, "utterances": decoded})
    if len(rows) > 1:
        metrics[f"{prefix}_wer"] = rows[0]["wer"]
    return metrics, rows, utterances


def format_wer_table(rows: list[dict], title: str) -> str:
    """A Markdown table of `evaluate_at_snrs`'s rows under `title`."""
    lines = [title, "| condition | SNR (dB) | WER (%) | utterances |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        snr = "-" if row["snr"] >= CLEAN_SNR else f"{row['snr']:g}"
        lines.append(f"| {row['condition']} | {snr} | {row['wer']:.2f} | {row['utterances']} |")
    return "\n".join(lines)


def plot_wer_tables(tables: Mapping[str, list[dict]], path: str | Path, title: str = "WER against noise") -> Path:
    """A PNG of WER (%) against the test condition, one line per model: `tables` maps a model's name to its rows of
    `evaluate_at_snrs` (the `*_wer_table.json` files). The conditions run from clean to the lowest SNR, over all
    tables; a model that lacks one has a gap there. Returns `path`."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend

    if not tables or not any(tables.values()):
        raise ValueError("plot_wer_tables needs at least one model with at least one WER row.")
    snrs = sorted({row["snr"] for rows in tables.values() for row in rows}, reverse=True)
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.subplots()
    for name, rows in tables.items():
        wer_at = {row["snr"]: row["wer"] for row in rows}
        axes.plot(range(len(snrs)), [wer_at.get(snr, np.nan) for snr in snrs], marker="o", label=name)
    axes.set_xticks(range(len(snrs)), ["clean" if snr >= CLEAN_SNR else f"{snr:g} dB" for snr in snrs])
    axes.set_xlabel("babble noise (signal-to-noise ratio)")
    axes.set_ylabel("WER (%)")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_wer_table(rows: list[dict], output_dir: str | Path, prefix: str, model_name: str) -> tuple[Path, Path]:
    """`PREFIX_wer_table.json` (the rows of `evaluate_at_snrs`) and its plot `PREFIX_wer_table.png` (one line named
    `model_name`) in `output_dir`; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = output_dir / f"{prefix}_wer_table.json"
    table.write_text(json.dumps(rows, indent=2))
    return table, plot_wer_tables({model_name: rows}, output_dir / f"{prefix}_wer_table.png")


__all__ = [
    "WERMetric",
    "corpus_wer",
    "evaluate_at_snrs",
    "format_wer_table",
    "plot_wer_tables",
    "snr_label",
    "write_wer_table",
]
