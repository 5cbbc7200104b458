#!/usr/bin/env bash
# The GPU suite in one call: training throughput against auto_avsr's own code (released VSR size, bf16, SDPA),
# batched beam-40 + CTC decoding of 1,321 utterances of LRS3 test lengths, peak GPU memory of 7B QLoRA training, and
# the LLM decoder's speed at each compression rate, printed as one table (row, measured, goal, status). Random weights
# everywhere; nothing is downloaded.
#   bash benchmarks/gpu_suite.sh                          # full sizes on CUDA; tiny CPU sizes without CUDA
#   AUTO_AVSR=/path/to/auto_avsr bash benchmarks/gpu_suite.sh   # or --auto-avsr PATH: the auto_avsr comparison
#   bash benchmarks/gpu_suite.sh --tiny                   # CPU sizes (what CI runs, tests/test_gpu_suite.py)
# Flags (python benchmarks/gpu_suite.py --help for all): --tiny, --auto-avsr PATH, --rows, --precision bf16|fp32,
# --train-batch/--train-seconds/--train-steps/--train-warmup, --utterances, --beam, --ctc-weight, --decode-batch-size,
# --tokens-per-second, --qlora-steps, --rates, --llm-seconds/--llm-steps/--llm-new-tokens, --threads, --row-timeout,
# --fail-on-missed. Environment: AUTO_AVSR (the checkout), PYTHON (default .venv/bin/python when present, else python).
# Without an auto_avsr checkout the training row says auto_avsr was not run. Exit status: 1 when a row failed, 3 with
# --fail-on-missed when a goal was missed, else 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
