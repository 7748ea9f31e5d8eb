#!/usr/bin/env bash
# NVDEC against software decoding, and the stack's streams per GPU; writes one JSON file.
#   tools/gpu_check.sh [--quick] [--out FILE] [--clip CLIP] [--no-stack]
# What it measures and the JSON it writes: tools/gpu_check.py and benchmarks/README.md (GPU check).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${GPU_CHECK_PYTHON:-$REPO/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "gpu_check: no Python at $PY (run make venv, or set GPU_CHECK_PYTHON)" >&2
  exit 2
fi
# The repository root on the path (tools/ and benchmarks/ are not installed), paths given on
# the command line still relative to the caller's folder.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tools.gpu_check "$@"
