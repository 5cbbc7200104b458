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
python -m pip install -q --upgrade pip
# torch/torchvision first: pip takes the known-good 2.14.1 / 0.29.1 from the local wheel cache
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[test]"
