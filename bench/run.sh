#!/usr/bin/env bash
# Run every benchmark and record the results in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" bench/whoami.py --write
"$PY" bench/bank.py --write
"$PY" bench/audit.py --write
