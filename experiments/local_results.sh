#!/usr/bin/env bash
# The local results table in one command:
#   bash experiments/local_results.sh [ADAPTER_DIR]      (or: make results ADAPTER=...)
# Evaluates the untrained default model, the default model + ADAPTER (default: the newest
# logs/text_only/runs/*/adapters/last), and all-MiniLM-L6-v2 (text sets) on every benchmark complete
# in the shared data (conf/eval/local_full.yaml), then writes experiments/results/local_table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
adapter=${1:-$(ls -d logs/text_only/runs/*/adapters/last 2>/dev/null | sort | tail -n 1)}
out=logs/eval/local_results
mkdir -p "$out" experiments/results
$PY src/eval.py eval=local_full hydra.run.dir="$out/untrained" progress=false
if [[ -n "$adapter" ]]; then
  $PY src/eval.py eval=local_full adapter="$adapter" hydra.run.dir="$out/trained" progress=false
else
  echo "no trained adapter found (run make train first); skipping the trained row" >&2
fi
$PY src/eval.py eval=local_full model=minilm hydra.run.dir="$out/minilm" progress=false
$PY experiments/results_table.py "$out"/*/results.json --out experiments/results/local_table.md
cat experiments/results/local_table.md
