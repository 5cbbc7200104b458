#!/usr/bin/env bash
# Evaluate the main job's models on another demo corpus's test split (cross-variant rows of a WER-by-variant table),
# with the main job's decoding flags (joint CTC 0.3, 4 beams, clean and 0 dB babble), and print a WER table.
#   bash scripts/cross_variant_eval.sh EXP_DIR CORPUS_DIR OUT_DIR
# EXP_DIR: a main job's exp folder (main_job/exp, holding asr, vsr, avsr); CORPUS_DIR: a demo corpus with
# labels/test.csv (e.g. `python -m mmavsr_processing.demo_corpus --output-dir DIR --num-clips 1600 --variant
# espeak-contour --splits test`). Environment: RUNS (default "asr vsr avsr"). Finished runs are kept on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 3 ]; then
    echo "usage: bash scripts/cross_variant_eval.sh EXP_DIR CORPUS_DIR OUT_DIR" >&2
    exit 2
fi
exp=$1 corpus=$2 out=$3
if [ ! -f "$corpus/labels/test.csv" ]; then
    echo "cross_variant_eval.sh: $corpus/labels/test.csv not found (make the corpus's test split first)" >&2
    exit 2
fi
. .venv/bin/activate
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
start=$(date +%s)
for name in ${RUNS:-asr vsr avsr}; do
    if [ -f "$out/$name/test_wer_table.json" ]; then
        continue
    fi
    python run_speech_recognition_avsr.py --pretrained-model-path "$exp/$name" --root-dir "$corpus" \
        --test-file test.csv --output_dir "$out/$name" --decode-snr-target 999999 0 --decode_ctc_weight 0.3 \
        --generation_num_beams 4 --per_device_eval_batch_size 32 --dataloader_num_workers 0 --seed 0 \
        > "$out/$name.log" 2>&1 || { tail -n 30 "$out/$name.log"; exit 1; }
    echo "$name evaluated after $(( $(date +%s) - start )) s"
done
python scripts/wer_summary.py "$out" ${RUNS:-asr vsr avsr} | tee "$out/wer_table.md"
