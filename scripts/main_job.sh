#!/usr/bin/env bash
# The main job: on a fresh machine, install what mmavsr needs, generate the demo corpus (GRID-style flite speech and
# rendered mouth videos in auto_avsr's layout), train the small demo models of hub_configs/ for video-only (VSR),
# audio-only (ASR) and audio-visual (AVSR) input, and print their test WER, clean and with 0 dB babble noise.
#   bash scripts/main_job.sh                 # everything, in main_job/ (about 20 minutes on 2 CPU cores)
#   SKIP_INSTALL=1 bash scripts/main_job.sh  # reuse .venv
# Environment: MAIN_JOB_DIR (default main_job), DEMO_CLIPS (corpus size), SKIP_INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${MAIN_JOB_DIR:-main_job}
CLIPS=${DEMO_CLIPS:-600}
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash scripts/install.sh
fi
. .venv/bin/activate
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)

if [ ! -f "$WORK/corpus/labels/test.csv" ]; then
    python -m mmavsr_processing.demo_corpus --output-dir "$WORK/corpus" --num-clips "$CLIPS"
fi
echo "demo corpus ready after $(( $(date +%s) - start )) s"

# flags shared by the three runs: auto_avsr's layout and flags, babble noise in training, beam search at test time
common=(
    --root-dir "$WORK/corpus" --train-file train.csv --test-file test.csv
    --train_vocabulary_size 64 --train_vocabulary_type word
    --train-snr -5 0 5 10 999999 --decode-snr-target 999999 0
    --per_device_train_batch_size 16 --per_device_eval_batch_size 32 --generation_num_beams 4
    --lr_scheduler_type cosine --warmup_steps 0.1 --weight_decay 0.01 --adam_beta2 0.98 --max_grad_norm 5
    --save_strategy epoch --save_total_limit 2 --logging_steps 10 --seed 0 --dataloader_num_workers 0
)
python run_speech_recognition_avsr.py --config_name demo-asr-resnet1d --exp-dir "$WORK/exp" --exp-name asr \
    --max-epochs 6 --lr 2e-3 "${common[@]}"
python run_speech_recognition_avsr.py --config_name demo-vsr-resnet --exp-dir "$WORK/exp" --exp-name vsr \
    --max-epochs 6 --lr 2e-3 "${common[@]}"
python run_speech_recognition_avsr.py --config_name demo-avsr-resnet --exp-dir "$WORK/exp" --exp-name avsr \
    --max-epochs 6 --lr 2e-3 "${common[@]}"

python scripts/wer_summary.py "$WORK/exp" vsr asr avsr | tee "$WORK/wer_table.md"
echo "main job done in $(( $(date +%s) - start )) s (after installing)"
