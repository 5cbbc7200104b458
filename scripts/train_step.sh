# The training step shared by scripts/main_job.sh and scripts/llm_job.sh; source it after setting WORK (the job's
# folder), start (its start time, date +%s) and the array `common` (flags every run of the job takes).
# The training recipe (epochs, learning rate, batch size, ...) is the preset's "training" section; EPOCHS, when not
# empty, overrides its epochs (the jobs' *_EPOCHS variables), and so do the extra flags whatever they name.
train() {  # NAME PRESET EPOCHS [extra flags]: skipped when NAME already has its WER table
    local name=$1 preset=$2 epochs=$3
    shift 3
    if [ -f "$WORK/exp/$name/test_wer_table.json" ]; then
        echo "$name: already trained and evaluated"
        return
    fi
    python run_speech_recognition_avsr.py --config_name "$preset" --exp-name "$name" \
        ${epochs:+--max-epochs "$epochs"} "${common[@]}" "$@" > "$WORK/$name.log" 2>&1 \
        || { tail -n 30 "$WORK/$name.log"; return 1; }
    echo "$name done after $(( $(date +%s) - start )) s (log: $WORK/$name.log)"
}
