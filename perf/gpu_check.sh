#!/usr/bin/env bash
# GPU checks in one go (bf16-mixed training, QLoRA 4-bit, Embedder throughput and GPU memory, the E5-V
# reference in fp16, 2-process DDP): see perf/gpu_check.py. About 5 minutes on one GPU.
#
#   bash perf/gpu_check.sh [report.json]      # default report: gpu_check.json
#
# Needs the project's environment with a CUDA build of torch (PY=... to pick the interpreter; default
# .venv/bin/python) and the default model (prepared on first use from the weight packages, see
# `make prepare`). Without a CUDA device it prints "no CUDA device" and exits 0.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export MMEMBED_DATA="${MMEMBED_DATA:-$REPO/../shared/data}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
# A hard stop under 8 minutes, whatever a check does.
exec timeout --kill-after=10 470 "$PY" "$REPO/perf/gpu_check.py" "${1:-gpu_check.json}"
