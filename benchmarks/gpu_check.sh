#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it checks), its table kept in
# benchmarks/results/gpu-check/. Run from the repository root on a machine with CUDA.
set -euo pipefail
pip install -q -e . >/dev/null
python benchmarks/gpu_check.py --out benchmarks/results/gpu-check "$@"
