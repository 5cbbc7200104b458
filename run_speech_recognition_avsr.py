#!/usr/bin/env python
"""Train, evaluate and decode MMAVSR models (lip reading, speech recognition, audio-visual) with `Seq2SeqTrainer`.

Arguments are `ModelArguments`, `DataTrainingArguments` and `AVSRTrainingArguments` (a `Seq2SeqTrainingArguments`),
given on the command line or as one JSON/YAML file. auto_avsr's flags work as written in its README:

    python run_speech_recognition_avsr.py --exp-dir=exp --exp-name=vsr --modality=video --root-dir=DATA \
        --train-file=train.csv --num-nodes=1                                            # = auto_avsr's train.py
    python run_speech_recognition_avsr.py --modality=video --root-dir=DATA --test-file=test.csv \
        --pretrained-model-path=exp/vsr/model_avg_10                                   # = auto_avsr's eval.py

Without `--do_train/--do_eval/--do_predict`, the flags choose: a `--train-file` trains (then evaluates `--val-file`
and `--test-file` when given); otherwise the `--val-file` and/or `--test-file` given are evaluated (`eval_*` and
`test_*` results).

Rerunning a command resumes its training from the newest complete checkpoint in the output folder. SIGTERM saves a
checkpoint after the step under way and exits with status 143; checkpoints are written atomically. Launch with
`torchrun` or `accelerate launch` for several processes. See docs/distributed_and_reliability.md.

The work is done by the training package `mmavsr_training` (`run.main`: the numbered steps; `arguments`:
every flag; `builder`: model and processor; `trainer`: the Trainer, SIGTERM; `checkpointing`: resume, averaging;
`evaluation`: WER, SNR tables) and by the data package `mmavsr_processing` (`label_files` / `hf_datasets`: label CSVs
or a `datasets` dataset as splits, the training set; `augmentation`: noise and masks).
"""

from mmavsr_training.run import cli


if __name__ == "__main__":
    cli()
